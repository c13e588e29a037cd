"""From a validated recipe to Keras objects: data, models, losses, optimisers,
procedures. Nothing here trains; `check` builds everything once on the
data's shapes so that a wrong argument or layer fails before a run starts.
"""

import hashlib
import inspect
import os
import pathlib

from keras_kd.recipes.schema import RecipeError

# Procedures a recipe may name: (module, class).
PROCEDURES = {
    "boundary_supporting_samples": "BoundarySupportingSamples",
    "route_constrained": "RouteConstrainedOptimization",
}
# Shapes of TensorFlow Datasets names a recipe can be checked against
# without the data (the paper recipes read CIFAR-100 on a GPU machine).
KNOWN_SHAPES = {
    "cifar10": ((32, 32, 3), 10),
    "cifar100": ((32, 32, 3), 100),
    "fashion_mnist": ((28, 28, 1), 10),
    "mnist": ((28, 28, 1), 10),
}


def data_source(recipe, base, key="source"):
    """What `keras_kd.data.load_arrays` reads for `data.<key>` (`source`,
    or a domain-adaptation recipe's `target`): `None` (bundled), a path, or
    a tfds name; `base` is the recipe's folder (relative paths)."""
    source = recipe["data"][key]
    if source == "bundled":
        return None
    if source.startswith("bundled:"):
        return source
    if source.endswith(".npz"):
        return existing_file(
            source,
            base,
            f"data.{key}",
            " Give an existing .npz archive, 'bundled', or a TensorFlow "
            "Datasets name.",
        )
    return source


def existing_file(name, base, where, hint=""):
    """`name` as a path (relative ones from the recipe's folder `base`), or
    a `RecipeError` at `where` if no such file exists."""
    path = pathlib.Path(name).expanduser()
    if not path.is_absolute():
        path = pathlib.Path(base) / path
    if not path.is_file():
        raise RecipeError(
            f"{where}: no file {str(path)!r} (a relative path is read from "
            f"the recipe's folder).{hint}"
        )
    return path


def load_arrays(recipe, base, key="source"):
    from keras_kd import data

    source = data_source(recipe, base, key)
    try:
        if isinstance(source, str) and source.startswith("bundled:"):
            return data.load_bundled(source.split(":", 1)[1])
        return data.load_arrays(
            source,
            data_dir=recipe["data"]["data_dir"],
            download=recipe["data"]["download"],
        )
    except (ValueError, TypeError, OSError, ImportError) as error:
        raise RecipeError(f"data.{key}: {error}") from error


def checksum(recipe, base, key="source"):
    """The identity of `data.<key>` for the run record: a file's SHA-256
    (a bundled data set made from two files: both), else the tfds name."""
    source = data_source(recipe, base, key)
    if source is None or isinstance(source, str):
        if source is None or source.startswith("bundled:"):
            import importlib.resources

            from keras_kd import data

            name = (source or "bundled:fashion_mnist").split(":", 1)[1]
            files = importlib.resources.files("keras_kd.datasets")
            if name in data.DERIVED_DATASETS:
                return {
                    "file": f"bundled:{name}",
                    "made_from": {
                        part: _sha256(files / data.BUNDLED_DATASETS[part])
                        for part in data.DERIVED_DATASETS[name]
                    },
                }
            path = files / data.BUNDLED_DATASETS[name]
            return {"file": f"bundled:{name}", "sha256": _sha256(path)}
        return {"tfds": source, "data_dir": recipe["data"]["data_dir"]}
    return {"file": os.path.basename(source), "sha256": _sha256(source)}


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shapes(recipe, base):
    """`(input_shape, classes)` without training: the data's, or the known
    shapes of a tfds name that is not prepared here."""
    source = data_source(recipe, base)
    if isinstance(source, str) and not source.startswith("bundled:"):
        name = source.split(":", 1)[0]
        if name in KNOWN_SHAPES:
            return KNOWN_SHAPES[name]
    arrays = load_arrays(recipe, base)
    return arrays["x_train"].shape[1:], len(arrays["class_names"])


