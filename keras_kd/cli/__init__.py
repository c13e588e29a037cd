"""The `keras-kd` command (also `python -m keras_kd`).

`keras-kd` (or `keras-kd distill`) distils a small teacher into a smaller
student on real data and prints what each achieved: the teacher, the
student trained alone, and the distilled student, all on the test split.
With no `--data` it uses the Fashion-MNIST subset bundled with keras_kd
(6,000 train / 1,000 test images), so it runs offline; a TensorFlow Datasets
name is read from `--data-dir` and downloaded only with `--download`. The
models take raw pixels (0..255): each starts with a `Normalization` layer
holding the training set's statistics, and the input pipeline does not
normalise, so a student saved with `--output` exports as it is.

`keras-kd export ...` writes a distilled student to SavedModel or TFLite
(see `keras-kd export --help`).
"""

import argparse
import math
import os
import sys
import time
import zipfile

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
# Options of `keras-kd export` that take a value (to find its MODEL argument).
_EXPORT_VALUE_OPTIONS = (
    "--format",
    "--representative-data",
    "--calibration-batches",
    "--batch-size",
)


def _integer(minimum):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}; received {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {minimum}; received {value}"
            )
        return value

    return parse


def _real(low, high=None, *, low_inclusive=False):
    bounds = (
        f"in {'[' if low_inclusive else '('}{low}, {high}]"
        if high is not None
        else f"a finite number > {low}"
    )

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {bounds}; received {text!r}"
            ) from None
        below = value < low if low_inclusive else value <= low
        if (
            not math.isfinite(value)
            or below
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(
                f"must be {bounds}; received {text}"
            )
        return value

    return parse


def _methods_help():
    """The registry's methods, one line each, for `--help`."""
    from keras_kd.losses import registry

    return "methods (--methods):\n" + "\n".join(
        f"  {line}" for line in registry.describe()
    )


def _parser():
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
        type=_integer(1),
        default=10,
        help="student epochs over the student's images "
        "(alone and distilled), >= 1. Default 10.",
    )
    parser.add_argument(
        "--teacher-epochs",
        type=_integer(1),
        default=3,
        help="teacher epochs, >= 1. Default 3.",
    )
    parser.add_argument(
        "--ab-epochs",
        type=_integer(0),
        default=1,
        help="initialisation epochs (>= 0, with 'ab' or 'fsp' in "
        "--methods), run before the --epochs of ordinary "
        "training (as RepDistiller runs 30 before its 240). "
        "Default 1.",
    )
    parser.add_argument(
        "--batch-size",
        type=_integer(1),
        default=64,
        help="training batch size, >= 1. Default 64.",
    )
    parser.add_argument(
        "--learning-rate",
        type=_real(0.0),
        default=0.05,
        help="peak learning rate of SGD (Nesterov momentum "
        "0.9, cosine decay), the optimiser of the reference "
        "code; > 0. Default 0.05.",
    )
    parser.add_argument(
        "--train-fraction",
        type=_real(0.0, 1.0),
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
        type=_real(0.0, 1.0),
        default=0.25,
        help="the students (alone and distilled) train on this "
        "class-balanced fraction of the teacher's training "
        "images, in (0, 1]: a student with few labels and a "
        "teacher that saw more, the regime where distillation "
        "pays. Default 0.25.",
    )
    parser.add_argument(
        "--seeds",
        type=_integer(1),
        default=3,
        help="train the student alone and distilled with this "
        "many seeds (same initial weights and data order for "
        "both in each seed) and print mean ± std and the "
        "paired gain, >= 1. Default 3.",
    )
    parser.add_argument(
        "--seed",
        type=_integer(0),
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


def _losses(methods, stages, facts):
    """The methods' losses, with their default layers in keras_kd's models."""
    from keras_kd.losses import registry

    return [
        registry.build(method, stages=stages, facts=facts) for method in methods
    ]


def _pipelines(x_train, y_train, x_test, y_test, *, batch_size, augment=None):
    """The main job's input: raw pixels as float32, no normalisation outside.

    Returns `(train_ds(x, y, seed), test_ds, mean, std)`: `train_ds` makes
    the seeded training pipeline of any subset (the teacher's set or the
    students' part of it); `mean` and `std` (from `channel_stats(x_train)`,
    in [0, 1] units) go into the models' `Normalization` layer instead of
    the pipeline, so every subset shares the teacher's statistics.
    """
    from keras_kd import data

    mean, std = data.channel_stats(x_train)

    def train_ds(x, y, seed, example_ids=False):
        return data.make_dataset(
            x,
            y,
            batch_size=batch_size,
            training=True,
            augment=augment,
            rescale=False,
            seed=seed,
            example_ids=example_ids,
        )

    test_ds = data.make_dataset(x_test, y_test, batch_size=256, rescale=False)
    return train_ds, test_ds, mean, std


def _mean_std(values):
    import numpy as np

    values = np.asarray(values, dtype="float64")
    return float(values.mean()), (
        float(values.std(ddof=1)) if len(values) > 1 else 0.0
    )


def distill(argv=None):
    """Runs the main job; returns the results dict (also printed)."""
    from keras_kd.losses import registry

    args = _parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = registry.names()
    unknown = [m for m in methods if m not in known]
    if unknown or not methods:
        raise SystemExit(
            f"keras-kd: unknown method(s) {unknown or methods}; choose from "
            f"{tuple(known)}, e.g. --methods kd,ab,nst"
        )
    if args.quick:
        args.epochs = args.teacher_epochs = 1
        args.ab_epochs = min(args.ab_epochs, 1)
        args.train_fraction = min(args.train_fraction, 1000 / 6000)
        args.seeds = 1
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import tensorflow as tf
    except ImportError as error:
        raise SystemExit(
            f"keras-kd: the main job trains with TensorFlow, which could not "
            f"be imported ({error}). Install it with "
            '`pip install "keras-kd[cpu]"` (tensorflow-cpu; `[gpu]` for CUDA).'
        ) from error
    # Same printout on every run on the same machine: seeded initialisers,
    # subsets and shuffles, and deterministic kernels. The switch is
    # process-wide (and turns XLA off in Keras), so a caller that runs the
    # job in its own process gets its previous setting back afterwards.
    from tensorflow.python.framework import config as tf_config

    was_deterministic = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        return _run(args, methods)
    finally:
        if not was_deterministic:
            tf_config.disable_op_determinism()


def _run(args, methods):
    """The main job itself, under deterministic ops (see `distill`)."""
    import keras

    from keras_kd import callbacks as kd_callbacks
    from keras_kd import data
    from keras_kd.distiller import Distiller
    from keras_kd.losses import registry
    from keras_kd.models import conv_net

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    try:
        arrays = data.load_arrays(
            args.data, data_dir=args.data_dir, download=args.download
        )
    except (ValueError, TypeError, OSError, ImportError) as error:
        raise SystemExit(f"keras-kd: error: {error}") from error
    x_train, y_train = data.balanced_subset(
        arrays["x_train"],
        arrays["y_train"],
        args.train_fraction,
        seed=args.seed,
    )
    x_student, y_student = data.balanced_subset(
        x_train, y_train, args.student_fraction, seed=args.seed
    )
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    classes = len(arrays["class_names"])
    name = args.data or "bundled Fashion-MNIST subset"
    seeds = [args.seed + i for i in range(args.seeds)]
    print(
        f"keras-kd: {name}, {x_train.shape[1:]} images, {classes} classes.\n"
        f"  The teacher trains on {len(x_train)} images; each student (alone "
        f"and distilled) on a\n  class-balanced {len(x_student)} of them "
        f"(--student-fraction {args.student_fraction:g}); test: "
        f"{len(x_test)} images.\n  Methods {'+'.join(methods)}; seeds "
        f"{seeds}.",
        flush=True,
    )
    # Both subsets share the teacher's normalisation statistics.
    train_ds, test_ds, mean, std = _pipelines(
        x_train,
        y_train,
        x_test,
        y_test,
        batch_size=args.batch_size,
        augment=None if args.augment == "none" else args.augment,
    )
    shape = x_train.shape[1:]
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def compile_fit(
        model, dataset, epochs, steps, callbacks=(), decay_epochs=None
    ):
        # Cosine decay to zero: the final weights, not a noisy point, are
        # what each model is judged by.
        learning_rate = keras.optimizers.schedules.CosineDecay(
            args.learning_rate,
            decay_steps=max(1, (decay_epochs or epochs) * steps),
        )
        optimizer = keras.optimizers.SGD(
            learning_rate, momentum=0.9, nesterov=True
        )
        model.compile(optimizer=optimizer, loss=ce)
        model.fit(
            dataset,
            epochs=epochs,
            verbose=0,
            shuffle=False,
            callbacks=list(callbacks),
        )
        return model

    def accuracy(model):
        model.compile(loss=ce, metrics=["accuracy"])
        return float(
            model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"]
        )

    teacher_steps = -(-len(x_train) // args.batch_size)
    student_steps = -(-len(x_student) // args.batch_size)
    print(
        f"\n[teacher] conv_net(32, 64, 128), {args.teacher_epochs} epochs of "
        f"{teacher_steps} steps",
        flush=True,
    )
    keras.utils.set_random_seed(args.seed)
    teacher = compile_fit(
        conv_net(
            shape, classes, (32, 64, 128), mean=mean, std=std, name="teacher"
        ),
        train_ds(x_train, y_train, args.seed),
        args.teacher_epochs,
        teacher_steps,
    )
    teacher_accuracy = accuracy(teacher)
    print(f"  test accuracy {teacher_accuracy:.4f}", flush=True)

    facts = {"num_examples": len(x_student)}
    initializing = [
        m for m in methods if registry.lookup(m).cls.initialization_stage
    ]
    needs_ids = any(
        "example_ids" in registry.lookup(m).cls.requires for m in methods
    )
    init_epochs = args.ab_epochs if initializing else 0
    print(
        f"\n[students] conv_net(8, 16, 32), {args.epochs} epochs of "
        f"{student_steps} steps"
        + (
            f" (+{init_epochs} of {'/'.join(initializing).upper()} "
            "initialisation first)"
            if init_epochs
            else ""
        )
        + "; same initial weights and data order for alone and distilled",
        flush=True,
    )
    alone_scores, distilled_scores = [], []
    alone = student = None
    for seed in seeds:
        keras.utils.set_random_seed(seed)
        alone = compile_fit(
            conv_net(
                shape,
                classes,
                (8, 16, 32),
                mean=mean,
                std=std,
                name="student_alone",
            ),
            train_ds(x_student, y_student, seed),
            args.epochs,
            student_steps,
        )
        keras.utils.set_random_seed(seed)  # the same initial student
        student = conv_net(
            shape, classes, (8, 16, 32), mean=mean, std=std, name="student"
        )
        losses = _losses(methods, 3, facts)
        distiller = Distiller(teacher, student, losses)
        # The optimizer restarts after an initialisation stage (as in
        # RepDistiller), so the cosine spans the ordinary epochs.
        schedule = kd_callbacks.for_losses(losses, init_epochs)
        compile_fit(
            distiller,
            train_ds(x_student, y_student, seed, example_ids=needs_ids),
            init_epochs + args.epochs,
            student_steps,
            schedule,
            decay_epochs=args.epochs,
        )
        alone_scores.append(accuracy(alone))
        distilled_scores.append(accuracy(student))
        print(
            f"  seed {seed}: alone {alone_scores[-1]:.4f}   distilled "
            f"{distilled_scores[-1]:.4f}   "
            f"({distilled_scores[-1] - alone_scores[-1]:+.4f})",
            flush=True,
        )

    gains = [d - a for d, a in zip(distilled_scores, alone_scores)]
    alone_mean, alone_std = _mean_std(alone_scores)
    distilled_mean, distilled_std = _mean_std(distilled_scores)
    gain_mean, gain_std = _mean_std(gains)
    results = {
        "teacher": teacher_accuracy,
        "student_alone": alone_mean,
        "student_alone_std": alone_std,
        "student_distilled": distilled_mean,
        "student_distilled_std": distilled_std,
        "gain": gain_mean,
        "gain_std": gain_std,
        "seeds": seeds,
        "alone_by_seed": alone_scores,
        "distilled_by_seed": distilled_scores,
        "teacher_params": teacher.count_params(),
        "student_params": student.count_params(),
        "seconds": time.time() - started,
    }
    n = len(seeds)
    spread = f" ± {alone_std:.4f}" if n > 1 else ""
    if n > 1:
        noise = max(gain_std, alone_std)
        verdict = (
            "a gain beyond the noise"
            if gain_mean > noise
            else "a loss beyond the noise"
            if gain_mean < -noise
            else "no difference beyond the noise"
        )
        noise_line = (
            f"  gain               {gain_mean:+.4f} ± {gain_std:.4f} (paired "
            "by "
            f"seed; {sum(g > 0 for g in gains)} of {n} seeds improved):\n"
            f"                     {verdict} (the larger of the gain's and "
            f"the student alone's std, {noise:.4f})\n"
        )
    else:
        noise_line = (
            "  one seed: no estimate of the noise; run with --seeds 3 or "
            "more to compare\n"
        )
    smoke = (
        "  --quick is a smoke test of the pipeline (1 epoch, 1 seed, at most "
        "1,000 training\n  images): its accuracies say nothing about the "
        "methods.\n"
        if args.quick
        else ""
    )
    print(
        "\nTest accuracy "
        f"({'mean ± std over ' + str(n) + ' seeds' if n > 1 else 'one seed'})\n"
        f"  teacher            {teacher_accuracy:.4f}           "
        f"({results['teacher_params']:,} parameters)\n"
        f"  student alone      {alone_mean:.4f}{spread}  "
        f"({results['student_params']:,} parameters)\n"
        f"  student distilled  {distilled_mean:.4f}"
        f"{f' ± {distilled_std:.4f}' if n > 1 else ''}  ({'+'.join(methods)})\n"
        f"{noise_line}{smoke}"
        f"  wall time {results['seconds']:.0f} s",
        flush=True,
    )
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        for label, model in (
            ("teacher", teacher),
            ("student_alone", alone),
            ("student_distilled", student),
        ):
            model.save(os.path.join(args.output, f"{label}.keras"))
        print(f"  saved models to {args.output} (the last seed's students)")
    return results


def keras_file_problem(path):
    """What is wrong with the `.keras` file at `path`, or `None` if it reads.

    Keras reports a truncated or corrupt `.keras` file as "File not found"
    (or a `BadZipFile` traceback), and may even load one whose weights are
    damaged. This checks what Keras does not: the file is a complete zip
    archive, holds `config.json`, and every member passes its CRC check.

    Args:
        path: path of a `.keras` file.

    Returns:
        A sentence saying what is wrong, or `None`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return "it is a directory, not a .keras file"
    if not os.path.isfile(path):
        return "no such file"
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        head = file.read(4)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                return (
                    f"it is a zip archive without config.json (members: "
                    f"{names[:5]}), not a model saved by Keras"
                )
            bad = archive.testzip()
            if bad is not None:
                return (
                    f"it is corrupt: member {bad!r} fails its CRC check "
                    f"({size:,} bytes)"
                )
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        ValueError,
        RuntimeError,
    ) as error:
        if head != b"PK\x03\x04":
            return (
                f"it is not a zip archive, which a .keras file is (it "
                f"starts with {head!r}; {size:,} bytes)"
            )
        return (
            f"it is truncated or corrupt: it starts like a zip archive "
            f"but cannot be read ({type(error).__name__}: {error}; "
            f"{size:,} bytes)"
        )
    except Exception as error:  # zlib.error and the like from damaged data
        return (
            f"it is corrupt ({type(error).__name__}: {error}; {size:,} bytes)"
        )
    return None


def _export_model_argument(argv):
    """The MODEL argument of `keras-kd export` argv, or `None`."""
    skip = False
    for token in argv:
        if skip:
            skip = False
        elif token == "--":
            continue
        elif token.startswith("-"):
            skip = token in _EXPORT_VALUE_OPTIONS
        else:
            return token
    return None


def main(argv=None):
    """Entry point of the `keras-kd` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "export":
        model = _export_model_argument(argv[1:])
        if model is not None and model.lower().endswith(".keras"):
            problem = keras_file_problem(model)
            if problem is not None:
                print(
                    f"keras-kd export: error: cannot read {model!r}: "
                    f"{problem}. "
                    "Expected a .keras file written by `model.save(...)` or "
                    "`keras-kd --output DIR`; save it again (or copy it again "
                    "if the copy was cut short).",
                    file=sys.stderr,
                )
                return 1
        from keras_kd.export import export_command

        return export_command(argv[1:])
    if argv and argv[0] == "distill":
        argv = argv[1:]
    distill(argv)
    return 0
