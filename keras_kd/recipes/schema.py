"""The recipe schema: what a recipe may say, checked before anything runs.

A recipe is a YAML file (read with `yaml.safe_load`: plain data, never
code or imports) whose keys this module declares. `validate(raw)` returns
the recipe with every default filled in, or raises `RecipeError` naming the
first problem: where it is (`training.optimizer.momentum`), what was
received, what was expected, and for an unknown key the closest valid one.

Methods (`methods: [{name: kd, weight: 2.0}, ...]`) and procedures are
checked against the method registry and the procedure classes: a method's
arguments are its class's constructor arguments, so a method added to the
registry needs no recipe code.
"""

import difflib

#: The schema version this keras_kd reads. A recipe states its version;
#: versions it does not know fail with what to do.
VERSION = 1

REQUIRED = object()


class RecipeError(ValueError):
    """A recipe that cannot run, with where and why."""


def _type_name(kind):
    if isinstance(kind, tuple):
        return " or ".join(_type_name(k) for k in kind)
    return {
        int: "an integer",
        float: "a number",
        bool: "true or false",
        str: "a string",
        list: "a list",
        dict: "a mapping",
        type(None): "null",
    }[kind]


class Field:
    """One key: its type, default, allowed values and an optional check.

    Args:
        kind: a Python type or a tuple of them (`float` accepts integers).
        default: the value when the key is absent (`REQUIRED`: no default).
        choices: the allowed values.
        check: `function(value) -> message or None` for further rules.
        items: for a list, the type of its items.
        help: one line on what the key means.
    """

    def __init__(
        self,
        kind,
        default=REQUIRED,
        *,
        choices=None,
        check=None,
        items=None,
        help="",
    ):
        self.kind = kind if isinstance(kind, tuple) else (kind,)
        self.default = default
        self.choices = choices
        self.check = check
        self.items = items
        self.help = help

    def validate(self, value, where):
        if value is None and type(None) in self.kind:
            return None
        accepted = self.kind
        if float in accepted and isinstance(value, int):
            value = float(value)
        if isinstance(value, bool) and bool not in accepted:
            raise RecipeError(
                f"{where}: received {value!r}, expected "
                f"{_type_name(self.kind)}."
            )
        if not isinstance(value, accepted):
            raise RecipeError(
                f"{where}: received {value!r} ({type(value).__name__}), "
                f"expected {_type_name(self.kind)}."
            )
        if self.items is not None and isinstance(value, list):
            value = [
                Field(self.items).validate(v, f"{where}[{i}]")
                for i, v in enumerate(value)
            ]
        if self.choices is not None and value not in self.choices:
            close = difflib.get_close_matches(
                str(value), [str(c) for c in self.choices], n=1
            )
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RecipeError(
                f"{where}: received {value!r}, expected one of "
                f"{list(self.choices)}.{hint}"
            )
        if self.check is not None:
            message = self.check(value)
            if message:
                raise RecipeError(f"{where}: received {value!r}: {message}")
        return value


class Section:
    """A mapping with known keys (`fields`: name -> Field or Section).

    `open=True` accepts keys it does not declare (their checker runs
    elsewhere: a method's or procedure's constructor arguments).
    """

    def __init__(self, fields, *, help="", open=False, optional=False):
        self.fields = fields
        self.help = help
        self.open = open
        self.default = None if optional else {}

    def validate(self, value, where):
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise RecipeError(
                f"{where or 'the recipe'}: received {value!r}, expected a "
                "mapping of keys to values."
            )
        result = {}
        for key, item in value.items():
            if key not in self.fields:
                if self.open:
                    result[key] = item
                    continue
                raise unknown_key(key, self.fields, where)
            result[key] = self.fields[key].validate(item, _join(where, key))
        for key, spec in self.fields.items():
            if key in result:
                continue
            if spec.default is REQUIRED:
                raise RecipeError(
                    f"{_join(where, key)}: missing; it is required"
                    + (f" ({spec.help})." if spec.help else ".")
                )
            if isinstance(spec, Section):
                result[key] = (
                    None
                    if spec.default is None
                    else spec.validate({}, _join(where, key))
                )
            else:
                result[key] = spec.default
        return result


