"""Boundary-supporting samples (BSS): distil near the teacher's boundary.

Each training step moves a few training examples towards the teacher's
decision boundary with a targeted gradient attack on the teacher, and the
student learns the teacher's outputs on those samples too (Heo et al.,
"Knowledge Distillation with Adversarial Samples Supporting Decision
Boundary", AAAI 2019; official code: github.com/bhheo/BSS_distillation,
`attacks/attack_BSS.py` and `train_BSS_distillation.py`).

The three pure functions are the official algorithm, written with static
shapes (a fixed number of base samples and masks instead of index lists) so
that the attack runs inside the compiled step on TensorFlow and JAX (XLA
included) and in PyTorch's eager step:

- `select_base_samples`: the examples both networks classify correctly; of
  more than `max_samples`, those with the largest
  `sum_{c != y} (p_T,c - p_S,c)^2`.
- `sample_target_classes`: a class drawn from the teacher's softmax over
  every class but its top one.
- `boundary_attack`: ten steps of
  `x <- x + eta (f_y - f_k + 1e-4) g / ||g||`, `g = grad_x (f_k - f_y)` on
  the teacher's logits, where a sample moves only while the teacher still
  predicts its base class `y`.
"""

import keras
import numpy as np

from keras_kd import backend as backend_lib
from keras_kd import taps as taps_lib
from keras_kd.losses.logits import logits_distillation_loss
from keras_kd.procedures.base import Procedure

_EPS = 1e-4  # the official attack's offset of the logit gap


def select_base_samples(teacher_logits, student_logits, labels, max_samples):
    """The base samples of one step: `(indices, mask)`, static shapes.

    An example qualifies when the teacher's and the student's top class
    both equal its label. Of the qualifying examples, at most `max_samples`
    are kept: those where the networks' probabilities differ most on the
    other classes, `score = sum_{c != y} (softmax(t)_c - softmax(s)_c)^2`
    (the official code sorts by this only when more than `max_samples`
    qualify, keeping all of them otherwise; the kept set is the same).

    Args:
        teacher_logits: `(B, K)`.
        student_logits: `(B, K)`.
        labels: `(B,)` integer class ids.
        max_samples: the most base samples, an int >= 1.

    Returns:
        `indices`, `(k,)` int32 with `k = min(max_samples, B)` (`k =
        max_samples` when the batch size is not static), and `mask`, `(k,)`
        float32, 1 where `indices[i]` is a base sample. With fewer than `k`
        qualifying examples the rest of `indices` point at other examples,
        masked out (zero or one qualifying example work).
    """
    ops = keras.ops
    teacher_logits = ops.cast(teacher_logits, "float32")
    student_logits = ops.cast(student_logits, "float32")
    labels = ops.cast(labels, "int32")
    classes = ops.shape(teacher_logits)[-1]
    batch = teacher_logits.shape[0]
    # Static when the batch size is (k = min(max_samples, B)); otherwise
    # (TensorFlow traces a possibly short last batch as None) k is
    # `max_samples` and the ranking is padded with non-qualifying entries.
    k = int(max_samples) if batch is None else min(int(max_samples), batch)
    qualifies = ops.logical_and(
        ops.equal(
            ops.cast(ops.argmax(teacher_logits, axis=-1), "int32"), labels
        ),
        ops.equal(
            ops.cast(ops.argmax(student_logits, axis=-1), "int32"), labels
        ),
    )
    diff = ops.square(
        ops.softmax(teacher_logits, axis=-1)
        - ops.softmax(student_logits, axis=-1)
    )
    others = 1.0 - ops.one_hot(labels, classes, dtype="float32")
    score = ops.sum(diff * others, axis=-1)
    # Qualifying examples first (score in [0, 2]), then the rest.
    ranked = ops.where(qualifies, score, score - 4.0)
    if batch is None:
        ranked = ops.concatenate([ranked, ops.full((k,), -8.0)], axis=0)
        qualifies = ops.concatenate(
            [qualifies, ops.zeros((k,), dtype="bool")], axis=0
        )
    _, indices = ops.top_k(ranked, k=k)
    indices = ops.cast(indices, "int32")
    mask = ops.cast(ops.take(qualifies, indices, axis=0), "float32")
    if batch is None:  # padding points at the last example, masked
        last = ops.cast(ops.shape(teacher_logits)[0], "int32") - 1
        indices = ops.minimum(indices, last)
    return indices, mask


