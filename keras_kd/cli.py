"""The `keras-kd` command (also `python -m keras_kd`).

`keras-kd` (or `keras-kd distill`) distils a small teacher into a smaller
student on real data and prints what each achieved: the teacher, the
student trained alone, and the distilled student, all on the test split.
With no `--data` it uses the Fashion-MNIST subset bundled with keras_kd
(6,000 train / 1,000 test images), so it runs offline.

`keras-kd export ...` writes a distilled student to SavedModel or TFLite
(see `keras-kd export --help`).
"""

import argparse
import os
import sys
import time

METHODS = ("kd", "ab", "nst", "hint", "at")


def _parser():
    parser = argparse.ArgumentParser(
        prog="keras-kd distill",
        description=(
            "Distil a small teacher CNN into a smaller student and compare "
            "teacher, student alone and distilled student on the test split."
        ),
    )
    parser.add_argument(
        "--data", default=None,
        help="a .npz archive (x_train, y_train, x_test, y_test) or a "
        "TensorFlow Datasets name such as cifar10. Default: the Fashion-MNIST "
        "subset bundled with keras_kd (offline).",
    )
    parser.add_argument("--data-dir", default=None,
                        help="tfds data directory (for a tfds name).")
    parser.add_argument(
        "--methods", default="kd,nst",
        help=f"comma-separated distillation methods from {METHODS}. 'ab' "
        "runs the two-stage activation-boundary schedule (AB initialisation "
        "first, then the other losses). Default: kd,nst.",
    )
    parser.add_argument("--epochs", type=int, default=6,
                        help="student epochs (alone and distilled). Default 6.")
    parser.add_argument("--teacher-epochs", type=int, default=6,
                        help="teacher epochs. Default 6.")
    parser.add_argument("--ab-epochs", type=int, default=1,
                        help="AB initialisation epochs, run before the "
                        "--epochs of ordinary training (as RepDistiller runs "
                        "30 before its 240). Default 1.")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=0.05,
                        help="peak learning rate of SGD (Nesterov momentum "
                        "0.9, cosine decay), the optimiser of the reference "
                        "code. Default 0.05.")
    parser.add_argument("--train-fraction", type=float, default=1.0,
                        help="use this fraction of the training images "
                        "(class-balanced). Default 1.0.")
    parser.add_argument("--augment", choices=("none", "flip", "crop_flip"),
                        default="none")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None,
                        help="directory to save teacher, student and "
                        "distilled student as .keras files.")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1 epoch each (plus 1 of AB "
                        "initialisation) on 1,000 images.")
    return parser


def _losses(methods, teacher, student, stages):
    from keras_kd import losses

    deepest = f"stage{stages}_relu"
    taps = [f"stage{i}_relu" for i in range(1, stages + 1)]
    chosen = []
    for method in methods:
        if method == "kd":
            chosen.append(losses.LogitsDistillation(temperature=4.0))
        elif method == "ab":
            chosen.append(losses.ActivationBoundary(taps, taps))
        elif method == "nst":
            chosen.append(losses.NeuronSelectivityTransfer(
                deepest, deepest, teacher_tap="preactivation",
                student_tap="preactivation"))
        elif method == "hint":
            chosen.append(losses.FitNetsHint(f"stage{stages - 1}_relu",
                                             f"stage{stages - 1}_relu"))
        elif method == "at":
            chosen.append(losses.AttentionTransfer(taps, taps))
    return chosen


