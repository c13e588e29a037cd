"""TensorFlow Datasets: reading a tfds name, writing a tfds directory.

TensorFlow and TensorFlow Datasets are imported on first use, so that the
rest of `keras_kd.data` works without them.
"""

import difflib
import os
import pathlib
import re

import numpy as np

from keras_kd.data.arrays import load_npz
from keras_kd.data.arrays import validated


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
    arrays = load_npz(pathlib.Path(os.path.expanduser(os.fspath(npz_path))))
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


def load_tfds(name, *, data_dir, download):
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
    return validated(arrays, class_names, f"tfds {name!r}")