def sample_target_classes(teacher_logits, uniform):
    """The class each adversarial sample is pushed towards.

    Drawn from the teacher's softmax (T = 1) over every class but its top
    one: with the other classes sorted by probability, the first whose
    cumulative probability reaches `uniform * sum(their probabilities)`
    (the official code's draw; its default, the second class, is kept for
    a draw that rounding leaves unmatched).

    Args:
        teacher_logits: `(B, K)`.
        uniform: `(B,)` numbers in `[0, 1)`.

    Returns:
        `(B,)` int32 class ids, never the teacher's top class.
    """
    ops = keras.ops
    probabilities = ops.softmax(ops.cast(teacher_logits, "float32"), axis=-1)
    classes = probabilities.shape[-1]
    sorted_p, order = ops.top_k(probabilities, k=classes)
    rest_p, rest_order = sorted_p[:, 1:], order[:, 1:]
    threshold = ops.cast(uniform, "float32") * ops.sum(rest_p, axis=-1)
    reached = ops.greater_equal(
        ops.cumsum(rest_p, axis=-1), ops.expand_dims(threshold, -1)
    )
    position = ops.argmax(ops.cast(reached, "int32"), axis=-1)
    found = ops.any(reached, axis=-1)
    position = ops.where(found, position, ops.zeros_like(position))
    chosen = ops.take_along_axis(
        rest_order, ops.expand_dims(ops.cast(position, "int32"), -1), axis=-1
    )
    return ops.cast(ops.squeeze(chosen, -1), "int32")


def boundary_attack(
    teacher,
    x,
    target_classes,
    *,
    steps=10,
    step_size=0.3,
    input_scale=1.0,
    clip=None,
    active=None,
):
    """Moves `x` towards the teacher's boundary with `target_classes`.

    The official attack (`attacks/attack_BSS.py`, `AttackBSS.run`): the base
    class `y` of each sample is the teacher's top class on `x`; then, for
    `steps` steps, with `f` the teacher's logits on the current samples and
    `g = grad_x (f_k - f_y)` (`k` the target class),

    `x <- clip(x + step_size * (f_y - f_k + 1e-4) * g / ||g||_2)`,

    where only the samples the teacher still classifies as `y` move (the
    official mask is taken anew at every step). The step is taken in the
    units the teacher normalises its inputs to: for a model that computes
    `(x - mean) / input_scale` first, as keras_kd's models do, the step in
    those units is the official one and the raw step is `input_scale` times
    it (the official `0.3` and clamp `+-2.5` are in normalised units, where
    a raw-pixel step would be about 60 times too small).

    Guard (not in the official code): a sample whose gradient is zero or not
    finite does not move; the official division by `||g|| = 0` gives NaN
    inputs, and then a NaN loss.

    Args:
        teacher: a `keras.Model` (or callable) returning logits.
        x: `(B, ...)` float inputs in the teacher's raw units.
        target_classes: `(B,)` int class ids.
        steps: attack steps. Defaults to `10` (official).
        step_size: `eta`, in normalised units. Defaults to `0.3` (official).
        input_scale: the teacher's input normalisation scale (a number, or
            one per channel of the last axis). Defaults to `1.0`.
        clip: `(low, high)` raw input range; `None` for no clipping.
        active: optional `(B,)` float mask; samples with 0 never move.

    Returns:
        The adversarial samples, like `x` (no gradient flows through them).
    """
    ops = keras.ops
    backend = backend_lib.get()
    x = ops.stop_gradient(ops.cast(ops.convert_to_tensor(x), "float32"))
    target_classes = ops.convert_to_tensor(target_classes)
    scale = ops.cast(ops.convert_to_tensor(input_scale), "float32")
    target = None
    base = None
    reduce_axes = tuple(range(1, len(x.shape)))

    def objective(v, base_onehot):
        logits = ops.cast(teacher(v, training=False), "float32")
        if base_onehot is None:
            base_onehot = ops.one_hot(
                ops.argmax(ops.stop_gradient(logits), axis=-1),
                logits.shape[-1],
                dtype="float32",
            )
        difference = ops.sum(logits * (target - base_onehot), axis=-1)
        return ops.sum(difference), (logits, base_onehot)

    x_adv = x
    for _ in range(int(steps)):
        if target is None:
            classes = teacher(x[:1], training=False).shape[-1]
            target = ops.one_hot(target_classes, classes, dtype="float32")
        gradient, (logits, base_onehot) = backend.input_gradient(
            lambda v, b=base: objective(v, b), x_adv
        )
        base = ops.stop_gradient(base_onehot)
        logits = ops.stop_gradient(logits)
        gradient = ops.stop_gradient(gradient)
        still_base = ops.cast(
            ops.equal(ops.argmax(logits, axis=-1), ops.argmax(base, axis=-1)),
            "float32",
        )
        moving = still_base if active is None else still_base * active
        gap = ops.sum(logits * (base - target), axis=-1)  # f_y - f_k
        # The gradient in normalised units, and its norm there.
        g = gradient * scale
        norm = ops.sqrt(ops.sum(ops.square(g), axis=reduce_axes))
        usable = ops.logical_and(ops.greater(norm, 0.0), ops.isfinite(norm))
        factor = ops.where(
            usable, step_size * (gap + _EPS) / ops.where(usable, norm, 1.0), 0.0
        )
        factor = factor * moving
        shape = (-1,) + (1,) * len(reduce_axes)
        delta = (
            ops.reshape(factor, shape)
            * ops.where(ops.isfinite(g), g, 0.0)
            * scale
        )
        x_adv = x_adv + delta
        if clip is not None:
            x_adv = ops.clip(x_adv, clip[0], clip[1])
    return ops.stop_gradient(x_adv)


