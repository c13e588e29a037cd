"""Make `fashion_mnist_small.npz`, the class-balanced Fashion-MNIST subset
bundled with keras_kd.

Draws, with a fixed seed, 600 training images per class from the train split and
100 test images per class from the test split of a full Fashion-MNIST archive
(keys `x_train, y_train, x_test, y_test, class_names`; uint8 images shaped
(N, 28, 28, 1), int64 labels), shuffles each subset once, and writes them with
`np.savez_compressed`.

Usage:

    python keras_kd/datasets/make_fashion_mnist_small.py \\
        /path/to/fashion_mnist.npz

This script is never run at import time; it records how the bundled file was
made.
"""

import argparse
import hashlib
import pathlib

import numpy as np

SEED = 20240611
TRAIN_PER_CLASS = 600
TEST_PER_CLASS = 100
DEFAULT_OUTPUT = pathlib.Path(__file__).with_name("fashion_mnist_small.npz")


def balanced_indices(labels, per_class, rng):
    """Return `per_class` indices of each class drawn without replacement,
    shuffled."""
    chosen = []
    for label in np.unique(labels):
        pool = np.flatnonzero(labels == label)
        if pool.size < per_class:
            raise ValueError(
                f"Class {label} has only {pool.size} examples; expected at "
                f"least {per_class}. Pass the full Fashion-MNIST archive."
            )
        chosen.append(rng.choice(pool, size=per_class, replace=False))
    indices = np.concatenate(chosen)
    rng.shuffle(indices)
    return indices


def make_subset(
    argv,
    *,
    description,
    dataset,
    default_output,
    seed,
    train_per_class,
    test_per_class,
):
    """The command line of a bundled-subset maker: reads the full `.npz`
    archive named in `argv`, writes the class-balanced subset (uint8 images,
    int64 labels, class names) and prints its sha256."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("source", help=f"full {dataset} .npz archive")
    parser.add_argument(
        "--output",
        default=str(default_output),
        help="where to write the subset",
    )
    args = parser.parse_args(argv)

    rng = np.random.default_rng(seed)
    with np.load(args.source) as data:
        train = balanced_indices(data["y_train"], train_per_class, rng)
        test = balanced_indices(data["y_test"], test_per_class, rng)
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


def main(argv=None):
    make_subset(
        argv,
        description=__doc__.split("\n\n")[0],
        dataset="Fashion-MNIST",
        default_output=DEFAULT_OUTPUT,
        seed=SEED,
        train_per_class=TRAIN_PER_CLASS,
        test_per_class=TEST_PER_CLASS,
    )


if __name__ == "__main__":
    main()
