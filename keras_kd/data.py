"""Input pipelines: image classification arrays in, batched `tf.data` out.

Three ways in, one contract out. `load_arrays` reads the Fashion-MNIST subset
bundled with the package, a local `.npz` archive, or a TensorFlow Datasets
name (read from a tfds data directory: one that tfds prepared, or one that
`prepare_tfds_directory` made from a local archive offline; downloaded there
unless `download=False`), and always
returns uint8 images shaped `(N, H, W, C)` and int64 labels shaped `(N,)`.
`make_dataset` turns such arrays into a seeded, augmented, normalised,
batched and prefetched `tf.data.Dataset`; `channel_stats` computes the
per-channel mean and standard deviation it normalises with.

Example:

```python
arrays = keras_kd.data.load_arrays()  # bundled Fashion-MNIST subset
mean, std = keras_kd.data.channel_stats(arrays["x_train"])
train = keras_kd.data.make_dataset(
    arrays["x_train"], arrays["y_train"], training=True, augment="flip",
    mean=mean, std=std, seed=0)
test = keras_kd.data.make_dataset(
    arrays["x_test"], arrays["y_test"], mean=mean, std=std)
```
"""

import difflib
import importlib.resources
import os
import pathlib
import re

import numpy as np

BUNDLED_DATASET = "fashion_mnist_small.npz"
# The real data shipped in keras_kd/datasets (see its README), by name.
BUNDLED_DATASETS = {
    "fashion_mnist": BUNDLED_DATASET,
    "cifar10": "cifar10_small.npz",
}
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")
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


def _tensorflow_datasets(what):
    """Imports TensorFlow Datasets for `what`, or says how to install it."""
    try:
        import tensorflow  # noqa: F401  (tfds needs it; name it if missing)
        import tensorflow_datasets as tfds
    except ImportError as error:
        raise ImportError(
            f"keras_kd.data.{what} needs TensorFlow and TensorFlow Datasets "
            f"for a tfds name, and they could not be imported ({error}). "
            'Install them with `pip install "keras-kd[cpu,data]"` '
            "(tensorflow-cpu, tensorflow-datasets), or pass a .npz archive "
            "instead, which needs neither."
        ) from error
    return tfds


def load_arrays(source=None, *, data_dir=None, download=True):
    """Loads an image classification data set as NumPy arrays.

    Args:
        source: where the data comes from.
            `None` loads the class-balanced Fashion-MNIST subset bundled with
            keras_kd (6,000 train / 1,000 test images, 28x28x1); a path
            (`str` or `os.PathLike`) to a `.npz` archive with keys
            `x_train, y_train, x_test, y_test` and optionally `class_names`;
            any other string is a TensorFlow Datasets name such as
            `"cifar10"` or `"fashion_mnist"` (with optional `:version`),
            read from its `train` and `test` (else `validation`) splits.
            Defaults to `None`.
        data_dir: TensorFlow Datasets data directory, used only for a tfds
            name. Defaults to `None` (tfds's own default, usually
            `~/tensorflow_datasets`).
        download: whether a tfds data set that is not yet prepared in
            `data_dir` may be downloaded (and prepared there). `False` never
            touches the network: an unprepared name fails at once with a
            `FileNotFoundError` saying how to prepare it offline (`keras-kd`
            passes `False` unless given `--download`). Defaults to `True`
            (the notebooks download CIFAR-10 on Colab).

    Returns:
        A dict with `x_train`, `x_test` (uint8, `(N, H, W, C)`; grey images
        get a channel axis), `y_train`, `y_test` (int64, `(N,)`) and
        `class_names` (str array, one name per class; `"0", "1", ...` when
        the source names none).

    Example:

    ```python
    arrays = keras_kd.data.load_arrays()
    arrays["x_train"].shape  # (6000, 28, 28, 1)
    ```
    """
    if source is None:
        return load_bundled()
    if isinstance(source, os.PathLike):
        return _load_npz(pathlib.Path(source))
    if not isinstance(source, str):
        raise TypeError(
            "`source` must be None (the bundled Fashion-MNIST subset), a path "
            "to a .npz archive, or a TensorFlow Datasets name such as "
            f"'cifar10'; received {type(source).__name__} {source!r}."
        )
    if source.lower().endswith(".npz") or os.path.isfile(source):
        return _load_npz(pathlib.Path(source))
    return _load_tfds(source, data_dir=data_dir, download=download)