def input_scale_of(model):
    """The scale of the normalisation a model applies to its raw inputs.

    Reads the layers right after the input (inside a leading nested model
    too, past random augmentation layers, which are the identity at
    inference): a `Rescaling(scale)` divides the scale by `scale`, a
    `Normalization` multiplies it by its standard deviation. `1.0` when the
    model starts with neither (its inputs are already normalised; pass
    `input_scale=` otherwise). Returns a float or a NumPy array over
    channels.
    """
    scale = 1.0
    for layer in _leading_layers(model):
        if type(layer).__name__.startswith("Random"):
            continue  # augmentation: the identity at inference
        if isinstance(layer, keras.layers.Rescaling):
            scale = scale / np.asarray(
                keras.ops.convert_to_numpy(layer.scale), "float64"
            )
        elif isinstance(layer, keras.layers.Normalization):
            if layer.invert:
                break
            variance = keras.ops.convert_to_numpy(layer.variance)
            scale = scale * np.sqrt(
                np.maximum(np.asarray(variance, "float64"), 1e-7)
            ).reshape(-1)
        else:
            break
    scale = np.asarray(scale, "float32")
    return float(scale) if scale.size == 1 else scale


def _leading_layers(model):
    """The layers of `model` in order, nested models opened in place."""
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            yield from _leading_layers(layer)
        else:
            yield layer