def model(spec, role, input_shape, classes, mean, std, base):
    """A teacher or student from its recipe section."""
    import keras

    from keras_kd import models

    if spec["file"]:
        path = existing_file(spec["file"], base, f"{role}.file")
        loaded = keras.saving.load_model(path)
        if tuple(loaded.input_shape[1:]) != tuple(input_shape):
            raise RecipeError(
                f"{role}.file: {path.name} takes inputs of shape "
                f"{loaded.input_shape[1:]}, the data has {tuple(input_shape)}."
            )
        return loaded
    kwargs = {"mean": mean, "std": std, "name": role}
    widths = tuple(spec["widths"])
    if spec["build"] == "resnet":
        return models.resnet(
            input_shape, classes, widths, spec["blocks"], **kwargs
        )
    return models.conv_net(input_shape, classes, widths, **kwargs)


def _arguments(cls, given, where):
    """Checks `given` against `cls`'s constructor arguments (and, where it
    passes `**kwargs` on, its base classes')."""
    names = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters
        names += [
            n
            for n, p in parameters.items()
            if n != "self" and (p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in parameters.values()):
            break
    else:
        return  # open-ended: the constructor reports what it refuses
    refuse_unknown(given, names, where)


def function_matching(recipe, seed):
    """The recipe's `keras_kd.FunctionMatching`, or `None`; its draws are
    seeded by the run's seed unless the recipe names one."""
    from keras_kd.function_matching import FunctionMatching

    given = recipe["training"]["function_matching"]
    if given is None:
        return None
    where = "training.function_matching"
    _arguments(FunctionMatching, given, where)
    try:
        return FunctionMatching(**{"seed": seed, **given})
    except (ValueError, TypeError) as error:
        raise RecipeError(f"{where}: {error}") from None


def refuse_unknown(given, names, where):
    """A `RecipeError` naming the closest of `names` for the first key of
    `given` that is not one of them."""
    from keras_kd.recipes.schema import unknown_key

    for key in given:
        if key not in names:
            raise unknown_key(key, names, where)


def losses(recipe, stages, facts):
    """The recipe's methods, from the registry, with their arguments."""
    from keras_kd.losses import registry

    built = []
    for i, method in enumerate(recipe["methods"]):
        where = f"methods[{i}]"
        name = method["name"]
        try:
            entry = registry.lookup(name)
        except (KeyError, ValueError) as error:
            raise RecipeError(f"{where}.name: {error}") from None
        arguments = {k: v for k, v in method.items() if k != "name"}
        _arguments(entry.cls, arguments, where)
        try:
            built.append(
                registry.build(name, stages=stages, facts=facts, **arguments)
            )
        except (TypeError, ValueError) as error:
            raise RecipeError(f"{where}: {error}") from None
    return built


def procedures(recipe):
    """The Distiller's step procedures (`data_free` and
    `domain_adaptation` change the whole run: `keras_kd.recipes.whole_run`)."""
    name = recipe["procedure"]["name"]
    if name not in PROCEDURES:  # plain, or a whole-run procedure
        return []
    from keras_kd import procedures as kd_procedures

    cls = getattr(kd_procedures, PROCEDURES[name])
    arguments = recipe["procedure"]["arguments"]
    _arguments(cls, arguments, "procedure.arguments")
    try:
        return [cls(**arguments)]
    except (TypeError, ValueError, OSError) as error:
        raise RecipeError(f"procedure.arguments: {error}") from None


def optimizer(spec, schedule, epochs, steps):
    """The optimiser of a recipe section with its learning-rate schedule
    (`steps` per epoch)."""
    import keras

    rate = spec["learning_rate"]
    total = max(1, epochs * steps)
    if schedule["name"] == "cosine":
        rate = keras.optimizers.schedules.CosineDecay(rate, decay_steps=total)
    elif schedule["name"] == "step":
        boundaries = [m * steps for m in schedule["milestones"]]
        values = [
            spec["learning_rate"] * schedule["gamma"] ** i
            for i in range(len(boundaries) + 1)
        ]
        if boundaries:
            rate = keras.optimizers.schedules.PiecewiseConstantDecay(
                boundaries, values
            )
    decay = spec["weight_decay"]
    if spec["name"] == "sgd":
        return keras.optimizers.SGD(
            rate,
            momentum=spec["momentum"],
            nesterov=spec["nesterov"],
            weight_decay=decay,
        )
    if spec["name"] == "adamw":
        return keras.optimizers.AdamW(rate, weight_decay=decay or 0.004)
    return keras.optimizers.Adam(rate, weight_decay=decay)
