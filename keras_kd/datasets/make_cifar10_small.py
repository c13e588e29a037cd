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

import argparse
import hashlib
import pathlib

import numpy as np

from keras_kd.datasets.make_fashion_mnist_small import balanced_indices

SEED = 20240612
TRAIN_PER_CLASS = 40
TEST_PER_CLASS = 10
DEFAULT_OUTPUT = pathlib.Path(__file__).with_name("cifar10_small.npz")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="full CIFAR-10 .npz archive")
    parser.add_argument(
        "--output",
        default=str(DEFAULT_OUTPUT),
        help="where to write the subset",
    )
    args = parser.parse_args(argv)

    rng = np.random.default_rng(SEED)
    with np.load(args.source) as data:
        train = balanced_indices(data["y_train"], TRAIN_PER_CLASS, rng)
        test = balanced_indices(data["y_test"], TEST_PER_CLASS, rng)
        np.savez_compressed(
            args.output,
            x_train=data["x_train"][train].astype(np.uint8),
            y_train=data["y_train"][train].astype(np.int64),
            x_test=data["x_test"][test].astype(np.uint8),
            y_test=data["y_test"][test].astype(np.int64),
            class_names=np.asarray(data["class_names"]).astype(str),
        )
    digest = hashlib.sha256(pathlib.Path(args.output).read_bytes()).hexdigest()
    print(
        f"wrote {args.output}: {len(train)} train / {len(test)} test images, "
        f"sha256 {digest}"
    )


if __name__ == "__main__":
    main()