class ListOf:
    """A list whose items are each validated by `item` (a Section)."""

    def __init__(self, item, default=REQUIRED, *, help=""):
        self.item = item
        self.default = default
        self.help = help

    def validate(self, value, where):
        if not isinstance(value, list):
            raise RecipeError(
                f"{where}: received {value!r}, expected a list "
                f"({self.help or 'of mappings'})."
            )
        return [
            self.item.validate(v, f"{where}[{i}]") for i, v in enumerate(value)
        ]


def _join(where, key):
    return f"{where}.{key}" if where else str(key)


def unknown_key(key, known, where):
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    place = f"in {where}" if where else "at the top level"
    return RecipeError(
        f"{_join(where, key)}: unknown key {key!r} {place}.{hint} Valid "
        f"keys: {sorted(known)}."
    )


def _positive(value):
    return None if value > 0 else "expected a value > 0"


def _fraction(value):
    return None if 0 < value <= 1 else "expected a fraction in (0, 1]"


def _at_least(minimum):
    def check(value):
        return None if value >= minimum else f"expected a value >= {minimum}"

    return check


def _widths(value):
    if not value or any(w < 1 for w in value):
        return "expected a non-empty list of positive channel counts"
    return None


def _seeds(value):
    if not value:
        return "expected at least one seed"
    if any(s < 0 for s in value):
        return "seeds are integers >= 0"
    if len(set(value)) != len(value):
        return "each seed once"
    return None


MODEL = {
    "file": Field(
        (str, type(None)),
        None,
        help="a saved .keras model (then no build keys)",
    ),
    "build": Field(
        str,
        "conv_net",
        choices=("conv_net", "resnet"),
        help="a keras_kd.models builder",
    ),
    "widths": Field(list, [32, 64, 128], items=int, check=_widths),
    "blocks": Field(int, 1, check=_at_least(1), help="resnet blocks per stage"),
}

OPTIMIZER = Section(
    {
        "name": Field(str, "sgd", choices=("sgd", "adam", "adamw")),
        "learning_rate": Field(float, 0.05, check=_positive),
        "momentum": Field(float, 0.9, check=_at_least(0.0)),
        "nesterov": Field(bool, True),
        "weight_decay": Field((float, type(None)), None),
    }
)

SCHEDULE = Section(
    {
        "name": Field(str, "cosine", choices=("cosine", "constant", "step")),
        "milestones": Field(
            list,
            [],
            items=int,
            help="step: epochs after which the rate is multiplied by gamma",
        ),
        "gamma": Field(float, 0.1, check=_positive),
    }
)

STEPS = Field(
    (int, type(None)),
    None,
    check=_at_least(1),
    help="train this many steps instead of `epochs` passes over the data, "
    "split in `epochs` Keras epochs of steps // epochs steps (a step-based "
    "schedule; the data repeat)",
)

METHOD = Section(
    {"name": Field(str, REQUIRED, help="a method of keras_kd.losses")},
    open=True,
)

