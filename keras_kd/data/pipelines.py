"""`tf.data` pipelines: batched, augmented, normalised images from arrays.

TensorFlow is imported on first use, so that the rest of `keras_kd.data`
works without it.
"""

import numpy as np

from keras_kd.data.arrays import as_images
from keras_kd.data.arrays import as_labels

AUGMENTATIONS = ("crop_flip", "flip")
CROP_PADDING = 4


def _tensorflow(what):
    """Imports TensorFlow for `what`, or says how to install it.

    `load_arrays` (bundled data, `.npz`), `balanced_subset` and
    `channel_stats` need only NumPy; the `tf.data` pipelines and tfds need
    TensorFlow, imported here on first use so that `import keras_kd.data`
    works without it.
    """
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            f"keras_kd.data.{what} needs TensorFlow (tf.data), which could not "
            f"be imported ({error}). Install it with `pip install "
            '"keras-kd[cpu]"` (tensorflow-cpu; `[gpu]` for CUDA), or '
            "`pip install tensorflow-cpu`."
        ) from error
    return tf


def make_dataset(
    x,
    y,
    *,
    batch_size=128,
    training=False,
    augment=None,
    mean=None,
    std=None,
    rescale=True,
    shuffle_buffer=None,
    seed=None,
    drop_remainder=False,
    example_ids=False,
):
    """Builds a batched `tf.data.Dataset` of `(image, label)` from arrays.

    Per example, in order: when `training`, shuffle and augment; then batch,
    cast to float32 and scale (uint8 images are divided by 255, float images
    are taken to be in [0, 1] already; with `rescale=False` neither: raw
    pixels 0..255 for a model that normalises inside), normalise
    `(image - mean) / std` per channel, and prefetch. Augmentation runs in
    `map` with stateless random ops whose seeds come from
    `tf.data.Dataset.random(seed)`, so a given
    `seed` gives the same crops and flips whatever the parallelism, and a
    new draw each epoch.

    Args:
        x: images, `(N, H, W, C)` or grey `(N, H, W)`, uint8 or float.
        y: integer labels, `(N,)`.
        batch_size: examples per batch. Defaults to `128`.
        training: shuffle and augment. Defaults to `False`.
        augment: `"crop_flip"` (zero-pad 4 pixels on each side, random crop
            back to `H x W`, random horizontal flip: the standard CIFAR
            augmentation of He et al., 2016), `"flip"` (random horizontal
            flip only) or `None`. Used only when `training`. Defaults to
            `None`.
        mean: per-channel mean to subtract, length `C`, in [0, 1] units (see
            `channel_stats`). Defaults to `None` (no normalisation).
        std: per-channel standard deviation to divide by, length `C`, in
            [0, 1] units. Defaults to `None`.
        rescale: divide uint8 images by 255. `False` yields the pixel values
            unchanged as float32, for models that normalise inside (such as
            `keras_kd.models.conv_net(..., mean=mean, std=std)`, the models
            of `keras-kd`); `mean` and `std` must then be `None`. Defaults
            to `True`.
        shuffle_buffer: shuffle buffer size when `training`. Defaults to
            `None`, the whole data set (a full shuffle).
        seed: seed for shuffling and augmentation. Defaults to `None`
            (different every run).
        drop_remainder: drop the last, smaller batch. Defaults to `False`.
        example_ids: yield `({"image": images, "example_id": ids}, labels)`,
            `ids` each example's index in `x`, for losses that read them
            (`keras_kd.losses.ContrastiveRepresentation`'s memory bank). The
            order, crops and flips are the same as without ids. Defaults to
            `False`.

    Returns:
        A `tf.data.Dataset` of `(float32 (B, H, W, C), int64 (B,))`, or of
        `({"image": ..., "example_id": int64 (B,)}, int64 (B,))`.

    Example:

    ```python
    x = np.zeros((10, 32, 32, 3), "uint8"); y = np.arange(10)
    ds = keras_kd.data.make_dataset(x, y, batch_size=4, training=True,
                                    augment="crop_flip", seed=0)
    ```
    """
    tf = _tensorflow("make_dataset")
    x = as_images(x, "x")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"`x` must hold uint8 (0..255) or float ([0, 1]) images; received "
            f"dtype {x.dtype}. Convert with `x.astype('uint8')`."
        )
    y = as_labels(y, "y")
    if len(x) != len(y):
        raise ValueError(
            f"`x` and `y` must have the same length; received {len(x)} images "
            f"and {len(y)} labels."
        )
    if augment not in (None,) + AUGMENTATIONS:
        raise ValueError(
            f"`augment` must be one of {AUGMENTATIONS} or None; received "
            f"{augment!r}."
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(
            f"`batch_size` must be a positive int; received {batch_size!r}."
        )
    channels = x.shape[-1]
    if (mean is None) != (std is None):
        raise ValueError(
            "Pass both `mean` and `std` to normalise, or neither; received "
            f"mean={mean!r}, std={std!r}. `channel_stats(x_train)` returns "
            "both."
        )
    if not rescale and mean is not None:
        raise ValueError(
            "`rescale=False` passes raw pixels to a model that normalises "
            "inside, so the pipeline must not normalise too; received "
            f"mean={mean!r}, std={std!r}. Drop `mean` and `std`, or use "
            "`rescale=True`."
        )
    if mean is not None:
        mean = _per_channel(mean, "mean", channels)
        std = _per_channel(std, "std", channels)
        if np.any(std <= 0):
            raise ValueError(
                "`std` must be positive in every channel; received "
                f"{std.tolist()}."
            )

    if example_ids:
        ds = tf.data.Dataset.from_tensor_slices(
            (x, y, np.arange(len(x), dtype="int64"))
        )
    else:
        ds = tf.data.Dataset.from_tensor_slices((x, y))
    if training:
        ds = ds.shuffle(
            shuffle_buffer or len(x), seed=seed, reshuffle_each_iteration=True
        )
        if augment is not None:
            seeds = tf.data.Dataset.random(
                seed=seed, rerandomize_each_iteration=True
            )
            ds = tf.data.Dataset.zip((ds, seeds.batch(2)))
            augment_fn = _crop_flip if augment == "crop_flip" else _flip
            ds = ds.map(
                lambda example, op_seed: (
                    augment_fn(example[0], op_seed),
                    *example[1:],
                ),
                num_parallel_calls=tf.data.AUTOTUNE,
            )
    ds = ds.batch(batch_size, drop_remainder=drop_remainder)
    scale = 1.0 / 255.0 if rescale and x.dtype == np.uint8 else 1.0

    from keras_kd.step import EXAMPLE_ID

    def to_float(images, labels, *ids):
        images = tf.cast(images, tf.float32) * scale
        if mean is not None:
            images = (images - mean.astype(np.float32)) / std.astype(np.float32)
        if ids:
            return {"image": images, EXAMPLE_ID: ids[0]}, labels
        return images, labels

    ds = ds.map(to_float, num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def with_example_ids(dataset, key="image"):
    """Adds each example's index to an *unbatched* `tf.data` dataset.

    `(x, y)` becomes `({key: x, "example_id": i}, y)` (`(x, y, w)` keeps
    `w`), `i` the example's position in `dataset`. Apply it before
    shuffling and batching, so that an example keeps its id whatever order
    it comes in: losses with a memory bank (CRD) index the bank by it.

    Args:
        dataset: an unbatched `tf.data.Dataset` of `(x, y)` or `(x, y, w)`.
        key: the key of the inputs in the dict. The Distiller feeds the
            value to a one-input model whatever the key. Defaults to
            `"image"`.

    Returns:
        A `tf.data.Dataset`.

    Example:

    ```python
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = keras_kd.data.with_example_ids(ds).shuffle(len(x)).batch(64)
    ```
    """
    tf = _tensorflow("with_example_ids")
    spec = dataset.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise ValueError(
            "with_example_ids expects an unbatched dataset of (x, y) or "
            f"(x, y, sample_weight) tuples; its elements are {spec}. Map "
            "it to such tuples first."
        )
    from keras_kd.step import EXAMPLE_ID

    def add(index, example):
        return ({key: example[0], EXAMPLE_ID: index}, *example[1:])

    return dataset.enumerate().map(add, num_parallel_calls=tf.data.AUTOTUNE)


def _crop_flip(image, seed):
    tf = _tensorflow("make_dataset")
    height, width = image.shape[0], image.shape[1]
    padded = tf.pad(
        image,
        [[CROP_PADDING, CROP_PADDING], [CROP_PADDING, CROP_PADDING], [0, 0]],
    )
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    image = tf.image.stateless_random_crop(
        padded, tf.shape(image), seed=seeds[0]
    )
    image = tf.image.stateless_random_flip_left_right(image, seed=seeds[1])
    return tf.ensure_shape(image, (height, width, image.shape[-1]))


def _flip(image, seed):
    tf = _tensorflow("make_dataset")
    return tf.image.stateless_random_flip_left_right(image, seed=seed)


def _per_channel(values, what, channels):
    values = np.asarray(values, np.float64).reshape(-1)
    if values.shape != (channels,):
        raise ValueError(
            f"`{what}` has {values.size} values; expected one per channel "
            f"({channels}), in [0, 1] units, e.g. from "
            "`channel_stats(x_train)`."
        )
    return values
