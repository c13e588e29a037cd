"""The main job's options: `keras-kd [distill] [options]` and its `--help`.

The help lists both commands (`distill`, the default, and `export`) and the
methods of the registry; the numbers are checked by the shared argument
types of `keras_kd.arguments`.
"""

import argparse

from keras_kd.arguments import integer
from keras_kd.arguments import real

USAGE = (
    "%(prog)s [distill] [options]       (the main job; `distill` is optional)\n"
    "       %(prog)s export MODEL.keras OUTPUT [--format FORMAT] [options]"
)
EPILOG = (
    "commands:\n"
    "  distill   (the default) train a teacher, the student alone and the "
    "student\n            distilled, and print their test accuracies\n"
    "  export    write the student of a saved Distiller (or a student .keras "
    "file)\n            to SavedModel or TFLite and check it against Keras; "
    "see\n            `keras-kd export --help`\n\n"
    "The models take raw pixels (0..255): each starts with a Normalization "
    "layer\nholding the training set's per-channel mean and standard "
    "deviation, so a\nstudent saved with --output exports as is."
)


def _methods_help():
    """The registry's methods, one line each, for `--help`."""
    from keras_kd.losses import registry

    return "methods (--methods):\n" + "\n".join(
        f"  {line}" for line in registry.describe()
    )


def build_parser():
    """The parser of the main job (`keras-kd [distill] [options]`)."""
    parser = argparse.ArgumentParser(
        prog="keras-kd",
        usage=USAGE,
        description=(
            "Distil a small teacher CNN into a smaller student and compare "
            "teacher, student\nalone and distilled student on the test split "
            "(the main job), or export a\ndistilled student."
        ),
        epilog=EPILOG + "\n\n" + _methods_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data",
        default=None,
        help="a .npz archive (x_train, y_train, x_test, y_test) or a "
        "TensorFlow Datasets name such as cifar10. Default: the Fashion-MNIST "
        "subset bundled with keras_kd (offline).",
    )
    parser.add_argument(
        "--data-dir",
        default=None,
        help="tfds data directory to read a tfds name from (one tfds "
        "prepared, or one made offline by "
        "keras_kd.data.prepare_tfds_directory). Default: tfds's own, "
        "~/tensorflow_datasets.",
    )
    parser.add_argument(
        "--download",
        action="store_true",
        help="allow downloading a tfds data set that is not prepared in "
        "--data-dir (needs internet). Default: never download; an "
        "unprepared name fails at once.",
    )
    parser.add_argument(
        "--methods",
        default="kd",
        help="comma-separated distillation methods (listed below, from "
        "keras_kd.losses.registry), each with the library defaults and its "
        "default layers. 'ab' and 'fsp' train as an initialisation stage "
        "first (--ab-epochs), then the other losses. Default: kd.",
    )
    parser.add_argument(
        "--epochs",
        type=integer(1),
        default=10,
        help="student epochs over the student's images "
        "(alone and distilled), >= 1. Default 10.",
    )
    parser.add_argument(
        "--teacher-epochs",
        type=integer(1),
        default=3,
        help="teacher epochs, >= 1. Default 3.",
    )
    parser.add_argument(
        "--ab-epochs",
        type=integer(0),
        default=1,
        help="initialisation epochs (>= 0, with 'ab' or 'fsp' in "
        "--methods), run before the --epochs of ordinary "
        "training (as RepDistiller runs 30 before its 240). "
        "Default 1.",
    )
    parser.add_argument(
        "--batch-size",
        type=integer(1),
        default=64,
        help="training batch size, >= 1. Default 64.",
    )
    parser.add_argument(
        "--learning-rate",
        type=real(0.0),
        default=0.05,
        help="peak learning rate of SGD (Nesterov momentum "
        "0.9, cosine decay), the optimiser of the reference "
        "code; > 0. Default 0.05.",
    )
    parser.add_argument(
        "--train-fraction",
        type=real(0.0, 1.0),
        default=1.0,
        help="use this fraction of the training images "
        "(class-balanced), in (0, 1]. Default 1.0.",
    )
    parser.add_argument(
        "--augment",
        choices=("none", "flip", "crop_flip"),
        default="none",
        help="training augmentation: 'flip' (random "
        "horizontal flips) or 'crop_flip' (4-pixel pad, "
        "random crop and flip, the CIFAR standard). "
        "Default none.",
    )
    parser.add_argument(
        "--student-fraction",
        type=real(0.0, 1.0),
        default=0.25,
        help="the students (alone and distilled) train on this "
        "class-balanced fraction of the teacher's training "
        "images, in (0, 1]: a student with few labels and a "
        "teacher that saw more, the regime where distillation "
        "pays. Default 0.25.",
    )
    parser.add_argument(
        "--seeds",
        type=integer(1),
        default=3,
        help="train the student alone and distilled with this "
        "many seeds (same initial weights and data order for "
        "both in each seed) and print mean ± std and the "
        "paired gain, >= 1. Default 3.",
    )
    parser.add_argument(
        "--seed",
        type=integer(0),
        default=0,
        help="random seed of the teacher and the subsets, and "
        "the first student seed, >= 0. Default 0.",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="directory to save teacher, student and "
        "distilled student as .keras files (they take raw "
        "pixels; `keras-kd export` takes them as they are).",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke test of the pipeline: 1 epoch each (plus 1 "
        "of AB initialisation), 1 seed, 1,000 images; its "
        "accuracies say nothing about the methods.",
    )
    return parser