def load_bundled(name="fashion_mnist"):
    """Loads a small real data set shipped inside keras_kd, offline.

    Args:
        name: `"fashion_mnist"` (6,000 train / 1,000 test images, 28x28x1;
            what `load_arrays()` returns) or `"cifar10"` (400 train / 100
            test images, 32x32x3, 40 / 10 per class: enough for smoke runs
            of CIFAR-shaped code on real images, not for training).
            Defaults to `"fashion_mnist"`.

    Returns:
        The dict `load_arrays` returns.

    Example:

    >>> load_bundled("cifar10")["x_train"].shape
    (400, 32, 32, 3)
    """
    if name not in BUNDLED_DATASETS:
        raise ValueError(
            f"No bundled data set {name!r}; expected one of "
            f"{sorted(BUNDLED_DATASETS)}."
        )
    resource = (
        importlib.resources.files("keras_kd.datasets") / BUNDLED_DATASETS[name]
    )
    with importlib.resources.as_file(resource) as path:
        return _load_npz(path)


def balanced_subset(x, y, fraction, *, seed=0):
    """A class-balanced random subset: `fraction` of each class's examples.

    The AB paper's reduced-data regime (and `keras-kd --train-fraction`)
    trains on such a subset. Order is preserved.

    Args:
        x: images, `(N, ...)`.
        y: integer labels, `(N,)`.
        fraction: share of each class to keep, in `(0, 1]`; at least one
            example per class is kept.
        seed: seed of the draw. Defaults to `0`.

    Returns:
        `(x_subset, y_subset)`.

    Example:

    >>> x, y = np.zeros((100, 2)), np.repeat(np.arange(4), 25)
    >>> xs, ys = balanced_subset(x, y, 0.2)
    >>> np.bincount(ys).tolist()
    [5, 5, 5, 5]
    """
    if not 0 < fraction <= 1:
        raise ValueError(
            f"`fraction` must be in (0, 1]; received {fraction!r}."
        )
    if fraction == 1:
        return x, y
    rng = np.random.default_rng(seed)
    keep = []
    for label in np.unique(y):
        index = np.flatnonzero(y == label)
        count = max(1, int(round(fraction * len(index))))
        keep.append(rng.choice(index, count, replace=False))
    keep = np.sort(np.concatenate(keep))
    return x[keep], y[keep]


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
    x = _as_images(x, "x")
    if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
        raise TypeError(
            f"`x` must hold uint8 (0..255) or float ([0, 1]) images; received "
            f"dtype {x.dtype}. Convert with `x.astype('uint8')`."
        )
    y = _as_labels(y, "y")
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


def channel_stats(x, *, chunk_size=1024):
    """Per-channel mean and standard deviation of uint8 images, in [0, 1] units.

    Accumulates sums and sums of squares in float64 over chunks of
    `chunk_size` images, so 50,000 CIFAR images never become one float array.
    The standard deviation is the population one (over all pixels of all
    images), as used for the usual CIFAR normalisation constants.

    Args:
        x: uint8 images, `(N, H, W, C)` or grey `(N, H, W)`.
        chunk_size: images per chunk. Defaults to `1024`.

    Returns:
        `(mean, std)`, two float64 arrays of length `C`.

    Example:

    ```python
    mean, std = keras_kd.data.channel_stats(load_arrays()["x_train"])
    ```
    """
    x = _as_images(x, "x")
    if x.dtype != np.uint8:
        raise TypeError(
            f"`channel_stats` expects uint8 images (0..255); received dtype "
            f"{x.dtype}. Pass the raw training images, before scaling."
        )
    if len(x) == 0:
        raise ValueError("`channel_stats` received no images (shape (0, ...)).")
    total = np.zeros(x.shape[-1], np.float64)
    squares = np.zeros(x.shape[-1], np.float64)
    for start in range(0, len(x), chunk_size):
        chunk = x[start : start + chunk_size].astype(np.float64)
        total += chunk.sum(axis=(0, 1, 2))
        squares += np.square(chunk).sum(axis=(0, 1, 2))
    count = x.shape[0] * x.shape[1] * x.shape[2]
    mean = total / count
    variance = np.maximum(squares / count - np.square(mean), 0.0)
    return mean / 255.0, np.sqrt(variance) / 255.0


