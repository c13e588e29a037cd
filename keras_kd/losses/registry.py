"""The one table of distillation methods: names, classes and default taps.

A method registers itself once, in its own module, with the `register`
class decorator: its short names, optional *variants* (a name that builds
the class with fixed arguments, e.g. `"kd_ls"` for KD with logit
standardisation) and the layers it reads by default in a model family.
Everything that turns a method's name into a loss reads this table:
`keras_kd.losses.get`, the `keras-kd` command's `--methods` (and its
`--help`), the benchmarks and recipe files. Adding a method is adding its
module (and its tests); nothing else is edited.

Model families name layers the same way in every model they build:

- `"keras_kd"`: `keras_kd.models.conv_net` and `keras_kd.models.resnet`
  (each stage ends in `stage{i}_relu`, whose pre-activation is
  `stage{i}_bn` / `stage{i}_add`; `pool` is the global average pool,
  `logits` the classifier).

A family's default taps are a function of the number of stages, returning
the constructor arguments that name layers
(`teacher_layer_name`, `student_layer_name`, `teacher_tap`, ...) and any
other argument the family needs (FSP's connector, for the family's pairs
of different widths).
"""

import difflib
import importlib
import inspect
import pkgutil

#: Model families with default taps (see the module docstring).
FAMILIES = ("keras_kd",)


class Method:
    """One registered method: its class, names and per-family default taps.

    Attributes:
        name: the short name (`"ab"`), the first of `names`.
        names: every name `get` accepts for it, short names first.
        cls: the `DistillationLoss` subclass.
        fixed: constructor arguments a variant fixes (`{}` for the class).
        taps: `{family: function(stages) -> constructor kwargs}`.
        summary: a one-line description (the class docstring's first line).
    """

    def __init__(self, names, cls, fixed, taps):
        self.names = tuple(names)
        self.name = self.names[0]
        self.cls = cls
        self.fixed = dict(fixed)
        self.taps = dict(taps)
        doc = (cls.__doc__ or "").strip().splitlines()
        self.summary = doc[0].rstrip(".") if doc else cls.__name__
        if self.fixed:
            fixed = ", ".join(f"{k}={v!r}" for k, v in self.fixed.items())
            self.summary = f"{cls.__name__}({fixed}): {self.summary}"

    def __repr__(self):
        return f"Method({self.name!r}, {self.cls.__name__})"


_METHODS = []
_BY_NAME = {}


def register(*names, taps=None, variants=None):
    """Class decorator: registers a `DistillationLoss` under `names`.

    Args:
        *names: the names `get` accepts, short name first (the class name is
            accepted too).
        taps: `{family: function(stages) -> dict}`: the constructor
            arguments that name the layers read in each model family.
        variants: `{name: {argument: value}}`: further names that build the
            class with these arguments fixed (e.g. `{"kd_ls":
            {"standardize": True}}`); they share `taps`.

    Returns:
        The decorator, which returns the class unchanged.
    """

    def decorate(cls):
        _add(Method((*names, cls.__name__), cls, {}, taps or {}))
        for variant, fixed in (variants or {}).items():
            _add(Method((variant,), cls, fixed, taps or {}))
        return cls

    return decorate


def _add(method):
    for name in method.names:
        known = _BY_NAME.get(name)
        if known is not None and (
            known.cls.__qualname__ != method.cls.__qualname__
            or known.fixed != method.fixed
        ):
            raise ValueError(
                f"The method name {name!r} is registered twice: by "
                f"{known.cls.__name__} and by {method.cls.__name__}. Give "
                "the new method another name."
            )
    # A module imported twice (e.g. reloaded) registers its class again.
    _METHODS[:] = [m for m in _METHODS if m.names != method.names]
    _METHODS.append(method)
    for name in method.names:
        _BY_NAME[name] = method


def _load_all():
    """Imports every module of `keras_kd.losses`, so each registers."""
    package = importlib.import_module("keras_kd.losses")
    for info in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"keras_kd.losses.{info.name}")


def methods():
    """Every registered method (a `Method` each), in registration order."""
    _load_all()
    return list(_METHODS)


def names():
    """The short name of every registered method and variant."""
    return [method.name for method in methods()]


