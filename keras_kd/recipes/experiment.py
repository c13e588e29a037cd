"""Reading a recipe, checking it whole, and building its experiment.

`read(path, overrides)` parses the YAML and applies `--set` overrides;
`resolve` validates it against the schema; `check` builds every object once
(data shapes, models, methods with their layers, procedure, optimiser) so
that a wrong argument, file or layer fails before anything trains or is
written; `load` returns the experiment ready for `fit`.
"""

import dataclasses
import os
import pathlib

from keras_kd.recipes import build
from keras_kd.recipes import whole_run
from keras_kd.recipes.schema import RecipeError
from keras_kd.recipes.schema import validate

BUNDLED = pathlib.Path(__file__).resolve().parent / "bundled"


def bundled(name):
    """The path of a recipe shipped with keras_kd (`"main_job"`,
    `"paper/cifar100_resnet56_resnet20_kd"`, ...)."""
    path = BUNDLED / f"{name}.yaml"
    if not path.is_file():
        names = sorted(
            p.relative_to(BUNDLED).with_suffix("").as_posix()
            for p in BUNDLED.rglob("*.yaml")
        )
        raise RecipeError(
            f"No bundled recipe {name!r}; bundled recipes: {names}."
        )
    return path


def _parse_value(text):
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(raw, overrides):
    """`raw` with each `"a.b.c=value"` set (list items by index:
    `methods.0.weight=2`); the value is read as YAML (`5`, `[0, 1]`)."""
    for override in overrides or ():
        key, sep, text = override.partition("=")
        if not sep or not key:
            raise RecipeError(
                f"--set {override!r}: expected KEY=VALUE, e.g. "
                "--set training.epochs=5"
            )
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    raise RecipeError(
                        f"--set {key}: {'.'.join(parts[:i]) or 'the recipe'} "
                        f"is a list of {len(node)}; use an index 0 to "
                        f"{len(node) - 1}."
                    )
                part = int(part)
            elif not isinstance(node, dict):
                raise RecipeError(
                    f"--set {key}: {'.'.join(parts[:i])} is not a mapping."
                )
            if last:
                node[part] = _parse_value(text)
            else:
                if isinstance(node, dict) and part not in node:
                    node[part] = {}
                node = node[part]
    return raw


def read(path, overrides=()):
    """`(raw recipe dict, folder of the recipe)` of a YAML file."""
    import yaml

    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise RecipeError(f"No recipe file {str(path)!r}.")
    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except yaml.YAMLError as error:
        raise RecipeError(f"{path.name}: not valid YAML: {error}") from None
    if raw is None:
        raise RecipeError(f"{path.name}: the recipe is empty.")
    if isinstance(raw, dict):
        raw = apply_overrides(raw, overrides)
    return raw, path.resolve().parent


def resolve(path, overrides=()):
    """`(validated recipe with defaults, folder)`; `RecipeError` if the
    schema refuses it."""
    raw, base = read(path, overrides)
    recipe = validate(raw, pathlib.Path(path).name)
    if recipe["name"] is None:
        recipe["name"] = pathlib.Path(path).stem
    return recipe, base


@dataclasses.dataclass
class Experiment:
    """What `load` returns: the distiller ready to `fit` on `train`."""

    recipe: dict
    distiller: object
    teacher: object
    student: object
    train: object
    test: object
    callbacks: list
    epochs: int
    seed: int
    steps_per_epoch: object = None
    images: object = None  # plain image batches (export calibration)


def _networks(recipe, base, input_shape, classes, mean, std):
    teacher = build.model(
        recipe["teacher"], "teacher", input_shape, classes, mean, std, base
    )
    student = build.model(
        recipe["student"], "student", input_shape, classes, mean, std, base
    )
    return teacher, student


def _stages(recipe):
    return len(recipe["student"]["widths"])


def _distiller(recipe, teacher, student, num_examples, seed=0):
    from keras_kd.distiller import Distiller

    losses = build.losses(
        recipe, _stages(recipe), {"num_examples": num_examples}
    )
    matching = build.function_matching(recipe, seed)
    try:
        return Distiller(
            teacher,
            student,
            losses,
            student_loss_weight=recipe["training"]["student_loss_weight"],
            procedures=build.procedures(recipe),
            function_matching=matching,
        )
    except (ValueError, TypeError) as error:
        raise RecipeError(f"methods: {error}") from None


def check(path, overrides=(), step=True):
    """Checks a recipe whole without running it: the schema, the files,
    the models, each method's arguments and layers, the procedure, and
    (with `step`) one training step on stand-in data of the data's shapes.
    Returns the validated recipe; raises `RecipeError`."""
    recipe, base = resolve(path, overrides)
    check_resolved(recipe, base, step)
    return recipe


