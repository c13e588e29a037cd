"""Image classification arrays: `.npz` archives, checks, subsets, statistics.

NumPy only. Every source `load_arrays` reads ends in `validated`: uint8
images shaped `(N, H, W, C)`, int64 labels shaped `(N,)` and one class name
per class.
"""

import numpy as np

ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


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
    x = as_images(x, "x")
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


def load_npz(path):
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
    return validated(arrays, class_names, str(path))


def validated(arrays, class_names, origin):
    for split in ("train", "test"):
        x = as_images(arrays["x_" + split], f"x_{split} of {origin}")
        if x.dtype != np.uint8:
            raise ValueError(
                f"x_{split} of {origin} has dtype {x.dtype}; expected uint8 "
                "pixels 0..255. Convert with "
                "`(x * 255).round().astype('uint8')` if in [0, 1]."
            )
        y = as_labels(arrays["y_" + split], f"y_{split} of {origin}")
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


def as_images(x, what):
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[..., np.newaxis]
    if x.ndim != 4:
        raise ValueError(
            f"{what} has shape {x.shape}; expected images shaped (N, H, W, C), "
            "or (N, H, W) for grey images."
        )
    return x


def as_labels(y, what):
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