def distill(argv=None):
    """Runs the main job; returns the results dict (also printed)."""
    args = _parser().parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise SystemExit(
            f"keras-kd: unknown method(s) {unknown or methods}; choose from "
            f"{METHODS}, e.g. --methods kd,ab,nst"
        )
    if args.quick:
        args.epochs = args.teacher_epochs = 1
        args.ab_epochs = min(args.ab_epochs, 1)
        args.train_fraction = min(args.train_fraction, 1000 / 6000)
    if args.ab_epochs < 0:
        raise SystemExit(
            f"keras-kd: --ab-epochs {args.ab_epochs} must be >= 0."
        )
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras

    from keras_kd import callbacks as kd_callbacks
    from keras_kd import data
    from keras_kd.distiller import Distiller
    from keras_kd.models import conv_net

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    arrays = data.load_arrays(args.data, data_dir=args.data_dir)
    x_train, y_train = data.balanced_subset(
        arrays["x_train"], arrays["y_train"], args.train_fraction,
        seed=args.seed)
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    classes = len(arrays["class_names"])
    name = args.data or "bundled Fashion-MNIST subset"
    print(
        f"keras-kd: {name}: {len(x_train)} train / {len(x_test)} test images "
        f"of {x_train.shape[1:]}, {classes} classes; methods "
        f"{'+'.join(methods)}",
        flush=True,
    )
    mean, std = data.channel_stats(x_train)
    augment = None if args.augment == "none" else args.augment

    def train_ds(seed):
        return data.make_dataset(
            x_train, y_train, batch_size=args.batch_size, training=True,
            augment=augment, mean=mean, std=std, seed=seed)

    test_ds = data.make_dataset(x_test, y_test, batch_size=256, mean=mean,
                                std=std)
    shape = x_train.shape[1:]
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    steps = -(-len(x_train) // args.batch_size)

    def compile_fit(model, epochs, seed, callbacks=()):
        # Cosine decay to zero: the final weights, not a noisy point, are
        # what each model is judged by.
        learning_rate = keras.optimizers.schedules.CosineDecay(
            args.learning_rate, decay_steps=max(1, epochs * steps))
        optimizer = keras.optimizers.SGD(
            learning_rate, momentum=0.9, nesterov=True)
        model.compile(optimizer=optimizer, loss=ce, metrics=["accuracy"])
        model.fit(train_ds(seed), epochs=epochs, verbose=2, shuffle=False,
                  callbacks=list(callbacks))
        return model

    def accuracy(model):
        model.compile(loss=ce, metrics=["accuracy"])
        return float(model.evaluate(test_ds, verbose=0, return_dict=True)[
            "accuracy"])

    print("\n[1/3] teacher", flush=True)
    teacher = compile_fit(conv_net(shape, classes, (32, 64, 128),
                                   name="teacher"), args.teacher_epochs, 1)
    print("\n[2/3] student alone", flush=True)
    keras.utils.set_random_seed(args.seed + 1)
    alone = compile_fit(conv_net(shape, classes, (8, 16, 32),
                                 name="student_alone"), args.epochs, 2)
    print(f"\n[3/3] student distilled ({'+'.join(methods)})", flush=True)
    keras.utils.set_random_seed(args.seed + 1)  # same initial student
    student = conv_net(shape, classes, (8, 16, 32), name="student")
    distiller = Distiller(teacher, student,
                          _losses(methods, teacher, student, 3))
    schedule, init_epochs = [], 0
    if "ab" in methods:
        init_epochs = args.ab_epochs
        schedule.append(kd_callbacks.ActivationBoundarySchedule(init_epochs))
    compile_fit(distiller, init_epochs + args.epochs, 2, schedule)

    results = {
        "teacher": accuracy(teacher),
        "student_alone": accuracy(alone),
        "student_distilled": accuracy(distiller.student),
        "teacher_params": teacher.count_params(),
        "student_params": student.count_params(),
        "seconds": time.time() - started,
    }
    print(
        "\nTest accuracy\n"
        f"  teacher            {results['teacher']:.4f}  "
        f"({results['teacher_params']:,} parameters)\n"
        f"  student alone      {results['student_alone']:.4f}  "
        f"({results['student_params']:,} parameters)\n"
        f"  student distilled  {results['student_distilled']:.4f}  "
        f"({'+'.join(methods)}; {results['student_distilled'] - results['student_alone']:+.4f} "
        "vs alone)\n"
        f"  wall time {results['seconds']:.0f} s",
        flush=True,
    )
    if args.output:
        os.makedirs(args.output, exist_ok=True)
        for label, model in (("teacher", teacher), ("student_alone", alone),
                             ("student_distilled", distiller.student)):
            model.save(os.path.join(args.output, f"{label}.keras"))
        print(f"  saved models to {args.output}")
    return results


def main(argv=None):
    """Entry point of the `keras-kd` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "export":
        from keras_kd.export import export_command

        return export_command(argv[1:])
    if argv and argv[0] == "distill":
        argv = argv[1:]
    distill(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
