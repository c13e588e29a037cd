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

Modules: `sources` (`load_arrays`, `load_bundled`), `arrays` (`.npz`
archives, the checks every source goes through, `balanced_subset`,
`channel_stats`; NumPy only), `pipelines` (`make_dataset`,
`with_example_ids`; TensorFlow), `domains` (a domain-shift pair from
the bundled data) and `tfds` (tfds names,
`prepare_tfds_directory`; TensorFlow Datasets). TensorFlow is imported only
when a pipeline or tfds is used.

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

from keras_kd.data.arrays import ARRAY_KEYS
from keras_kd.data.arrays import balanced_subset
from keras_kd.data.arrays import channel_stats
from keras_kd.data.pipelines import AUGMENTATIONS
from keras_kd.data.pipelines import CROP_PADDING
from keras_kd.data.pipelines import make_dataset
from keras_kd.data.pipelines import with_example_ids
from keras_kd.data.sources import BUNDLED_DATASET
from keras_kd.data.sources import BUNDLED_DATASETS
from keras_kd.data.sources import DERIVED_DATASETS
from keras_kd.data.sources import load_arrays
from keras_kd.data.sources import load_bundled
from keras_kd.data.tfds import prepare_tfds_directory

__all__ = [
    "ARRAY_KEYS",
    "AUGMENTATIONS",
    "BUNDLED_DATASET",
    "BUNDLED_DATASETS",
    "CROP_PADDING",
    "DERIVED_DATASETS",
    "balanced_subset",
    "channel_stats",
    "load_arrays",
    "load_bundled",
    "make_dataset",
    "prepare_tfds_directory",
    "with_example_ids",
]
