"""Procedures that change what the student trains on, in a recipe.

- `data_free`: the student never sees the data set's training images. The
  teacher (from its file, or trained by the recipe) is inverted once per run
  into a pool of `images` synthesised images (`keras_kd.procedures.
  synthesize`; the other `procedure.arguments` are its arguments: iterations,
  learning rate, prior weights ...), saved as `synthesized.npz` in the run's
  folder and read back by a resumed run and by every seed; the student is
  distilled on the pool with the recipe's methods, and scored on the data
  set's test images.
- `domain_adaptation`: `data.source` is the labelled source domain,
  `data.target` the target domain (its training labels are never read; its
  test split scores the student). A copy of the teacher per seed is adapted
  to the target while the student is distilled on both domains
  (`keras_kd.procedures.DomainAdaptiveDistiller`, whose arguments are
  `procedure.arguments`; it has its own KD loss, so `methods` stays the
  default `[kd]`).
"""

import inspect

from keras_kd.recipes.schema import RecipeError

NAMES = ("data_free", "domain_adaptation")
POOL_FILE = "synthesized.npz"
DEFAULT_IMAGES = 512


def _allowed(*functions):
    names = []
    for function in functions:
        names += [
            n
            for n, p in inspect.signature(function).parameters.items()
            if p.kind is p.KEYWORD_ONLY
            and n not in ("student", "verbose", "labels", "seed", "teacher")
        ]
    return names


def check(recipe):
    """Cross-key checks of a recipe naming one of `NAMES`."""
    from keras_kd.recipes import build

    name = recipe["procedure"]["name"]
    arguments = recipe["procedure"]["arguments"]
    if recipe["data"]["target"] is not None and name != "domain_adaptation":
        raise RecipeError(
            "data.target: only `procedure: {name: domain_adaptation}` reads a "
            f"target domain; this recipe's procedure is {name!r}. Remove "
            "data.target or set procedure.name: domain_adaptation."
        )
    if name not in NAMES:
        return
    if recipe["experiment"] != "distill":
        raise RecipeError(
            f"procedure.name: {name} runs as `experiment: distill`; received "
            f"experiment: {recipe['experiment']}."
        )
    if name == "data_free":
        from keras_kd.procedures import inversion
        from keras_kd.procedures import synthesis

        allowed = ["images"] + _allowed(
            synthesis.synthesize, inversion.TeacherInversion.__init__
        )
        build.refuse_unknown(arguments, allowed, "procedure.arguments")
        images = arguments.get("images", DEFAULT_IMAGES)
        if type(images) is not int or images < 1:
            raise RecipeError(
                "procedure.arguments.images: the size of the synthesised "
                f"pool, a positive integer; received {images!r}."
            )
        return
    if recipe["data"]["target"] is None:
        raise RecipeError(
            "data.target: missing; procedure domain_adaptation reads the "
            "target domain's images from it (the forms of data.source), e.g. "
            "target: bundled:fashion_mnist_on_cifar10."
        )
    if recipe["methods"] != [{"name": "kd"}]:
        raise RecipeError(
            "methods: procedure domain_adaptation distils with its own KD "
            "loss (temperature, alpha in procedure.arguments); leave methods "
            f"out or write [{{name: kd}}]; received {recipe['methods']}."
        )
    if recipe["data"]["augment"] != "none":
        raise RecipeError(
            f"data.augment: received {recipe['data']['augment']!r}; procedure "
            "domain_adaptation pairs source and target images as they are; "
            "set augment: none."
        )
    if recipe["training"]["student_loss_weight"] != 1.0:
        raise RecipeError(
            "training.student_loss_weight: procedure domain_adaptation "
            "weighs its terms with alpha and its beta schedule "
            "(procedure.arguments); remove the key."
        )
    if recipe["training"]["function_matching"] is not None:
        raise RecipeError(
            "training.function_matching: procedure domain_adaptation trains "
            "on source and target batches as they are; remove the key."
        )
    from keras_kd.procedures import DomainAdaptiveDistiller

    build.refuse_unknown(
        arguments,
        _allowed(DomainAdaptiveDistiller.__init__),
        "procedure.arguments",
    )


