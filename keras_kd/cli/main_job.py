"""The main job: a teacher, the student alone and the student distilled.

`distill(argv)` parses the options, turns on deterministic ops and runs the
stages in order, each printing its part: `_data` (load, subsets, the
pipelines), `_teacher`, `_students` (alone and distilled, per seed) and
then `keras_kd.cli.summary` (the test accuracies, mean ± std over seeds
and the paired gain; the models of `--output`). TensorFlow is imported
only when the job runs, so `--help` and the message that it is missing
work without it.
"""

import dataclasses
import os
import time

from keras_kd.cli import summary
from keras_kd.cli.options import build_parser


@dataclasses.dataclass
class _Job:
    """What the stages share: the options, the data and how models train."""

    args: object  # the parsed options
    methods: list
    seeds: list
    x_train: object  # the teacher's training images
    y_train: object
    x_student: object  # the students' class-balanced part of them
    y_student: object
    classes: int
    train_ds: object  # train_ds(x, y, seed, example_ids=False)
    test_ds: object
    mean: object  # per-channel statistics of x_train, for Normalization
    std: object
    loss: object  # sparse categorical cross-entropy on logits

    @property
    def shape(self):
        return self.x_train.shape[1:]

    def steps(self, x):
        """Steps of one epoch over the images `x`."""
        return -(-len(x) // self.args.batch_size)


def _losses(methods, stages, facts):
    """The methods' losses, with their default layers in keras_kd's models:
    the recipe builder's wiring (a recipe's `methods:` of these names)."""
    from keras_kd.recipes import build

    recipe = {"methods": [{"name": method} for method in methods]}
    return build.losses(recipe, stages, facts)


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


def distill(argv=None):
    """Runs the main job; returns the results dict (also printed)."""
    from keras_kd.losses import registry

    args = build_parser().parse_args(argv)
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

    started = time.time()
    keras.utils.set_random_seed(args.seed)
    job = _data(args, methods)
    teacher, teacher_accuracy = _teacher(job)
    alone, student, alone_scores, distilled_scores = _students(job, teacher)
    results = summary.results(
        job.seeds,
        teacher,
        student,
        teacher_accuracy,
        alone_scores,
        distilled_scores,
        started,
    )
    summary.report(results, methods, quick=args.quick)
    if args.output:
        summary.save(args.output, teacher, alone, student)
    return results


def _data(args, methods):
    """Loads the data and its subsets, prints them, builds the pipelines."""
    import keras

    from keras_kd import data

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
    return _Job(
        args=args,
        methods=methods,
        seeds=seeds,
        x_train=x_train,
        y_train=y_train,
        x_student=x_student,
        y_student=y_student,
        classes=classes,
        train_ds=train_ds,
        test_ds=test_ds,
        mean=mean,
        std=std,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )


def _fit(job, model, dataset, epochs, steps, callbacks=(), decay_epochs=None):
    """Compiles `model` with SGD under a cosine decay and fits it."""
    import keras

    # Cosine decay to zero: the final weights, not a noisy point, are
    # what each model is judged by.
    learning_rate = keras.optimizers.schedules.CosineDecay(
        job.args.learning_rate,
        decay_steps=max(1, (decay_epochs or epochs) * steps),
    )
    optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    model.compile(optimizer=optimizer, loss=job.loss)
    model.fit(
        dataset,
        epochs=epochs,
        verbose=0,
        shuffle=False,
        callbacks=list(callbacks),
    )
    return model


def _accuracy(job, model):
    model.compile(loss=job.loss, metrics=["accuracy"])
    return float(
        model.evaluate(job.test_ds, verbose=0, return_dict=True)["accuracy"]
    )


def _conv_net(job, widths, name):
    from keras_kd.models import conv_net

    return conv_net(
        job.shape, job.classes, widths, mean=job.mean, std=job.std, name=name
    )


def _teacher(job):
    """Trains and evaluates the teacher; returns it and its accuracy."""
    import keras

    args = job.args
    print(
        f"\n[teacher] conv_net(32, 64, 128), {args.teacher_epochs} epochs of "
        f"{job.steps(job.x_train)} steps",
        flush=True,
    )
    keras.utils.set_random_seed(args.seed)
    teacher = _fit(
        job,
        _conv_net(job, (32, 64, 128), "teacher"),
        job.train_ds(job.x_train, job.y_train, args.seed),
        args.teacher_epochs,
        job.steps(job.x_train),
    )
    accuracy = _accuracy(job, teacher)
    print(f"  test accuracy {accuracy:.4f}", flush=True)
    return teacher, accuracy


def _students(job, teacher):
    """Trains the student alone and distilled for each seed.

    Returns `(alone, student, alone_scores, distilled_scores)`: the last
    seed's two students and the test accuracies of every seed.
    """
    import keras

    from keras_kd import callbacks as kd_callbacks
    from keras_kd.distiller import Distiller
    from keras_kd.losses import registry
    from keras_kd.losses import requirements

    args, methods = job.args, job.methods
    steps = job.steps(job.x_student)
    facts = {"num_examples": len(job.x_student)}
    initializing = [
        m for m in methods if registry.lookup(m).cls.initialization_stage
    ]
    needs_ids = "example_ids" in requirements(
        registry.lookup(m).cls for m in methods
    )
    init_epochs = args.ab_epochs if initializing else 0
    print(
        f"\n[students] conv_net(8, 16, 32), {args.epochs} epochs of "
        f"{steps} steps"
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
    for seed in job.seeds:
        keras.utils.set_random_seed(seed)
        alone = _fit(
            job,
            _conv_net(job, (8, 16, 32), "student_alone"),
            job.train_ds(job.x_student, job.y_student, seed),
            args.epochs,
            steps,
        )
        keras.utils.set_random_seed(seed)  # the same initial student
        student = _conv_net(job, (8, 16, 32), "student")
        losses = _losses(methods, 3, facts)
        distiller = Distiller(teacher, student, losses)
        # The optimizer restarts after an initialisation stage (as in
        # RepDistiller), so the cosine spans the ordinary epochs.
        schedule = kd_callbacks.for_losses(losses, init_epochs)
        _fit(
            job,
            distiller,
            job.train_ds(
                job.x_student, job.y_student, seed, example_ids=needs_ids
            ),
            init_epochs + args.epochs,
            steps,
            schedule,
            decay_epochs=args.epochs,
        )
        alone_scores.append(_accuracy(job, alone))
        distilled_scores.append(_accuracy(job, student))
        print(
            f"  seed {seed}: alone {alone_scores[-1]:.4f}   distilled "
            f"{distilled_scores[-1]:.4f}   "
            f"({distilled_scores[-1] - alone_scores[-1]:+.4f})",
            flush=True,
        )
    return alone, student, alone_scores, distilled_scores
