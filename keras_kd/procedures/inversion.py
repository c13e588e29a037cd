"""Teacher inversion (DeepInversion): images synthesised from a teacher.

`TeacherInversion` optimises a batch of images, its only trainable
variable, so that the frozen teacher classifies them as sampled target
classes while the statistics of every BatchNormalization layer's input match
the moving mean and variance the layer stored in training, under total
variation and L2 priors, with random jitter and flips (Yin et al., "Dreaming
to Distill: Data-free Knowledge Transfer via DeepInversion", CVPR 2020;
official code: github.com/NVlabs/DeepInversion). Given a student, the
adaptive term of Adaptive DeepInversion seeks images on which the two
disagree. It is a `keras.Model` trained by `fit`, so the same code runs on
TensorFlow, JAX and PyTorch with Keras's progress bar; `synthesize` runs it
batch after batch and returns a `SynthesizedImages` pool (an archive, a
`tf.data` pipeline and an image grid).

Units: keras_kd's models take raw pixels and normalise inside (a leading
`Rescaling` / `Normalization`). The images are optimised in the units the
teacher normalises to, where the official learning rates and weights hold,
and projected onto the raw `pixel_range` after every step (the official
ImageNet code's clamp).
"""

import keras
import numpy as np
from keras import ops

from keras_kd import taps as taps_lib
from keras_kd.procedures import inversion_terms as terms_lib
from keras_kd.procedures.base import check_int

# The official CIFAR-10 settings (cifar10/README.md, "paper parameters"):
# Adam 0.05, 2,000 iterations of 256 images, r_feature 10, TV 2.5e-5, no L2,
# jitter 2, no flips (the ImageNet script flips). keras_kd's defaults are the
# same weights with CPU-sized batches and iterations and flips (see
# `synthesize`).
OFFICIAL_CIFAR10 = {
    "batch_size": 256,
    "iterations": 2000,
    "learning_rate": 0.05,
    "feature_weight": 10.0,
    "tv_weight": 2.5e-5,
    "l2_weight": 0.0,
    "jitter": 2,
    "flip": False,
}


def input_affine_of(model):
    """`(a, b)`: the model maps raw inputs `x` to `a * x + b` before its
    first other layer.

    Reads the layers right after the input (a leading nested model opened
    in place, random augmentation layers skipped as the identity at
    inference): `Rescaling(scale, offset)` and `Normalization(mean,
    variance)`. `(1, 0)` when the model starts with neither. Each of `a`,
    `b` is a float64 array over channels (or of size 1).
    """
    from keras_kd.procedures.boundary import _leading_layers

    a = np.ones(1)
    b = np.zeros(1)
    for layer in _leading_layers(model):
        if type(layer).__name__.startswith("Random"):
            continue
        if isinstance(layer, keras.layers.Rescaling):
            scale = np.asarray(ops.convert_to_numpy(layer.scale), "float64")
            offset = np.asarray(ops.convert_to_numpy(layer.offset), "float64")
            a, b = (
                a * scale.reshape(-1),
                b * scale.reshape(-1) + offset.reshape(-1),
            )
        elif isinstance(layer, keras.layers.Normalization):
            if layer.invert or layer.mean is None:
                break
            mean = np.asarray(ops.convert_to_numpy(layer.mean), "float64")
            std = np.sqrt(
                np.maximum(
                    np.asarray(ops.convert_to_numpy(layer.variance), "float64"),
                    1e-7,
                )
            )
            a, b = a / std.reshape(-1), (b - mean.reshape(-1)) / std.reshape(-1)
        else:
            break
    return a, b


def batch_norm_layers(model):
    """`[(path, layer)]` of every BatchNormalization layer of `model`
    (nested functional models included), in graph order."""
    found = []
    for path in taps_lib.layer_paths(model):
        layer = taps_lib.resolve_layer(model, path)
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append((path, layer))
    return found


class _ClipTo(keras.constraints.Constraint):
    """Projects the images onto the raw pixel range, per channel."""

    def __init__(self, low, high):
        self.low = np.asarray(low, "float32")
        self.high = np.asarray(high, "float32")

    def __call__(self, w):
        return ops.clip(w, self.low, self.high)