def lookup(name):
    """The `Method` registered under `name`, with a clear error if none."""
    if not isinstance(name, str):
        raise TypeError(
            "keras_kd.losses.get needs the name of a distillation loss (a "
            f"string); received {name!r} of type {type(name).__name__}. "
            "Pass e.g. get('kd')."
        )
    _load_all()
    method = _BY_NAME.get(name)
    if method is None:
        close = difflib.get_close_matches(name, list(_BY_NAME), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown distillation loss {name!r}.{hint} Valid names: "
            f"{', '.join(repr(n) for n in _BY_NAME)}."
        )
    return method


def get(name, /, *args, **kwargs):
    """Builds the method called `name`: `Class(*args, **fixed, **kwargs)`.

    A variant is also named after itself in logs unless `name=` is given
    (`get("kd_ls")` logs `kd_ls_loss`), so that it can sit beside its class
    in one Distiller.
    """
    method = lookup(name)
    if method.fixed:
        kwargs.setdefault("name", method.name)
    for key, value in method.fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(
                f"{name!r} is {method.cls.__name__} with {key}={value!r}; "
                f"received {key}={kwargs[key]!r}. Use "
                f"{method.cls.__name__!r} to choose {key} yourself."
            )
    return method.cls(*args, **{**method.fixed, **kwargs})


def default_taps(name, family="keras_kd", stages=3):
    """The constructor arguments naming the layers `name` reads by default.

    Args:
        name: a registered method name.
        family: a model family of `FAMILIES`. Defaults to `"keras_kd"`.
        stages: the number of stages of the models. Defaults to `3`.

    Returns:
        A dict of constructor arguments (empty for logit methods).
    """
    method = lookup(name)
    if family not in FAMILIES:
        raise ValueError(
            f"Unknown model family {family!r}; expected one of {FAMILIES}."
        )
    if not method.cls.reads_hidden_layers:
        return {}
    function = method.taps.get(family)
    if function is None:
        raise ValueError(
            f"{method.cls.__name__} declares no default layers for the "
            f"{family!r} family; name its layers yourself "
            f"(`keras_kd.losses.get({name!r}, teacher_layer_name, "
            "student_layer_name)`)."
        )
    return dict(function(stages))


def required_facts(name):
    """The constructor arguments `name` needs that only the data can tell
    (keyword-only, without a default: CRD's `num_examples`)."""
    cls = lookup(name).cls
    return [
        parameter.name
        for parameter in inspect.signature(cls.__init__).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
        and parameter.default is inspect.Parameter.empty
    ]


def build(name, /, family="keras_kd", stages=3, facts=None, **kwargs):
    """A method with its default taps in `family`, plus `kwargs`.

    Args:
        name: a registered method name.
        family: the model family of the default taps. Defaults to
            `"keras_kd"`.
        stages: the number of stages of the models. Defaults to `3`.
        facts: facts about the training data that methods may need
            (`{"num_examples": 6000}`); each method takes those of its
            `required_facts`. Defaults to `None`.
        **kwargs: further constructor arguments (they win).

    Returns:
        A new `DistillationLoss`.

    Example:

    >>> loss = build("ab", stages=2)
    >>> [t.layer_name for t, _ in loss.pair_taps]
    ['stage1_relu', 'stage2_relu']
    >>> build("crd", facts={"num_examples": 500}).num_examples
    500
    """
    arguments = {**default_taps(name, family, stages), **kwargs}
    missing = []
    for fact in required_facts(name):
        if fact in arguments:
            continue
        if facts and fact in facts:
            arguments[fact] = facts[fact]
        else:
            missing.append(fact)
    if missing:
        raise ValueError(
            f"{lookup(name).cls.__name__} needs {missing}, which only the "
            f"training data can tell; pass them, e.g. "
            f"build({name!r}, facts={{{missing[0]!r}: ...}})."
        )
    return get(name, **arguments)


def describe():
    """One line per method: its names and summary (for `--help`)."""
    lines = []
    for method in methods():
        others = [n for n in method.names[1:] if n != method.cls.__name__]
        alias = f" (also {', '.join(others)})" if others else ""
        fixed = ", ".join(f"{k}={v!r}" for k, v in method.fixed.items())
        what = f"{method.cls.__name__}({fixed})" if fixed else method.summary
        lines.append(f"{method.name}{alias}: {what}")
    return lines