class _Untracked:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@keras.saving.register_keras_serializable(package="keras_kd")
class BoundarySupportingSamples(Procedure):
    """Distil on adversarial samples near the teacher's decision boundary.

    In every training step (after each network ran once on the batch):
    choose base samples (`select_base_samples`), draw target classes
    (`sample_target_classes`), attack the teacher (`boundary_attack`), and
    add the term `bss` = mean over the adversarial samples of
    `KL(softmax(t / T) || softmax(s / T))`, with `t`, `s` the teacher's and
    the student's logits on them (no `T^2`). The official code writes its
    two distillation terms as soft cross-entropy without `T^2`: the same
    gradient as this KL, which is 0 when the networks agree. Evaluation
    steps add 0 (no attack).

    Pair it with `LogitsDistillation(temperature=3)` and the task loss, as
    the paper does; with `epochs` given (or read from `fit`),
    `callbacks()` brings `BoundarySupportingSchedule`, the official weight
    schedules (KD `4 -> 1`, BSS `2 -> 0` by 75 % of training) converted to
    keras_kd's KD, which carries `T^2` (see the schedule).

    What this relaxes of the Distiller's invariants: the teacher runs
    `steps + 1` more times per step (the attack, then its outputs on the
    adversarial samples) and the student once more, in training mode on the
    adversarial batch (as the official code does; BatchNormalization
    statistics see that batch too, and, since the batch has a fixed size,
    the masked-out examples that pad it when fewer than `max_samples`
    qualify: the official code passes only the qualifying ones); the
    teacher stays frozen (the attack differentiates with respect to the
    inputs only). While the schedule weighs the term 0 (from 75 % of
    training on), the step is rebuilt without the attack and the extra
    passes, as the official code skips them. Under `tf.distribute`
    each replica chooses its base samples among its own examples,
    `ceil(max_samples / replicas)` of them, so N replicas differ from one
    device by that choice; the term is each replica's mean over its
    adversarial samples, averaged over replicas.

    Guards against the failure a reimplementation reports ("may
    occasionally destroy the training"), tested in tests/test_boundary.py:
    a sample with a zero or non-finite input gradient does not move (the
    official code divides by its norm and feeds NaN inputs to both
    networks); adversarial samples are clipped to
    the raw input range; base samples are only examples both networks get
    right; and the official schedule switches the term off at 75 % of
    training.

    Args:
        max_samples: the most base samples per step. Defaults to `64`
            (official, with batches of 256).
        steps: attack steps. Defaults to `10`.
        step_size: the attack's step in normalised units. Defaults to `0.3`.
        temperature: the KD temperature on adversarial samples. Defaults to
            `3.0`.
        input_scale: the teacher's normalisation scale (number or per
            channel). Defaults to `None`: read from the teacher's leading
            `Normalization`/`Rescaling` layers (`input_scale_of`).
        input_range: `(low, high)` raw range the samples are clipped to.
            Defaults to `None`: the smallest and largest value of the step's
            clean batch.
        epochs: for the official schedule; `None` reads `fit`'s epochs.
        schedule: `"official"` (the schedule callback) or `None` (constant
            weights, set with `set_loss_weights`). Defaults to
            `"official"`.
        kd_loss: the name of the Distiller's KD loss the schedule weighs.
            Defaults to `"logits_distillation"`.
        seed: seed of the target-class draws. Defaults to `None`.
        name: defaults to `"boundary_supporting_samples"`.

    Example:

    ```python
    import keras, numpy as np
    import keras_kd

    def cnn(width, name):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(width, 3, padding="same")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(4)(x), name=name)

    distiller = keras_kd.Distiller(
        cnn(16, "teacher"), cnn(4, "student"),
        keras_kd.losses.LogitsDistillation(temperature=3.0),
        procedures=keras_kd.procedures.BoundarySupportingSamples(
            max_samples=8, seed=0),
    )
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x = np.random.rand(16, 8, 8, 3).astype("float32")
    y = np.random.randint(0, 4, size=(16,))
    distiller.fit(x, y, epochs=2, verbose=0,
                  callbacks=keras_kd.callbacks.for_distiller(distiller))
    ```
    """

    term_names = ("bss",)
    requires = ("labels",)
    needs_logits = True

    def __init__(
        self,
        max_samples=64,
        *,
        steps=10,
        step_size=0.3,
        temperature=3.0,
        input_scale=None,
        input_range=None,
        epochs=None,
        schedule="official",
        kd_loss="logits_distillation",
        seed=None,
        name="boundary_supporting_samples",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.max_samples = _positive_int(max_samples, "max_samples")
        self.steps = _positive_int(steps, "steps", minimum=0)
        self.step_size = _positive_float(step_size, "step_size")
        self.temperature = _positive_float(temperature, "temperature")
        if input_scale is not None:
            scale = np.asarray(input_scale, "float64")
            if (
                scale.ndim > 1
                or not np.all(np.isfinite(scale))
                or np.any(scale <= 0)
            ):
                raise ValueError(
                    "BoundarySupportingSamples: `input_scale` must be a "
                    "number > 0 or one per input channel; received "
                    f"{input_scale!r}. It is the scale the teacher divides "
                    "its raw inputs by (e.g. 255 for `Rescaling(1 / 255)`)."
                )
        if input_range is not None:
            input_range = tuple(float(v) for v in input_range)
            if len(input_range) != 2 or input_range[0] >= input_range[1]:
                raise ValueError(
                    "BoundarySupportingSamples: `input_range` must be "
                    f"(low, high) with low < high; received {input_range}."
                )
        self.input_range = input_range
        self.input_scale = input_scale
        if epochs is not None:
            epochs = _positive_int(epochs, "epochs")
        self.epochs = epochs
        if schedule not in ("official", None):
            raise ValueError(
                "BoundarySupportingSamples: `schedule` must be 'official' or "
                f"None; received {schedule!r}."
            )
        self.schedule = schedule
        self.kd_loss = kd_loss
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # False while the schedule weighs the term 0: the step then runs no
        # attack (the schedule rebuilds the compiled step when it flips).
        self.attacking = True
        self._models = _Untracked(teacher=None, student=None, scale=None)

    def configure(self, distiller):
        def logits_model(model):
            tap = taps_lib.logits_tap(model)
            if tap is None:
                return model
            extractor = taps_lib.build_extractor(model, [tap], role="logits")

            def logits(inputs, training=False):
                return extractor(inputs, training=training)[1]

            return logits

        self._models.teacher = logits_model(distiller.teacher)
        self._models.student = logits_model(distiller.student)
        scale = self.input_scale
        if scale is None:
            scale = input_scale_of(distiller.teacher)
        self._models.scale = scale
        self._models.replicas = backend_lib.get().replicas_in_sync()
        if self.schedule == "official":
            names = [loss.name for loss in distiller.distillation_losses]
            if self.kd_loss is not None and self.kd_loss not in names:
                raise ValueError(
                    "BoundarySupportingSamples's official schedule weighs "
                    f"the KD loss '{self.kd_loss}', but the Distiller's "
                    f"losses are {names}. Add "
                    "`keras_kd.losses.LogitsDistillation(temperature=3.0)`, "
                    "pass its name as `kd_loss=`, or `kd_loss=None` to "
                    "schedule the BSS term alone."
                )
        self._models.distiller_losses = distiller.distillation_losses
        self._models.distiller = distiller

    def terms(self, context):
        ops = keras.ops
        if not context.training or self.steps == 0 or not self.attacking:
            return {"bss": ops.zeros((), "float32")}
        teacher_logits = ops.stop_gradient(
            ops.cast(context.teacher_logits, "float32")
        )
        student_logits = ops.stop_gradient(
            ops.cast(context.student_logits, "float32")
        )
        labels = context.labels
        classes = teacher_logits.shape[-1]
        if (
            len(labels.shape) == len(teacher_logits.shape)
            and classes is not None
            and classes > 1
            and labels.shape[-1] == classes
        ):
            labels = ops.argmax(labels, axis=-1)  # one-hot labels
        labels = ops.reshape(labels, (-1,))  # (B,) or (B, 1) class ids
        x = context.inputs
        if isinstance(x, (dict, list, tuple)):
            raise ValueError(
                "BoundarySupportingSamples attacks a single input tensor; "
                "the networks here take several inputs. Use a model with "
                "one input."
            )
        replicas = self._models.replicas
        limit = -(-self.max_samples // replicas)
        indices, mask = select_base_samples(
            teacher_logits, student_logits, labels, limit
        )
        base_x = ops.take(x, indices, axis=0)
        uniform = keras.random.uniform(
            (indices.shape[0],), seed=self.seed_generator
        )
        targets = sample_target_classes(
            ops.take(teacher_logits, indices, axis=0), uniform
        )
        x_float = ops.cast(x, "float32")
        clip = self.input_range or (ops.min(x_float), ops.max(x_float))
        adversarial = boundary_attack(
            self._models.teacher,
            base_x,
            targets,
            steps=self.steps,
            step_size=self.step_size,
            input_scale=self._models.scale,
            clip=clip,
            active=mask,
        )
        if keras.backend.is_float_dtype(
            keras.backend.standardize_dtype(x.dtype)
        ):
            adversarial = ops.cast(adversarial, x.dtype)
        t_adv = ops.stop_gradient(
            self._models.teacher(adversarial, training=False)
        )
        s_adv = self._models.student(adversarial, training=True)
        t_squared = self.temperature**2
        kl = (
            logits_distillation_loss(
                ops.cast(t_adv, "float32"),
                ops.cast(s_adv, "float32"),
                temperature=self.temperature,
                reduction="none",
            )
            / t_squared
        )
        count = ops.sum(mask)
        value = ops.sum(kl * mask) / ops.maximum(count, 1.0)
        return {"bss": value / replicas}

    def callbacks(self):
        if self.schedule != "official":
            return []
        return [
            BoundarySupportingSchedule(
                self._models.distiller,
                epochs=self.epochs,
                kd_loss=self.kd_loss,
                term=self.term_names[0],
            )
        ]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_samples": self.max_samples,
                "steps": self.steps,
                "step_size": self.step_size,
                "temperature": self.temperature,
                "input_scale": (
                    None
                    if self.input_scale is None
                    else _to_list(self.input_scale)
                ),
                "input_range": self.input_range,
                "epochs": self.epochs,
                "schedule": self.schedule,
                "kd_loss": self.kd_loss,
                "seed": self.seed,
            }
        )
        return config


