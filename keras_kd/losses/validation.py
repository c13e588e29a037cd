"""Checks of loss hyperparameters, run where a value is set (not mid-fit).

A hyperparameter that is NaN, infinite, negative or a bool does not fail
where it is set: it turns into NaN gradients, a loss of the wrong sign or a
silently different method many steps later. These helpers reject such values
with one clear message (what was received, what is expected, how to fix it):
a `TypeError` for a value that is not a real number (a bool included: `True`
is not taken as 1), a `ValueError` for a number out of range.
"""

import math
import numbers

import keras
import numpy as np

#: Temperatures `LogitsDistillation` and `logits_distillation_loss` accept.
#: Far below `MIN_TEMPERATURE`, `z / T` overflows float32; long before
#: `MAX_TEMPERATURE`, `T^2 * KL` has reached its limit
#: `0.5 * Var_k(z_t - z_s)` (logit matching: within 0.2% at `T = 100` for
#: logits of spread ~3), so larger values only hide a typo.
MIN_TEMPERATURE = 1e-4
MAX_TEMPERATURE = 1e4


def is_real_number(value):
    """True for Python / NumPy real scalars; False for bools and tensors."""
    return isinstance(value, numbers.Real) and not isinstance(
        value, (bool, np.bool_)
    )


def is_integer(value):
    """True for Python / NumPy integer scalars; False for bools and tensors."""
    return isinstance(value, numbers.Integral) and not isinstance(
        value, (bool, np.bool_)
    )


def is_graph_value(value):
    """True for tensors, variables and arrays: values the loss functions
    take as they are (their value may be unknown while a step is traced)."""
    return isinstance(
        value, (keras.Variable, np.ndarray)
    ) or keras.ops.is_tensor(value)


def check_real(
    value,
    name,
    *,
    minimum=None,
    strict=False,
    maximum=None,
    hint="",
    owner=None,
):
    """Validates one real hyperparameter and returns it as a Python float.

    Args:
        value: The value to check.
        name: The argument name, shown as `name=value` in the message.
        minimum: Smallest accepted value, or `None` for no lower bound.
        strict: If `True`, `minimum` itself is rejected (`value > minimum`).
        maximum: Largest accepted value (inclusive), or `None`.
        hint: How to fix it (e.g. the usual value), appended to the message.
        owner: The class or function name, shown first in the message.

    Returns:
        `float(value)`.

    Raises:
        TypeError: If `value` is not a real number (bools, strings, `None`,
            tensors are all rejected).
        ValueError: If `value` is NaN, infinite or out of range.
    """
    prefix = f"{owner}: " if owner else ""
    suffix = f" {hint}" if hint else ""
    if not is_real_number(value):
        # A tensor's repr may not be computable (symbolic) or be long.
        shown = (
            "a tensor/array" if is_graph_value(value) else f"{name}={value!r}"
        )
        raise TypeError(
            f"{prefix}`{name}` must be a real number; received "
            f"{shown} of type {type(value).__name__}."
            + (
                " A bool is not accepted as a number."
                if isinstance(value, (bool, np.bool_))
                else ""
            )
            + suffix
        )
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(
            f"{prefix}`{name}` must be a finite number; received "
            f"{name}={value!r}.{suffix}"
        )
    too_small = minimum is not None and (
        number < minimum or (strict and number == minimum)
    )
    too_large = maximum is not None and number > maximum
    if too_small or too_large:
        parts = []
        if minimum is not None:
            parts.append(f"{'>' if strict else '>='} {minimum:g}")
        if maximum is not None:
            parts.append(f"<= {maximum:g}")
        raise ValueError(
            f"{prefix}`{name}` must be {' and '.join(parts)}; received "
            f"{name}={value!r}.{suffix}"
        )
    return number


def check_temperature(value, owner=None):
    """Validates a softmax temperature and returns it as a float.

    A temperature must be a real number (not a bool: `True` is not 1),
    finite, `> 0`, and in `[MIN_TEMPERATURE, MAX_TEMPERATURE]`.

    Raises:
        TypeError: If `value` is not a real number, or is a bool.
        ValueError: If `value` is NaN, infinite, `<= 0` or out of range.
    """
    hint = (
        f"Pass a temperature between {MIN_TEMPERATURE:g} and "
        f"{MAX_TEMPERATURE:g}; typical values are 1 to 8 (4 by default, T=1 "
        "is the plain softmax)."
    )
    check_real(
        value, "temperature", minimum=0.0, strict=True, owner=owner, hint=hint
    )
    return check_real(
        value,
        "temperature",
        minimum=MIN_TEMPERATURE,
        maximum=MAX_TEMPERATURE,
        owner=owner,
        hint=hint + " When T is much larger than the spread of the logits, "
        "T^2 * KL is already at its limit 0.5 * Var(z_t - z_s) (logit "
        "matching): a larger T changes nothing.",
    )


def check_pair_weights(pair_weights, num_pairs, owner):
    """Validates per-pair weights: one finite number >= 0 per pair.

    Args:
        pair_weights: A list or tuple of numbers.
        num_pairs: The number of layer pairs of the loss.
        owner: The loss class name, shown in messages.

    Returns:
        The weights as a list of Python floats.

    Raises:
        TypeError: If `pair_weights` is not a list / tuple / 1-D array, or
            a weight is not a real number (a bool included).
        ValueError: If the length differs from `num_pairs`, or a weight is
            NaN, infinite or negative.
    """
    if isinstance(pair_weights, np.ndarray) and pair_weights.ndim == 1:
        pair_weights = pair_weights.tolist()
    if not isinstance(pair_weights, (list, tuple)):
        raise TypeError(
            f"{owner}: `pair_weights` must be a list with one number per "
            f"layer pair; received {pair_weights!r} of type "
            f"{type(pair_weights).__name__}."
        )
    weights = list(pair_weights)
    if len(weights) != num_pairs:
        raise ValueError(
            f"{owner} has {num_pairs} layer pair(s) but received "
            f"{len(weights)} pair_weights {weights}. Pass one weight per pair."
        )
    return [
        check_real(
            w,
            f"pair_weights[{i}]",
            minimum=0.0,
            owner=owner,
            hint="Each pair weight must be a finite number >= 0 (0 turns a "
            "pair off); a negative weight would reward the student for "
            "moving away from the teacher.",
        )
        for i, w in enumerate(weights)
    ]


#: The presets every distillation loss accepts (`preset=`).
PRESETS = ("library", "paper")


def check_preset(preset, owner):
    """Validates a loss's `preset` argument; returns it."""
    if not isinstance(preset, str) or preset not in PRESETS:
        raise ValueError(
            f"{owner}: `preset` must be one of {PRESETS}; received "
            f"{preset!r}. 'library' (the default) gives the defaults chosen "
            "on keras_kd's panel benchmark; 'paper' the official code's "
            "values."
        )
    return preset
