"""Where the arrays come from: bundled data, a `.npz` archive or tfds."""

import importlib.resources
import os
import pathlib

from keras_kd.data.arrays import load_npz
from keras_kd.data.tfds import load_tfds

BUNDLED_DATASET = "fashion_mnist_small.npz"
# The real data shipped in keras_kd/datasets (see its README), by name.
BUNDLED_DATASETS = {
    "fashion_mnist": BUNDLED_DATASET,
    "cifar10": "cifar10_small.npz",
}
# Made from bundled data sets when asked (keras_kd.data.domains): the
# data sets each is made from.
DERIVED_DATASETS = {"fashion_mnist_on_cifar10": ("fashion_mnist", "cifar10")}


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
        return load_npz(pathlib.Path(source))
    if not isinstance(source, str):
        raise TypeError(
            "`source` must be None (the bundled Fashion-MNIST subset), a path "
            "to a .npz archive, or a TensorFlow Datasets name such as "
            f"'cifar10'; received {type(source).__name__} {source!r}."
        )
    if source.lower().endswith(".npz") or os.path.isfile(source):
        return load_npz(pathlib.Path(source))
    return load_tfds(source, data_dir=data_dir, download=download)


def load_bundled(name="fashion_mnist"):
    """Loads a small real data set shipped inside keras_kd, offline.

    Args:
        name: `"fashion_mnist"` (6,000 train / 1,000 test images, 28x28x1;
            what `load_arrays()` returns) or `"cifar10"` (400 train / 100
            test images, 32x32x3, 40 / 10 per class: enough for smoke runs
            of CIFAR-shaped code on real images, not for training), or
            `"fashion_mnist_on_cifar10"` (the Fashion-MNIST subset on grey
            CIFAR-10 backgrounds at 0.4 of the garments' brightness: a
            shifted target domain for domain adaptation; made from the two
            bundled files by `keras_kd.data.domains`).
            Defaults to `"fashion_mnist"`.

    Returns:
        The dict `load_arrays` returns.

    Example:

    >>> load_bundled("cifar10")["x_train"].shape
    (400, 32, 32, 3)
    """
    if name in DERIVED_DATASETS:
        from keras_kd.data import domains

        return domains.fashion_mnist_on_cifar10(
            *(load_bundled(part) for part in DERIVED_DATASETS[name])
        )
    if name not in BUNDLED_DATASETS:
        raise ValueError(
            f"No bundled data set {name!r}; expected one of "
            f"{sorted(BUNDLED_DATASETS) + sorted(DERIVED_DATASETS)}."
        )
    resource = (
        importlib.resources.files("keras_kd.datasets") / BUNDLED_DATASETS[name]
    )
    with importlib.resources.as_file(resource) as path:
        return load_npz(path)
