"""Function matching: teacher and student see the same augmented batch.

Beyer et al. ("Knowledge distillation: A good teacher is patient and
consistent", CVPR 2022) show that distillation becomes *function matching*
when both networks receive the same, strongly augmented inputs (random
crops, flips, mixup), so that the student learns the teacher's function
around the data instead of its near-one-hot outputs on the training images.

`FunctionMatching` is an option of `keras_kd.Distiller`: inside each
training step the batch is augmented once and that batch feeds the teacher
and the student (each still runs once per step). Evaluation and prediction
see the data unchanged. The task loss, when there is one, uses labels mixed
with the inputs: `lam * loss(y) + (1 - lam) * loss(y_partner)`, the form of
the mixup and CutMix papers, which works for sparse and one-hot labels.

The augmentations, in this order:

- **crop**: zero-pad each image by `crop_padding` pixels per side and take a
  random crop of the original size (a per-example offset);
- **flip**: a left-right flip of each example with probability 1/2;
- **mix**: with `mixup_alpha > 0`, mixup (Zhang et al., ICLR 2018): the batch
  becomes `lam * x + (1 - lam) * x_partner` with one `lam ~ Beta(alpha,
  alpha)` per batch; with `cutmix_alpha > 0`, CutMix (Yun et al., ICCV 2019):
  a box of area `1 - lam` is pasted from the partner and `lam` becomes the
  uncovered share. With both, each batch uses one of the two, chosen with
  probability 1/2 (as timm does). The partner of example `i` is example
  `i - 1` of the global batch (the last for the first), as big_vision's
  `jnp.roll`.

Randomness comes from a `keras.random.SeedGenerator` the Distiller owns,
seeded by `seed`. Under `tf.distribute` the random draws are made for the
global batch (the inputs and labels gathered from every replica) and each
replica takes its own examples, so N replicas train as one device on the
same global batch.

Reference: Beyer et al., CVPR 2022, <https://arxiv.org/abs/2106.05237>;
official code google-research/big_vision (`configs/proj/distill`).
"""

import keras

from keras_kd import backend as backend_lib

ops = keras.ops