SCHEMA = Section(
    {
        "version": Field(
            int,
            REQUIRED,
            help=f"the recipe schema version; this keras_kd reads {VERSION}",
        ),
        "name": Field((str, type(None)), None),
        "description": Field((str, type(None)), None),
        "reference": Field(
            (str, type(None)),
            None,
            help="the published number this recipe should reach, and where",
        ),
        "experiment": Field(
            str,
            "distill",
            choices=("distill", "compare"),
            help="distill: train the student distilled, per seed; compare: "
            "also the student alone, paired by seed (the main job)",
        ),
        "data": Section(
            {
                "source": Field(
                    str,
                    "bundled",
                    help="'bundled', 'bundled:cifar10', a .npz archive "
                    "(relative to the recipe) or a TensorFlow Datasets name",
                ),
                "target": Field(
                    (str, type(None)),
                    None,
                    help="procedure domain_adaptation: the target domain, in "
                    "the forms of `source` (its training labels are never "
                    "read; its test split scores the student), e.g. "
                    "'bundled:fashion_mnist_on_cifar10'",
                ),
                "data_dir": Field((str, type(None)), None),
                "download": Field(bool, False),
                "train_fraction": Field(float, 1.0, check=_fraction),
                "student_fraction": Field(float, 1.0, check=_fraction),
                "augment": Field(
                    str, "none", choices=("none", "flip", "crop_flip")
                ),
                "batch_size": Field(int, 64, check=_at_least(1)),
            }
        ),
        "teacher": Section(
            dict(
                MODEL,
                epochs=Field(
                    int,
                    3,
                    check=_at_least(0),
                    help="epochs to train a built teacher",
                ),
                steps=STEPS,
                batch_size=Field(
                    (int, type(None)),
                    None,
                    help="the teacher's batch size (default data.batch_size)",
                ),
                optimizer=OPTIMIZER,
                schedule=SCHEDULE,
            )
        ),
        "student": Section(
            dict(
                MODEL, widths=Field(list, [8, 16, 32], items=int, check=_widths)
            )
        ),
        "methods": ListOf(
            METHOD,
            [{"name": "kd"}],
            help="mappings with a method's name and its arguments",
        ),
        "procedure": Section(
            {
                "name": Field(
                    str,
                    "plain",
                    choices=(
                        "plain",
                        "boundary_supporting_samples",
                        "route_constrained",
                        "data_free",
                        "domain_adaptation",
                    ),
                ),
                "init_epochs": Field(
                    int,
                    1,
                    check=_at_least(0),
                    help="epochs of the AB / FSP initialisation stage",
                ),
                "arguments": Field(
                    dict,
                    {},
                    help="the procedure's constructor arguments",
                ),
            }
        ),
        "training": Section(
            {
                "epochs": Field(int, 10, check=_at_least(1)),
                "steps": STEPS,
                "optimizer": OPTIMIZER,
                "schedule": SCHEDULE,
                "student_loss_weight": Field(float, 1.0),
                "function_matching": Field(
                    (dict, type(None)),
                    None,
                    help="keras_kd.FunctionMatching's arguments (crop_padding"
                    ", flip, mixup_alpha, cutmix_alpha; seed: the run's)",
                ),
            }
        ),
        "seeds": Field(list, [0, 1, 2], items=int, check=_seeds),
        "outputs": Section(
            {
                "directory": Field(
                    (str, type(None)),
                    None,
                    help="where the run writes (default runs/<name>)",
                ),
                "save_student": Field(bool, True),
                "tensorboard": Field(bool, False),
                "export": Field(
                    (str, type(None)),
                    None,
                    choices=(
                        None,
                        "saved_model",
                        "tflite_float32",
                        "tflite_float16",
                        "tflite_dynamic_int8",
                        "tflite_int8",
                    ),
                ),
            }
        ),
    }
)


def validate(raw, source="the recipe"):
    """The recipe `raw` (a dict) with defaults filled in; `RecipeError` on
    the first problem. Checks the schema and the version only: the method
    arguments, files and layers are checked by `keras_kd.recipes.check`."""
    if not isinstance(raw, dict):
        raise RecipeError(
            f"{source}: expected a mapping of keys to values at the top "
            f"level, received {type(raw).__name__}."
        )
    version = raw.get("version", REQUIRED)
    if version is REQUIRED:
        raise RecipeError(
            f"{source}: version: missing; write `version: {VERSION}` at the "
            "top of the recipe."
        )
    if version != VERSION:
        raise RecipeError(
            f"{source}: version: received {version!r}; this keras_kd reads "
            f"recipes of version {VERSION}. "
            + (
                "Upgrade keras_kd to read newer recipes."
                if isinstance(version, int) and version > VERSION
                else f"Write `version: {VERSION}`."
            )
        )
    try:
        return SCHEMA.validate(raw, "")
    except RecipeError as error:
        raise RecipeError(f"{source}: {error}") from None