def prepare_tfds_directory(npz_path, data_dir, name):
    """Writes a local `.npz` archive as a TensorFlow Datasets data directory.

    For offline users: afterwards `load_arrays(name, data_dir=data_dir)`,
    `tfds.load(name, data_dir=data_dir)` and `tfds.builder(name,
    data_dir=data_dir)` read it like any prepared tfds data set, with
    `train` and `test` splits of `{"image", "label"}` examples (images stored
    losslessly as PNG, labels as a `ClassLabel` with the archive's
    `class_names`), in the archive's order. Uses
    `tfds.dataset_builders.store_as_tfds_dataset`.

    Args:
        npz_path: archive with `x_train, y_train, x_test, y_test` and
            optionally `class_names` (see `load_arrays`).
        data_dir: tfds data directory to write into; the data set goes to
            `data_dir/name/1.0.0/`.
        name: data set name, lower-case snake_case, and not the name of a
            data set tfds already knows (tfds would then look for its own
            version, not this one); e.g. `"cifar10_local"`.

    Returns:
        The path of the prepared data set directory, as a string.

    Example:

    ```python
    keras_kd.data.prepare_tfds_directory(
        "cifar10.npz", "~/tfds", "cifar10_local"
    )
    arrays = keras_kd.data.load_arrays("cifar10_local", data_dir="~/tfds")
    ```
    """
    tfds = _tensorflow_datasets("prepare_tfds_directory")

    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(
            "`name` must be a lower-case snake_case data set name such as "
            f"'cifar10_local'; received {name!r}."
        )
    if name in tfds.list_builders(with_community_datasets=False):
        raise ValueError(
            f"`name` {name!r} is already a TensorFlow Datasets data set, so "
            "`tfds.load` would look for its own version instead of this one. "
            f"Choose another name, e.g. {name + '_local'!r}."
        )
    data_dir = os.path.expanduser(os.fspath(data_dir))
    if os.path.exists(os.path.join(data_dir, name)):
        raise FileExistsError(
            f"{os.path.join(data_dir, name)} already exists. Delete it to "
            "rebuild the data set, or choose another `name` or `data_dir`."
        )
    arrays = _load_npz(pathlib.Path(os.path.expanduser(os.fspath(npz_path))))
    features = tfds.features.FeaturesDict(
        {
            "image": tfds.features.Image(
                shape=arrays["x_train"].shape[1:], dtype=np.uint8
            ),
            "label": tfds.features.ClassLabel(
                names=[str(n) for n in arrays["class_names"]]
            ),
        }
    )

    def examples(x, y):
        return [(i, {"image": x[i], "label": int(y[i])}) for i in range(len(x))]

    builder = tfds.dataset_builders.store_as_tfds_dataset(
        name=name,
        version="1.0.0",
        features=features,
        split_datasets={
            "train": examples(arrays["x_train"], arrays["y_train"]),
            "test": examples(arrays["x_test"], arrays["y_test"]),
        },
        data_dir=data_dir,
        description=(
            f"Made by keras_kd.data.prepare_tfds_directory from {npz_path}."
        ),
        disable_shuffling=True,
    )
    return os.fspath(builder.data_dir)


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