@keras.saving.register_keras_serializable(package="keras_kd")
class FunctionMatching:
    """Augments each training batch once, for teacher and student alike.

    Args:
        crop_padding: pixels of zero padding per side before a random crop
            of the original size; `0` turns crops off. Defaults to `4` (the
            CIFAR recipe).
        flip: random left-right flips. Defaults to `True`.
        mixup_alpha: the Beta distribution's parameter of mixup's weight;
            `0` turns mixup off. Defaults to `1.0` (Beyer et al.).
        cutmix_alpha: the same for CutMix; `0` turns it off. Defaults to
            `0.0`.
        seed: the seed of the augmentations (an integer). Defaults to `0`.

    Example:

    ```python
    import keras, numpy as np
    import keras_kd

    def cnn(width, name):
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(width, 3, padding="same")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(10)(x), name=name)

    distiller = keras_kd.Distiller(
        cnn(16, "teacher"), cnn(4, "student"),
        keras_kd.losses.LogitsDistillation(temperature=1.0),
        function_matching=keras_kd.FunctionMatching(mixup_alpha=1.0),
    )
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.rand(16, 16, 16, 3).astype("float32")
    y = np.random.randint(0, 10, size=(16,))
    distiller.fit(x, y, epochs=1, verbose=0)
    ```
    """

    def __init__(
        self,
        crop_padding=4,
        flip=True,
        mixup_alpha=1.0,
        cutmix_alpha=0.0,
        seed=0,
    ):
        if isinstance(crop_padding, bool) or not isinstance(crop_padding, int):
            raise TypeError(
                "`crop_padding` must be a non-negative integer (pixels per "
                f"side); received {crop_padding!r} of type "
                f"{type(crop_padding).__name__}."
            )
        if crop_padding < 0:
            raise ValueError(
                f"`crop_padding` must be >= 0; received {crop_padding}. Use "
                "0 to turn random crops off."
            )
        for name, value in (
            ("mixup_alpha", mixup_alpha),
            ("cutmix_alpha", cutmix_alpha),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"`{name}` must be a number; received {value!r} of type "
                    f"{type(value).__name__}."
                )
            if not value >= 0 or value == float("inf"):
                raise ValueError(
                    f"`{name}` must be a finite number >= 0; received "
                    f"{value}. Use 0 to turn it off."
                )
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(
                f"`seed` must be an integer; received {seed!r} of type "
                f"{type(seed).__name__}."
            )
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)
        self.mixup_alpha = float(mixup_alpha)
        self.cutmix_alpha = float(cutmix_alpha)
        self.seed = int(seed)
        if not (self.crop_padding or self.flip or self.mixes):
            raise ValueError(
                "`FunctionMatching` was given no augmentation (crop_padding="
                "0, flip=False, mixup_alpha=0, cutmix_alpha=0). Turn at "
                "least one on, or pass `function_matching=None`."
            )

    @property
    def mixes(self):
        """Whether examples are mixed (mixup or CutMix): labels then mix."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0

    @property
    def spatial(self):
        """Whether crops or flips are on: they need image inputs."""
        return bool(self.crop_padding or self.flip)

    def get_config(self):
        return {
            "crop_padding": self.crop_padding,
            "flip": self.flip,
            "mixup_alpha": self.mixup_alpha,
            "cutmix_alpha": self.cutmix_alpha,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        options = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"FunctionMatching({options})"

    def check_model(self, model):
        """Fails before training unless `model` takes what this augments."""
        if len(model.inputs) != 1:
            raise ValueError(
                f"Function matching augments one input tensor, but model "
                f"'{model.name}' has {len(model.inputs)} inputs. Use a "
                "one-input model, or augment in your input pipeline instead."
            )
        shape = tuple(model.inputs[0].shape)
        if self.spatial and len(shape) != 4:
            raise ValueError(
                f"Random crops and flips need image inputs (batch, height, "
                f"width, channels), but model '{model.name}' takes shape "
                f"{shape}. Pass `crop_padding=0, flip=False` to keep mixup "
                "alone, which works on any numeric input."
            )

    def augment(self, x, seed_generator):
        """`(x_aug, lam)`: this step's local batch, augmented, and the
        mixing weight (a float32 scalar, 1 without mixing)."""
        x = ops.stop_gradient(ops.convert_to_tensor(x))
        dtype = x.dtype
        xs, take_mine = _global_batch(ops.cast(x, "float32"))
        size = ops.shape(xs)[0]
        channels_first = keras.config.image_data_format() == "channels_first"
        if self.spatial and channels_first:
            xs = ops.transpose(xs, (0, 2, 3, 1))
        if self.crop_padding:
            offsets = keras.random.randint(
                (size, 2),
                0,
                2 * self.crop_padding + 1,
                seed=seed_generator,
            )
            xs = random_crop(xs, offsets, self.crop_padding)
        if self.flip:
            coins = keras.random.uniform((size,), seed=seed_generator) < 0.5
            xs = flip_examples(xs, coins)
        lam = ops.ones((), "float32")
        if self.mixes:
            xs, lam = self._mix(xs, seed_generator)
        if self.spatial and channels_first:
            xs = ops.transpose(xs, (0, 3, 1, 2))
        return ops.cast(take_mine(xs), dtype), lam

    def partner_labels(self, y):
        """The labels of each local example's mixing partner."""
        ys, take_mine = _global_batch(y)
        return take_mine(ops.roll(ys, 1, axis=0))

    def _mix(self, xs, seed_generator):
        partner = ops.roll(xs, 1, axis=0)
        mixed = []
        if self.mixup_alpha > 0:
            lam = _beta(self.mixup_alpha, seed_generator)
            mixed.append((mixup(xs, partner, lam), lam))
        if self.cutmix_alpha > 0:
            lam = _beta(self.cutmix_alpha, seed_generator)
            height, width = ops.shape(xs)[1], ops.shape(xs)[2]
            centre = keras.random.uniform((2,), seed=seed_generator)
            mask = cutmix_mask(height, width, lam, centre)
            mixed.append(
                (xs * (1.0 - mask) + partner * mask, 1.0 - ops.mean(mask))
            )
        if len(mixed) == 1:
            return mixed[0]
        use_mixup = keras.random.uniform((), seed=seed_generator) < 0.5
        (x_a, lam_a), (x_b, lam_b) = mixed
        return (
            ops.where(use_mixup, x_a, x_b),
            ops.where(use_mixup, lam_a, lam_b),
        )