class BoundarySupportingSchedule(keras.callbacks.Callback):
    """The official weights of BSS distillation, set at each epoch.

    With `e` the epoch counted from 1 and `E` the epochs of `fit`
    (`train_BSS_distillation.py`):

    - KD on clean samples: `lambda_kd = max(3 (1 - e / E), 0) + 1`
      (4 -> 1), divided by `T^2` because keras_kd's `LogitsDistillation`
      carries Hinton's `T^2` and the official soft cross-entropy does not
      (the same gradient as the official code's);
    - BSS: `lambda_bss = max(2 (1 - 4 e / (3 E)), 0)` (2 -> 0, zero from
      75 % of training on).

    Args:
        distiller: the `keras_kd.Distiller`.
        epochs: `E`; `None` reads the epochs of `fit`.
        kd_loss: the name of the KD loss; `None` leaves its weight alone.
        term: the BSS term's name. Defaults to `"bss"`.
    """

    def __init__(self, distiller, epochs=None, kd_loss=None, term="bss"):
        super().__init__()
        self.distiller = distiller
        self.epochs = epochs
        self.kd_loss = kd_loss
        self.term = term

    @staticmethod
    def weights_at(epoch, epochs):
        """`(lambda_kd, lambda_bss)` of epoch `epoch` (from 1) of `epochs`."""
        kd = max(3.0 * (1.0 - epoch / epochs), 0.0) + 1.0
        bss = max(2.0 * (1.0 - 4.0 / 3.0 * epoch / epochs), 0.0)
        return kd, bss

    def on_epoch_begin(self, epoch, logs=None):
        epochs = self.epochs or self.params.get("epochs")
        kd, bss = self.weights_at(epoch + 1, epochs)
        # With weight 0 the official code skips the attack and the
        # student's pass on adversarial samples (no cost, and no
        # BatchNormalization update from them): the step is rebuilt without
        # them, and again if the weight comes back.
        for procedure in self.distiller.procedures:
            if isinstance(procedure, BoundarySupportingSamples):
                attacking = bss > 0
                if procedure.attacking != attacking:
                    procedure.attacking = attacking
                    self.distiller.make_train_function(force=True)
        weights = {self.term: bss}
        if self.kd_loss is not None:
            loss = self.distiller.get_loss(self.kd_loss)
            temperature = float(
                keras.ops.convert_to_numpy(loss.temperature)
                if hasattr(loss, "temperature")
                else 1.0
            )
            weights[self.kd_loss] = kd / temperature**2
        self.distiller.set_loss_weights(**weights)


def _to_list(value):
    value = np.asarray(value, "float32")
    return float(value) if value.size == 1 else value.tolist()


def _positive_int(value, what, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"BoundarySupportingSamples: `{what}` must be an int >= "
            f"{minimum}; received {value!r}."
        )
    return value


def _positive_float(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"BoundarySupportingSamples: `{what}` must be a number > 0; "
            f"received {value!r} of type {type(value).__name__}."
        )
    if not value > 0:
        raise ValueError(
            f"BoundarySupportingSamples: `{what}` must be > 0; received "
            f"{value!r}."
        )
    return float(value)