def check_target(recipe, base, input_shape):
    """The target domain loads and has the source's input shape."""
    from keras_kd.recipes import build

    arrays = build.load_arrays(recipe, base, key="target")
    if tuple(arrays["x_train"].shape[1:]) != tuple(input_shape):
        raise RecipeError(
            f"data.target: its images have shape "
            f"{tuple(arrays['x_train'].shape[1:])}, data.source's "
            f"{tuple(input_shape)}; the two domains must share one input "
            "shape."
        )


def synthesis_arguments(recipe):
    """`(pool size, synthesize's keyword arguments)` of a data_free recipe."""
    arguments = dict(recipe["procedure"]["arguments"])
    return arguments.pop("images", DEFAULT_IMAGES), arguments


def pool(recipe, teacher, seed, path=None, verbose=True):
    """The synthesised pool: read from `path` when it exists, else
    synthesised (seeded by `seed`) and written there atomically."""
    import os

    from keras_kd.procedures import SynthesizedImages
    from keras_kd.procedures import synthesize

    if path is not None and os.path.isfile(path):
        if verbose:
            print(f"[data-free] pool read back from {path}", flush=True)
        return SynthesizedImages.load(path)
    images, arguments = synthesis_arguments(recipe)
    if verbose:
        print(f"[data-free] synthesising {images} images", flush=True)
    try:
        made = synthesize(
            teacher, images, seed=seed, verbose=int(verbose), **arguments
        )
    except (TypeError, ValueError) as error:
        raise RecipeError(f"procedure.arguments: {error}") from None
    if path is not None:
        made.save(path)
        if verbose:
            print(
                f"[data-free] {len(made)} images, teacher agreement "
                f"{made.teacher_agreement:.3f} -> {path}",
                flush=True,
            )
    return made


def check_step(recipe, teacher, student, input_shape, classes):
    """One cheap pass of the procedure on stand-in data: one synthesis
    iteration of two images, or one domain-adaptation step."""
    import numpy as np

    name = recipe["procedure"]["name"]
    if name == "data_free":
        from keras_kd.procedures import synthesize

        _, arguments = synthesis_arguments(recipe)
        arguments.update(iterations=1, batch_size=2)
        try:
            synthesize(teacher, 2, seed=0, verbose=0, **arguments)
        except (TypeError, ValueError) as error:
            raise RecipeError(f"procedure.arguments: {error}") from None
        return
    distiller = domain_distiller(recipe, teacher, student)
    distiller.compile(optimizer="adam", run_eagerly=True)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (4, *input_shape)).astype("float32")
    try:
        distiller.train_on_batch(
            {"source": x, "target": x[::-1]}, rng.integers(0, classes, 4)
        )
    except (ValueError, TypeError) as error:
        raise RecipeError(
            f"one domain-adaptation step on stand-in data failed: {error}"
        ) from None


def domain_distiller(recipe, teacher, student):
    """A `DomainAdaptiveDistiller` adapting a copy of `teacher` (the
    recipe's teacher stays as it is for the next seed)."""
    from keras_kd.procedures import DomainAdaptiveDistiller
    from keras_kd.procedures import trainable_copy

    try:
        return DomainAdaptiveDistiller(
            trainable_copy(teacher),
            student,
            **recipe["procedure"]["arguments"],
        )
    except (TypeError, ValueError) as error:
        raise RecipeError(f"procedure.arguments: {error}") from None


def domain_pipeline(source_x, source_y, target_x, batch, seed):
    """Seeded `tf.data` batches of `({"source", "target"}, source labels)`
    (raw pixels; the models normalise)."""
    import tensorflow as tf

    from keras_kd.procedures import paired_domains

    inputs, labels = paired_domains(source_x, source_y, target_x, seed=seed)
    inputs = {k: v.astype("float32") for k, v in inputs.items()}
    data = tf.data.Dataset.from_tensor_slices((inputs, labels))
    data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return data.batch(batch).prefetch(tf.data.AUTOTUNE)