def _global_batch(value):
    """`(global_value, take_mine)`: `value` gathered from every replica, and
    the function that takes this replica's examples back out of a tensor of
    the global batch. One device: `value` and the identity."""
    backend = backend_lib.get()
    replicas = backend.replicas_in_sync()
    if replicas == 1:
        return value, lambda global_value: global_value
    local = ops.shape(value)[0]
    sizes = backend.all_gather(ops.reshape(local, (1,)))
    before = ops.arange(replicas) < backend.replica_id()
    offset = ops.sum(ops.where(before, sizes, ops.zeros_like(sizes)))
    mine = offset + ops.arange(local)
    return backend.all_gather(value), lambda v: ops.take(v, mine, axis=0)


def _beta(alpha, seed_generator):
    lam = keras.random.beta((), alpha, alpha, seed=seed_generator)
    return ops.cast(lam, "float32")


def mixup(x, partner, lam):
    """`lam * x + (1 - lam) * partner`."""
    return lam * x + (1.0 - lam) * partner


def flip_examples(x, flips):
    """Each example of `x` (B, H, W, C) flipped left-right where `flips`."""
    return ops.where(flips[:, None, None, None], ops.flip(x, axis=2), x)


def random_crop(x, offsets, padding):
    """Crops of `x` (B, H, W, C) after `padding` zeros on each side.

    `offsets` (B, 2) are each example's (row, column) start in the padded
    image, in `[0, 2 * padding]`; an offset of `padding` returns the image.
    """
    height, width = ops.shape(x)[1], ops.shape(x)[2]
    padded = ops.pad(
        x, ((0, 0), (padding, padding), (padding, padding), (0, 0))
    )
    offsets = ops.cast(offsets, "int32")
    rows = offsets[:, :1] + ops.arange(height, dtype="int32")[None, :]
    columns = offsets[:, 1:] + ops.arange(width, dtype="int32")[None, :]
    # One-hot selections keep this a pair of batched matrix products, which
    # every backend differentiates and compiles alike.
    pick_rows = ops.one_hot(rows, height + 2 * padding, dtype=x.dtype)
    pick_columns = ops.one_hot(columns, width + 2 * padding, dtype=x.dtype)
    x = ops.einsum("bip,bpqc->biqc", pick_rows, padded)
    return ops.einsum("bjq,biqc->bijc", pick_columns, x)


def cutmix_mask(height, width, lam, centre):
    """CutMix's box, `(1, H, W, 1)` float32: 1 inside, 0 outside.

    The box has sides `H * sqrt(1 - lam)` and `W * sqrt(1 - lam)` around
    `centre` (two numbers in [0, 1): row and column as shares of H and W),
    clipped to the image, with integer corners as the official code's.
    """
    side = ops.sqrt(1.0 - ops.cast(lam, "float32"))
    h = ops.cast(height, "float32")
    w = ops.cast(width, "float32")
    cy, cx = ops.floor(centre[0] * h), ops.floor(centre[1] * w)
    half_h, half_w = ops.floor(h * side / 2.0), ops.floor(w * side / 2.0)
    top, bottom = ops.clip(cy - half_h, 0, h), ops.clip(cy + half_h, 0, h)
    left, right = ops.clip(cx - half_w, 0, w), ops.clip(cx + half_w, 0, w)
    rows = ops.cast(ops.arange(height), "float32")
    columns = ops.cast(ops.arange(width), "float32")
    inside_rows = ops.logical_and(rows >= top, rows < bottom)
    inside_columns = ops.logical_and(columns >= left, columns < right)
    mask = ops.logical_and(inside_rows[:, None], inside_columns[None, :])
    return ops.cast(mask, "float32")[None, :, :, None]