def _load_npz(path):
    if not path.is_file():
        raise FileNotFoundError(
            f"No such data archive: {path}. Expected a .npz file with keys "
            f"{', '.join(ARRAY_KEYS)} (and optionally class_names); check the "
            "path, or pass a TensorFlow Datasets name such as 'cifar10'."
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(
            f"Could not read {path} as a NumPy .npz archive ({error}). "
            "Expected a file written by np.savez / np.savez_compressed with "
            f"keys {', '.join(ARRAY_KEYS)}."
        ) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(
            f"{path} holds a single array, not a .npz archive. Expected keys "
            f"{', '.join(ARRAY_KEYS)}; write them with "
            "np.savez_compressed(path, x_train=...)."
        )
    with archive:
        missing = [key for key in ARRAY_KEYS if key not in archive.files]
        if missing:
            raise ValueError(
                f"{path} lacks the keys {missing}; it has "
                f"{sorted(archive.files)}. Expected {', '.join(ARRAY_KEYS)} "
                "(and optionally class_names); re-save it with "
                "np.savez_compressed under those names."
            )
        arrays = {key: archive[key] for key in ARRAY_KEYS}
        class_names = (
            archive["class_names"] if "class_names" in archive.files else None
        )
    return _validated(arrays, class_names, str(path))


def _load_tfds(name, *, data_dir, download):
    tfds = _tensorflow_datasets("load_arrays")

    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except (
        ValueError,
        AssertionError,
    ) as error:  # tfds: unknown name, bad version
        known = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(
            name.split(":")[0].split("/")[0], known, n=5
        )
        reason = (
            str(error).strip().splitlines()[0]
            if str(error).strip()
            else type(error).__name__
        )
        raise ValueError(
            f"Unknown data source {name!r}: it is not an existing file and "
            f"tfds could not load it as a data set name ({reason}) from "
            f"data_dir={data_dir!r}. Expected None (the bundled data), a path "
            "to a .npz archive, or a TensorFlow Datasets name such as 'cifar10'"
            + (f"; closest tfds names: {close}." if close else ".")
            + " Offline, make a tfds directory with `prepare_tfds_directory`."
        ) from error
    if not builder.is_prepared():
        if not download:
            raise FileNotFoundError(
                f"The TensorFlow Datasets data set {name!r} is not prepared in "
                f"{builder.data_dir}, and downloading was not asked for. "
                "Offline: pass a .npz archive (x_train, y_train, x_test, "
                "y_test) instead, or make a tfds directory from one with "
                "keras_kd.data.prepare_tfds_directory('data.npz', DATA_DIR, "
                f"'{name.split(':')[0].split('/')[0]}_local') and load that "
                "name from DATA_DIR. Online: pass --download to keras-kd "
                "(download=True to load_arrays) to download it there."
            )
        try:
            builder.download_and_prepare()
        except OSError as error:
            raise OSError(
                f"Could not download the TensorFlow Datasets data set {name!r} "
                f"({error}). Offline, pass a .npz path instead, or a data_dir "
                "made by `prepare_tfds_directory`."
            ) from error
    info = builder.info
    keys = info.supervised_keys or ("image", "label")
    if (
        not isinstance(keys, tuple)
        or len(keys) != 2
        or any(k not in info.features for k in keys)
    ):
        raise ValueError(
            f"The TensorFlow Datasets data set {name!r} has features "
            f"{list(info.features)} and supervised keys "
            f"{info.supervised_keys}; expected an (image, label) pair. Use an "
            "image classification data set."
        )
    test_split = (
        "validation" if info.splits and "test" not in info.splits else "test"
    )
    arrays = {}
    for split, suffix in (("train", "train"), (test_split, "test")):
        images, labels = [], []
        ds = builder.as_dataset(split=split).map(
            lambda ex: (ex[keys[0]], ex[keys[1]])
        )
        # Batched reads instead of batch_size=-1, which aborts the process in
        # TF 2.21 when a split's size is unknown (as under
        # tfds.testing.mock_data).
        for x, y in tfds.as_numpy(ds.batch(4096)):
            images.append(x)
            labels.append(y)
        arrays["x_" + suffix] = np.concatenate(images)
        arrays["y_" + suffix] = np.concatenate(labels)
    label = info.features[keys[1]]
    class_names = getattr(label, "names", None)
    return _validated(arrays, class_names, f"tfds {name!r}")


def _validated(arrays, class_names, origin):
    for split in ("train", "test"):
        x = _as_images(arrays["x_" + split], f"x_{split} of {origin}")
        if x.dtype != np.uint8:
            raise ValueError(
                f"x_{split} of {origin} has dtype {x.dtype}; expected uint8 "
                "pixels 0..255. Convert with "
                "`(x * 255).round().astype('uint8')` if in [0, 1]."
            )
        y = _as_labels(arrays["y_" + split], f"y_{split} of {origin}")
        if len(x) != len(y):
            raise ValueError(
                f"{origin} has {len(x)} x_{split} images but {len(y)} "
                f"y_{split} labels; expected one label per image."
            )
        arrays["x_" + split], arrays["y_" + split] = x, y
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise ValueError(
            f"{origin} has train images shaped {arrays['x_train'].shape[1:]} "
            f"and test images shaped {arrays['x_test'].shape[1:]}; expected "
            "the same (H, W, C)."
        )
    num_classes = (
        int(
            max(
                arrays["y_train"].max(initial=-1),
                arrays["y_test"].max(initial=-1),
            )
        )
        + 1
    )
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    class_names = np.asarray(class_names).astype(str)
    if class_names.ndim != 1 or len(class_names) < num_classes:
        raise ValueError(
            f"class_names of {origin} has shape {class_names.shape}; expected "
            f"a list of at least {num_classes} names (labels go up to "
            f"{num_classes - 1})."
        )
    arrays["class_names"] = class_names
    return arrays


def _as_images(x, what):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise ValueError(
            f"{what} has shape {x.shape}; expected images shaped (N, H, W, C), "
            "or (N, H, W) for grey images."
        )
    return x


def _as_labels(y, what):
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(
            f"{what} has shape {y.shape}; expected integer class ids shaped "
            "(N,). Flatten them with `y.reshape(-1)`."
        )
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"{what} has dtype {y.dtype}; expected integer class ids. Convert "
            "with `y.astype('int64')` (for one-hot labels, `y.argmax(-1)`)."
        )
    if y.size and y.min() < 0:
        raise ValueError(
            f"{what} holds negative labels (min {y.min()}); expected class ids "
            ">= 0."
        )
    return y.astype(np.int64)


def _per_channel(values, what, channels):
    values = np.asarray(values, np.float64).reshape(-1)
    if values.shape != (channels,):
        raise ValueError(
            f"`{what}` has {values.size} values; expected one per channel "
            f"({channels}), in [0, 1] units, e.g. from "
            "`channel_stats(x_train)`."
        )
    return values