def check_resolved(recipe, base, step=True):
    """`check` of a recipe `resolve` has read (`base`: its folder)."""
    import keras
    import numpy as np

    if recipe["experiment"] == "compare":
        from keras_kd.recipes.compare import check_compare

        check_compare(recipe)
    whole_run.check(recipe)
    input_shape, classes = build.shapes(recipe, base)
    if recipe["data"]["target"] is not None:
        whole_run.check_target(recipe, base, input_shape)
    channels = input_shape[-1]
    mean, std = [0.5] * channels, [0.25] * channels
    teacher, student = _networks(recipe, base, input_shape, classes, mean, std)
    procedure = recipe["procedure"]["name"]
    if procedure == "domain_adaptation":
        if step:
            whole_run.check_step(recipe, teacher, student, input_shape, classes)
        return
    distiller = _distiller(recipe, teacher, student, num_examples=64)
    if procedure == "data_free":
        if _needs_example_ids(distiller):
            raise RecipeError(
                "methods: a method of this recipe reads example ids, and a "
                "synthesised pool has none; procedure data_free distils with "
                "methods that read the images only."
            )
        if step:
            whole_run.check_step(recipe, teacher, student, input_shape, classes)
    optimizer = build.optimizer(
        recipe["training"]["optimizer"], recipe["training"]["schedule"], 1, 1
    )
    distiller.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        run_eagerly=True,  # one step: tracing would cost more than it
    )
    if step:
        rng = np.random.default_rng(0)
        batch = min(8, recipe["data"]["batch_size"])
        x = rng.uniform(0, 255, (batch, *input_shape)).astype("float32")
        y = rng.integers(0, classes, batch)
        if procedure == "data_free":
            y = None  # a synthesised pool has no labels
        inputs = x
        if _needs_example_ids(distiller):
            inputs = {"image": x, "example_id": np.arange(batch)}
        try:
            distiller.train_on_batch(inputs, y)
        except (ValueError, TypeError) as error:
            raise RecipeError(
                f"one step on stand-in data of shape {tuple(x.shape)} "
                f"failed: {error}"
            ) from None


def _needs_example_ids(distiller):
    from keras_kd.losses import requirements

    return "example_ids" in requirements(distiller.distillation_losses)


def load(path, seed=None, overrides=(), verbose=True):
    """The experiment of a `distill` recipe, ready for `fit`.

    Loads the data, builds (and trains, if the recipe builds it) the
    teacher, builds the student, the methods and the procedure, and
    compiles the Distiller with the recipe's optimiser and schedule.

    Returns:
        An `Experiment`: `experiment.distiller.fit(experiment.train,
        epochs=experiment.epochs, callbacks=experiment.callbacks,
        steps_per_epoch=experiment.steps_per_epoch,
        validation_data=experiment.test)` is the recipe's training.
    """
    recipe, base = resolve(path, overrides)
    if recipe["experiment"] != "distill":
        raise RecipeError(
            "load() builds `experiment: distill` recipes; run a `compare` "
            "recipe with keras_kd.recipes.run or `keras-kd run`."
        )
    seed = recipe["seeds"][0] if seed is None else seed
    return _build(recipe, base, seed, teacher=None, verbose=verbose)


