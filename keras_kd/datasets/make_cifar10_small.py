"""Make `cifar10_small.npz`, the CIFAR-10 subset bundled with keras_kd.

Draws, with a fixed seed, 40 training images per class from the train split and
10 test images per class from the test split of a full CIFAR-10 archive (keys
`x_train, y_train, x_test, y_test, class_names`; uint8 images shaped
(N, 32, 32, 3), int64 labels), shuffles each subset once, and writes them with
`np.savez_compressed`. Small on purpose (about 1.4 MB): it is the real data the
tutorial notebooks' smoke mode and `tests/test_notebooks.py` run on offline.

Usage:

    python keras_kd/datasets/make_cifar10_small.py /path/to/cifar10.npz

Never run at import time; it records how the bundled file was made.
"""

import pathlib

from keras_kd.datasets.make_fashion_mnist_small import make_subset

SEED = 20240612
TRAIN_PER_CLASS = 40
TEST_PER_CLASS = 10
DEFAULT_OUTPUT = pathlib.Path(__file__).with_name("cifar10_small.npz")


def main(argv=None):
    make_subset(
        argv,
        description=__doc__.splitlines()[0],
        dataset="CIFAR-10",
        default_output=DEFAULT_OUTPUT,
        seed=SEED,
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
    )


if __name__ == "__main__":
    main()
