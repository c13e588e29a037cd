"""keras_kd.losses: one distillation method per module, a function and a class.

Functions (`activation_boundary_loss`, `neuron_selectivity_loss`, ...) are
pure float32 math on tensors, teacher first. Classes (`ActivationBoundary`,
`NeuronSelectivityTransfer`, ...) name the layers they read and the
connectors they need, and are passed to `keras_kd.Distiller`.
`get("ab", ...)` builds a class by its name, from the method registry
(`keras_kd.losses.registry`), where every method module registers itself.

Every module of this package is imported here and its `__all__` becomes
part of `keras_kd.losses`: adding a method is adding its module.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from keras_kd.losses import registry
from keras_kd.losses.base import DistillationLoss

__all__ = ["DistillationLoss", "get", "registry", "requirements"]

for _info in sorted(_pkgutil.iter_modules(__path__), key=lambda m: m.name):
    _module = _importlib.import_module(f"{__name__}.{_info.name}")
    for _name in getattr(_module, "__all__", ()):
        globals()[_name] = getattr(_module, _name)
        if _name not in __all__:
            __all__.append(_name)
__all__.sort()
del _info, _module, _name


def get(name, /, *args, **kwargs):
    """Builds a distillation loss from its name: `get("ab", t, s)`.

    The one lookup from a method's name to its class (for command lines,
    recipe files and benchmarks): `get(name, *args, **kwargs)` is
    `Class(*args, **kwargs)`, with a variant's fixed arguments added
    (`get("kd_ls")` is `LogitsDistillation(standardize=True)`). `name` is
    positional-only, so a loss's own `name=`, its log name, passes through:
    `get("kd", name="kd_t4")`.

    Every registered name is accepted: the short names, the default log
    names and the class names (`keras_kd.losses.registry.describe()` lists
    them, as does `keras-kd --help`). Names are case-sensitive.

    Args:
        name: a registered method name.
        *args: Positional arguments of the class (for the losses that read
            hidden layers: `teacher_layer_name, student_layer_name`).
        **kwargs: Keyword arguments of the class.

    Returns:
        A new `DistillationLoss`.

    Raises:
        TypeError: If `name` is not a string.
        ValueError: If `name` is not registered (the message lists the
            names and the closest one).

    Example:

    >>> ab = get("ab", ["t_relu1", "t_relu2"], ["s_relu1", "s_relu2"])
    >>> type(ab).__name__, ab.pair_weights
    ('ActivationBoundary', [0.5, 1.0])
    >>> kd = get("LogitsDistillation", temperature=4.0, name="kd_t4")
    >>> type(kd).__name__, kd.name
    ('LogitsDistillation', 'kd_t4')
    """
    return registry.get(name, *args, **kwargs)


def requirements(losses):
    """What a set of distillation losses reads from the step besides the
    features: the union of their `requires` (`"labels"`, `"example_ids"`).

    A pipeline built for these losses must carry what they read: with
    `"example_ids"` in the result, feed `{"image": x, "example_id": ids}`
    (`keras_kd.data.with_example_ids` for a tf.data pipeline); with
    `"labels"`, labels (a data-free pool has none).

    Args:
        losses: `DistillationLoss` instances or classes (e.g.
            `distiller.distillation_losses`, or
            `keras_kd.losses.registry.lookup(name).cls`).

    Returns:
        A `frozenset` of the names read.

    Raises:
        TypeError: If an item is neither a `DistillationLoss` nor a
            subclass of it.

    Example:

    >>> sorted(requirements([get("kd"), get("dkd")]))
    ['labels']
    >>> "example_ids" in requirements([registry.lookup("crd").cls])
    True
    """
    needs = set()
    for loss in losses:
        is_class = isinstance(loss, type) and issubclass(loss, DistillationLoss)
        if not (is_class or isinstance(loss, DistillationLoss)):
            raise TypeError(
                "requirements: expected DistillationLoss instances or "
                f"classes, received {loss!r} ({type(loss).__name__}). Pass "
                "`distiller.distillation_losses` or the classes of "
                "`keras_kd.losses.registry`."
            )
        needs.update(loss.requires)
    return frozenset(needs)