def teacher_for(recipe, base, seed, arrays, verbose=True):
    """The recipe's teacher: loaded from its file, or built and trained on
    the whole training set (`teacher.epochs`, its optimiser and schedule)."""
    import keras

    from keras_kd import data

    x, y = arrays["x_train"], arrays["y_train"]
    mean, std = data.channel_stats(x)
    input_shape, classes = x.shape[1:], len(arrays["class_names"])
    teacher = build.model(
        recipe["teacher"], "teacher", input_shape, classes, mean, std, base
    )
    spec = recipe["teacher"]
    if spec["file"] or spec["epochs"] == 0:
        return teacher
    batch = spec["batch_size"] or recipe["data"]["batch_size"]
    steps = per_epoch(spec, len(x), batch)
    if verbose:
        print(
            f"[teacher] {spec['build']}{tuple(spec['widths'])}, "
            f"{spec['epochs']} epochs of {steps} steps",
            flush=True,
        )
    keras.utils.set_random_seed(seed)
    teacher.compile(
        optimizer=build.optimizer(
            spec["optimizer"], spec["schedule"], spec["epochs"], steps
        ),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    train = _train_pipeline(recipe, x, y, batch, seed)
    teacher.fit(
        train.repeat() if spec["steps"] else train,
        steps_per_epoch=steps if spec["steps"] else None,
        epochs=spec["epochs"],
        shuffle=False,
        verbose=2 if verbose else 0,
    )
    return teacher


def per_epoch(spec, examples, batch):
    """Steps per Keras epoch: `steps // epochs` for a step-based section,
    else one pass over the examples."""
    if spec["steps"]:
        return max(1, spec["steps"] // max(1, spec["epochs"]))
    return -(-examples // batch)


def _train_pipeline(recipe, x, y, batch, seed, example_ids=False):
    """The seeded training pipeline of raw pixels (the models normalise)."""
    from keras_kd import data

    augment = recipe["data"]["augment"]
    return data.make_dataset(
        x,
        y,
        batch_size=batch,
        training=True,
        augment=None if augment == "none" else augment,
        rescale=False,
        seed=seed,
        example_ids=example_ids,
    )


def student_data(recipe, arrays, seed):
    from keras_kd import data

    x, y = data.balanced_subset(
        arrays["x_train"],
        arrays["y_train"],
        recipe["data"]["train_fraction"],
        seed=recipe["seeds"][0],
    )
    return data.balanced_subset(
        x, y, recipe["data"]["student_fraction"], seed=recipe["seeds"][0]
    )


def _build(
    recipe,
    base,
    seed,
    teacher=None,
    arrays=None,
    verbose=True,
    pool_path=None,
    target=None,
):
    import keras

    from keras_kd import callbacks as kd_callbacks
    from keras_kd import data

    arrays = arrays or build.load_arrays(recipe, base)
    if teacher is None:
        teacher = teacher_for(recipe, base, seed, arrays, verbose)
    procedure = recipe["procedure"]["name"]
    x, y = student_data(recipe, arrays, seed)
    student = _seeded_student(recipe, base, arrays, seed)
    if procedure == "domain_adaptation":
        return _build_domain(recipe, base, seed, teacher, x, y, student, target)
    batch = recipe["data"]["batch_size"]
    if procedure == "data_free":
        # The student sees synthesised images only (shuffled per seed).
        pool = whole_run.pool(
            recipe, teacher, recipe["seeds"][0], pool_path, verbose
        )
        x = pool.images
        distiller = _distiller(recipe, teacher, student, len(x), seed)
        train = pool.dataset(batch, seed=seed)
    else:
        distiller = _distiller(recipe, teacher, student, len(x), seed)
        train = _train_pipeline(
            recipe,
            x,
            y,
            batch,
            seed,
            example_ids=_needs_example_ids(distiller),
        )
    test = data.make_dataset(
        arrays["x_test"], arrays["y_test"], batch_size=256, rescale=False
    )
    initializing = any(
        getattr(loss, "initialization_stage", False)
        for loss in distiller.distillation_losses
    )
    init_epochs = recipe["procedure"]["init_epochs"] if initializing else 0
    epochs = recipe["training"]["epochs"]
    steps = per_epoch(recipe["training"], len(x), batch)
    if recipe["training"]["steps"]:
        train = train.repeat()
    distiller.compile(
        optimizer=_training_optimizer(recipe, steps),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        # A synthesised pool has no labels to score training batches with;
        # the run scores the student on the test images at the end.
        metrics=[] if procedure == "data_free" else ["accuracy"],
    )
    callbacks = kd_callbacks.for_distiller(distiller, init_epochs)
    return Experiment(
        recipe=recipe,
        distiller=distiller,
        teacher=teacher,
        student=student,
        train=train,
        test=test,
        callbacks=callbacks,
        epochs=init_epochs + epochs,
        seed=seed,
        steps_per_epoch=steps if recipe["training"]["steps"] else None,
        images=train,
    )


def _seeded_student(recipe, base, arrays, seed):
    """The recipe's student, initialised from `seed`, normalising with the
    training images' statistics."""
    import keras

    from keras_kd import data

    mean, std = data.channel_stats(arrays["x_train"])
    keras.utils.set_random_seed(seed)
    return build.model(
        recipe["student"],
        "student",
        arrays["x_train"].shape[1:],
        len(arrays["class_names"]),
        mean,
        std,
        base,
    )


def _training_optimizer(recipe, steps):
    """The `training` section's optimiser, its schedule over `steps` per
    epoch."""
    return build.optimizer(
        recipe["training"]["optimizer"],
        recipe["training"]["schedule"],
        recipe["training"]["epochs"],
        steps,
    )


def _build_domain(recipe, base, seed, teacher, x, y, student, target=None):
    """The domain-adaptation experiment: `train` yields paired source and
    target batches, `test` the target's test split (`target`: the target's
    arrays when the caller has read them)."""
    from keras_kd import data

    target = target or build.load_arrays(recipe, base, key="target")
    distiller = whole_run.domain_distiller(recipe, teacher, student)
    batch = recipe["data"]["batch_size"]
    train = whole_run.domain_pipeline(x, y, target["x_train"], batch, seed)
    epochs = recipe["training"]["epochs"]
    steps = per_epoch(recipe["training"], len(x), batch)
    if recipe["training"]["steps"]:
        train = train.repeat()
    distiller.compile(
        optimizer=_training_optimizer(recipe, steps),
        metrics=["accuracy"],
    )
    test = data.make_dataset(
        target["x_test"], target["y_test"], batch_size=256, rescale=False
    )
    images = data.make_dataset(
        target["x_train"],
        target["y_train"],
        batch_size=batch,
        rescale=False,
    ).map(lambda images, labels: images)
    return Experiment(
        recipe=recipe,
        distiller=distiller,
        teacher=distiller.teacher,
        student=student,
        train=train,
        test=test,
        callbacks=[],
        epochs=epochs,
        seed=seed,
        steps_per_epoch=steps if recipe["training"]["steps"] else None,
        images=images,
    )


def default_directory(recipe):
    return recipe["outputs"]["directory"] or os.path.join(
        "runs", recipe["name"]
    )