def _image_shape(teacher):
    if not taps_lib.has_graph(teacher) or len(teacher.inputs) != 1:
        raise ValueError(
            f"TeacherInversion needs a functional or Sequential teacher with "
            f"one image input; received '{getattr(teacher, 'name', teacher)}'"
            f" of type {type(teacher).__name__}. Build the teacher with "
            "keras.Input(...) (or give a Sequential model an Input layer)."
        )
    shape = tuple(teacher.inputs[0].shape[1:])
    if len(shape) != 3 or any(d is None for d in shape):
        raise ValueError(
            f"TeacherInversion synthesises images (H, W, C) of a fixed size; "
            f"the teacher '{teacher.name}' takes inputs of shape "
            f"{(None,) + shape}. Give it an input of static shape, e.g. "
            "keras.Input((32, 32, 3))."
        )
    return shape


def _logits_of(model, role):
    tap = taps_lib.logits_tap(model)
    if tap is None:
        return model, False
    return taps_lib.build_extractor(model, [tap], role=role), True


class TeacherInversion(keras.Model):
    """One batch of images optimised against a frozen teacher.

    The objective, for sampled target classes `y` and the images `x'` after
    a random jitter (a circular shift by up to `jitter` pixels) and flip:

        CE(f_T(x'), y)
        + feature_weight * sum_l w_l (||mu_l - mu_l^BN|| + ||var_l - var_l^BN||)
        + tv_weight * TV(x') + l2_weight * ||x'||
        + adaptive_weight * (1 - JS(p_T(x'), p_S(x')))

    `w_1 = first_feature_multiplier`, the others 1; the statistics are those
    of each BatchNormalization layer's input batch (`inversion_terms`).
    Teacher and student run in inference mode and are never changed; the
    images, in the teacher's normalised units, are the model's only
    trainable variable. Train it with `fit` on any data of `iterations`
    steps (the inputs are ignored), e.g. `fit(np.zeros(iterations),
    batch_size=1)`; `synthesize` does this batch after batch.

    Args:
        teacher: a trained functional or Sequential model with
            BatchNormalization layers and one image input of static shape.
        batch_size: images optimised together. Defaults to `64`.
        student: the student, for the adaptive term. Defaults to `None`.
        pixel_range: `(low, high)` of the raw inputs the teacher takes.
            Defaults to `(0.0, 255.0)` (keras_kd's models).
        feature_weight: weight of the BatchNormalization statistics term.
            Defaults to `10.0` (the official CIFAR-10 value).
        first_feature_multiplier: extra weight of the first
            BatchNormalization layer's term. Defaults to `1.0` (the
            official ImageNet script uses 10).
        tv_weight: weight of total variation. Defaults to `2.5e-5`
            (official CIFAR-10).
        tv_mode: `"official"` (four directions) or `"paper"` (two).
            Defaults to `"official"`.
        l2_weight: weight of the L2 prior. Defaults to `0.0` (official
            CIFAR-10).
        adaptive_weight: weight of Adaptive DeepInversion's term (needs a
            `student`). Defaults to `0.0`, or `1.0` when a student is given.
        temperature: softmax temperature of the adaptive term. Defaults to
            `3.0` (official).
        jitter: largest shift in pixels. Defaults to `2` (official
            CIFAR-10).
        flip: random horizontal flips (the paper; not the official CIFAR-10
            script). Defaults to `True`.
        seed: seed of the jitter, the flips and the initial images.
            Defaults to `None`.
    """

    def __init__(
        self,
        teacher,
        *,
        batch_size=64,
        student=None,
        pixel_range=(0.0, 255.0),
        feature_weight=10.0,
        first_feature_multiplier=1.0,
        tv_weight=2.5e-5,
        tv_mode="official",
        l2_weight=0.0,
        adaptive_weight=None,
        temperature=3.0,
        jitter=2,
        flip=True,
        seed=None,
        name="teacher_inversion",
    ):
        super().__init__(name=name)
        shape = _image_shape(teacher)
        batch_size = check_int("TeacherInversion", "batch_size", batch_size)
        jitter = check_int("TeacherInversion", "jitter", jitter, minimum=0)
        if jitter >= min(shape[0], shape[1]):
            raise ValueError(
                f"TeacherInversion: `jitter` ({jitter}) must be smaller than "
                f"the image size {shape[:2]}."
            )
        if tv_mode not in terms_lib.TV_MODES:
            raise ValueError(
                f"TeacherInversion: unknown tv_mode={tv_mode!r}; expected one "
                f"of {terms_lib.TV_MODES}."
            )
        low, high = (float(v) for v in pixel_range)
        if not low < high:
            raise ValueError(
                "TeacherInversion: `pixel_range` must be (low, high) with "
                f"low < high; received {tuple(pixel_range)}."
            )
        if adaptive_weight is None:
            adaptive_weight = 0.0 if student is None else 1.0
        if adaptive_weight and student is None:
            raise ValueError(
                "TeacherInversion: adaptive_weight="
                f"{adaptive_weight} needs the student (Adaptive "
                "DeepInversion compares teacher and student); pass "
                "student=..., or adaptive_weight=0."
            )
        found = batch_norm_layers(teacher)
        if not found:
            raise ValueError(
                f"TeacherInversion needs the teacher's BatchNormalization "
                f"layers (their moving mean and variance are what the images "
                f"must match), and the teacher '{teacher.name}' has none. "
                "Invert a teacher trained with BatchNormalization, or "
                "distil from data."
            )
        logits_tap = taps_lib.logits_tap(teacher)
        self._taps = ([logits_tap] if logits_tap else []) + [
            taps_lib.Tap(path, "input") for path, _ in found
        ]
        self._extractor = taps_lib.build_extractor(
            teacher, self._taps, role="teacher"
        )
        self._logits_index = 1 if logits_tap else 0
        self._bn = [layer for _, layer in found]
        self._student, self._student_multi = (
            _logits_of(student, "student")
            if student is not None
            else (None, False)
        )
        self.teacher = teacher
        self.student = student
        self.image_shape = shape
        self.batch_size = batch_size
        self.num_classes = int(teacher.outputs[0].shape[-1])
        a, b = input_affine_of(teacher)
        channels = shape[-1]
        self.scale = np.broadcast_to(1.0 / a, (channels,)).astype("float32")
        self.shift = np.broadcast_to(-b / a, (channels,)).astype("float32")
        self.pixel_range = (low, high)
        self.feature_weight = float(feature_weight)
        self.first_feature_multiplier = float(first_feature_multiplier)
        self.tv_weight = float(tv_weight)
        self.tv_mode = tv_mode
        self.l2_weight = float(l2_weight)
        self.adaptive_weight = float(adaptive_weight)
        self.temperature = float(temperature)
        self.jitter = jitter
        self.flip = bool(flip)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self._numpy_rng = np.random.default_rng(seed)
        # Images in normalised units: raw = shift + scale * images.
        self.images = self.add_weight(
            shape=(batch_size,) + shape,
            initializer="zeros",
            trainable=True,
            constraint=_ClipTo(
                (low - self.shift) / self.scale,
                (high - self.shift) / self.scale,
            ),
            name="images",
        )
        self.targets = self.add_weight(
            shape=(batch_size,),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="targets",
        )
        names = ["target", "features", "tv", "l2"]
        if self.adaptive_weight:
            names.append("adaptive")
        self.term_trackers = {
            n: keras.metrics.Mean(name=f"{n}_loss") for n in names
        }
        self.built = True

    # --- the frozen networks: not trained, not in the optimizer's state -----

    @property
    def trainable_variables(self):
        return [self.images]

    @property
    def trainable_weights(self):
        return [self.images]

    @property
    def non_trainable_variables(self):
        networks = [self.teacher] + ([self.student] if self.student else [])
        frozen = [v for n in networks for v in n.variables]
        seen = {id(self.images)}
        out = []
        for v in [self.targets, self.seed_generator.state] + frozen:
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        return out

    @property
    def non_trainable_weights(self):
        return self.non_trainable_variables

    # --- one step ----------------------------------------------------------

    def raw_images(self, images=None):
        """The images in the teacher's raw input units."""
        images = self.images if images is None else images
        return ops.convert_to_tensor(self.shift) + ops.convert_to_tensor(
            self.scale
        ) * ops.cast(images, "float32")

    def _jittered(self):
        x = ops.cast(self.images, "float32")
        height, width = self.image_shape[0], self.image_shape[1]
        if self.jitter:
            offsets = keras.random.randint(
                (2,),
                -self.jitter,
                self.jitter + 1,
                seed=self.seed_generator,
                dtype="int32",
            )
            x = _roll(x, offsets[0], 1, height)
            x = _roll(x, offsets[1], 2, width)
        if self.flip:
            coin = keras.random.uniform((), seed=self.seed_generator)
            x = ops.where(coin < 0.5, ops.flip(x, axis=2), x)
        return x

    def call(self, inputs=None, training=False):
        """`{"images", "logits", "features", ["student_logits"]}` for one
        jittered batch (`inputs` are ignored)."""
        images = self._jittered()
        raw = self.raw_images(images)
        outputs = self._extractor(raw, training=False)
        if not isinstance(outputs, (list, tuple)):
            outputs = [outputs]
        result = {
            "images": images,
            "logits": outputs[self._logits_index],
            "features": list(outputs[self._logits_index + 1 :])
            if self._logits_index
            else list(outputs[1:]),
        }
        if self._student is not None:
            student = self._student(raw, training=False)
            result["student_logits"] = (
                student[1] if self._student_multi else student
            )
        return result

    def objective_terms(self, outputs):
        """`{term: value}` (unweighted) of one `call`'s outputs."""
        logits = ops.cast(outputs["logits"], "float32")
        target = ops.mean(
            keras.losses.sparse_categorical_crossentropy(
                self.targets, logits, from_logits=True
            )
        )
        features = ops.zeros((), "float32")
        for i, (layer, x) in enumerate(zip(self._bn, outputs["features"])):
            weight = self.first_feature_multiplier if i == 0 else 1.0
            features = features + weight * terms_lib.batch_norm_statistics_loss(
                x, layer.moving_mean, layer.moving_variance, axis=layer.axis
            )
        terms = {
            "target": target,
            "features": features,
            "tv": terms_lib.total_variation(
                outputs["images"], mode=self.tv_mode
            ),
            "l2": terms_lib.image_l2(outputs["images"]),
        }
        if self.adaptive_weight:
            terms["adaptive"] = terms_lib.adaptive_competition_loss(
                logits,
                outputs["student_logits"],
                temperature=self.temperature,
            )
        return terms

    def weights_of_terms(self):
        weights = {
            "target": 1.0,
            "features": self.feature_weight,
            "tv": self.tv_weight,
            "l2": self.l2_weight,
        }
        if self.adaptive_weight:
            weights["adaptive"] = self.adaptive_weight
        return weights

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        outputs = self(x) if y_pred is None else y_pred
        terms = self.objective_terms(outputs)
        total = ops.zeros((), "float32")
        for name, weight in self.weights_of_terms().items():
            total = total + weight * terms[name]
            self.term_trackers[name].update_state(terms[name])
        return total

    # --- batches -----------------------------------------------------------

    def reset(self, targets):
        """Fresh images (standard normal in normalised units, as the
        official code starts), the given target classes, and the
        optimizer's state as it was when built."""
        targets = np.asarray(targets, "int32").reshape(-1)
        if targets.shape != (self.batch_size,):
            raise ValueError(
                f"TeacherInversion.reset: expected {self.batch_size} target "
                f"classes; received {targets.shape[0]}."
            )
        if targets.min() < 0 or targets.max() >= self.num_classes:
            raise ValueError(
                f"TeacherInversion.reset: target classes must lie in "
                f"[0, {self.num_classes}); received {targets.min()} .. "
                f"{targets.max()}."
            )
        noise = self._numpy_rng.standard_normal(
            (self.batch_size,) + self.image_shape
        ).astype("float32")
        self.images.assign(self.images.constraint(noise))
        self.targets.assign(targets)
        if getattr(self, "optimizer", None) is not None:
            if not self.optimizer.built:
                self.optimizer.build(self.trainable_variables)
                self._initial_optimizer = [
                    ops.convert_to_numpy(v) for v in self.optimizer.variables
                ]
            for v, value in zip(
                self.optimizer.variables, self._initial_optimizer
            ):
                v.assign(value)
        for tracker in self.term_trackers.values():
            tracker.reset_state()

    def current_images(self):
        """The batch in raw pixels, `(B, H, W, C)` float32 NumPy."""
        return np.clip(
            ops.convert_to_numpy(self.raw_images()), *self.pixel_range
        ).astype("float32")


def _roll(x, shift, axis, size):
    """A circular shift by a (traced) integer along a static-size axis."""
    doubled = ops.concatenate([x, x], axis=axis)
    start = [0] * len(x.shape)
    start[axis] = ops.mod(size - shift, size)
    return ops.slice(doubled, start, ops.shape(x))
