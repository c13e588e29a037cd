"""keras_kd.losses: one distillation method per module, a function and a class.

Functions (`activation_boundary_loss`, `neuron_selectivity_loss`, ...) are
pure float32 math on tensors, teacher first. Classes (`ActivationBoundary`,
`NeuronSelectivityTransfer`, ...) name the layers they read and the
connectors they need, and are passed to `keras_kd.Distiller`.
`get("ab", ...)` builds a class by its short name.
"""

import difflib

from keras_kd.losses.activation_boundary import ActivationBoundary
from keras_kd.losses.activation_boundary import activation_boundary_loss
from keras_kd.losses.activation_boundary import boundary_agreement
from keras_kd.losses.attention import AttentionTransfer
from keras_kd.losses.attention import attention_map
from keras_kd.losses.attention import attention_transfer_loss
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.hints import FitNetsHint
from keras_kd.losses.hints import fitnets_hint_loss
from keras_kd.losses.logits import LogitsDistillation
from keras_kd.losses.logits import logits_distillation_loss
from keras_kd.losses.neuron_selectivity import NeuronSelectivityTransfer
from keras_kd.losses.neuron_selectivity import neuron_selectivity_loss

__all__ = [
    "ActivationBoundary",
    "AttentionTransfer",
    "DistillationLoss",
    "FitNetsHint",
    "LogitsDistillation",
    "NeuronSelectivityTransfer",
    "activation_boundary_loss",
    "attention_map",
    "attention_transfer_loss",
    "boundary_agreement",
    "fitnets_hint_loss",
    "get",
    "logits_distillation_loss",
    "neuron_selectivity_loss",
]

#: Each loss class with the names `get` accepts for it: the short names, the
#: name it logs under by default, and the class name itself.
_NAMES = {
    LogitsDistillation: ("kd", "logits_distillation"),
    ActivationBoundary: ("ab", "activation_boundary"),
    NeuronSelectivityTransfer: ("nst", "neuron_selectivity"),
    AttentionTransfer: ("at", "attention_transfer"),
    FitNetsHint: ("fitnets", "hint", "fitnets_hint"),
}
_CLASS_OF = {
    name: cls
    for cls, names in _NAMES.items()
    for name in (*names, cls.__name__)
}


def get(name, /, *args, **kwargs):
    """Builds a distillation loss from its name: `get("ab", t, s)`.

    The one lookup from a method's name to its class (for command lines,
    configuration files and benchmarks): `get(name, *args, **kwargs)` is
    `Class(*args, **kwargs)`. (`name` is positional-only, so a loss's
    own `name=`, its log name, passes through: `get("kd", name="kd_t4")`.)

    | names | class |
    | --- | --- |
    | `"kd"`, `"logits_distillation"` | `LogitsDistillation` |
    | `"ab"`, `"activation_boundary"` | `ActivationBoundary` |
    | `"nst"`, `"neuron_selectivity"` | `NeuronSelectivityTransfer` |
    | `"at"`, `"attention_transfer"` | `AttentionTransfer` |
    | `"fitnets"`, `"hint"`, `"fitnets_hint"` | `FitNetsHint` |

    The class names themselves (`"ActivationBoundary"`, ...) are accepted
    too. Names are case-sensitive.

    Args:
        name: One of the names above.
        *args: Positional arguments of the class (for the losses that read
            hidden layers: `teacher_layer_name, student_layer_name`).
        **kwargs: Keyword arguments of the class.

    Returns:
        A new `DistillationLoss`.

    Raises:
        TypeError: If `name` is not a string.
        ValueError: If `name` is not one of the names above (the message
            lists them).

    Example:

    >>> ab = get("ab", ["t_relu1", "t_relu2"], ["s_relu1", "s_relu2"])
    >>> type(ab).__name__, ab.pair_weights
    ('ActivationBoundary', [0.5, 1.0])
    >>> kd = get("LogitsDistillation", temperature=4.0, name="kd_t4")
    >>> type(kd).__name__, kd.name
    ('LogitsDistillation', 'kd_t4')
    """
    if not isinstance(name, str):
        raise TypeError(
            "keras_kd.losses.get needs the name of a distillation loss (a "
            f"string); received {name!r} of type {type(name).__name__}. "
            "Pass e.g. get('kd')."
        )
    cls = _CLASS_OF.get(name)
    if cls is None:
        close = difflib.get_close_matches(name, _CLASS_OF, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(
            f"Unknown distillation loss {name!r}.{hint} Valid names: "
            f"{', '.join(repr(n) for n in _CLASS_OF)}."
        )
    return cls(*args, **kwargs)
