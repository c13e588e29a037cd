"""Logits distillation (Hinton KD): Hinton, Vinyals & Dean, 2015."""

import math
import numbers

import keras
import numpy as np
from keras import ops

from keras_kd.losses import registry
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.standardization import _check_ddof
from keras_kd.losses.standardization import standardize_logits
from keras_kd.losses.tensors import reduce_per_example
from keras_kd.losses.tensors import to_float32
from keras_kd.losses.tensors import validate_rank
from keras_kd.losses.tensors import validate_reduction
from keras_kd.losses.tensors import validate_same_shape
from keras_kd.losses.validation import check_preset
from keras_kd.losses.validation import check_temperature
from keras_kd.losses.validation import is_graph_value

__all__ = [
    "LogitsDistillation",
    "logits_distillation_loss",
    "standardize_logits",
]

_RANK_WHAT = "logits_distillation_loss needs logits of shape (B, num_classes)"


# Taylor coefficients of phi(x) / (x^2 / 2), phi(x) = exp(-x) - 1 + x:
# phi(x) = sum_{n>=2} (-x)^n / n!, so phi(x) = x^2/2 * sum_n c_n x^(n-2) with
# c_n = 2 (-1)^n / n!. Eight terms: relative truncation error < 1e-8 on
# |x| <= _SERIES_LIMIT, below float32 resolution.
_PHI_SERIES = tuple(2.0 * (-1.0) ** n / math.factorial(n) for n in range(2, 10))
_SERIES_LIMIT = 0.5
# Largest exponent used before a row is rescaled: exp(60) * num_classes
# stays far from float32 overflow (3.4e38).
_EXP_CAP = 60.0


def _phi_over_half_square(x):
    """(exp(-x) - 1 + x) / (x^2 / 2) by its Taylor series (|x| <= 0.5)."""
    result = _PHI_SERIES[-1]
    for coefficient in reversed(_PHI_SERIES[:-1]):
        result = coefficient + x * result
    return result


def _scaled_kl(teacher, student, temperature):
    """`T^2 * KL(softmax(z_t/T) || softmax(z_s/T))` per row, float32, >= 0.

    The textbook form `sum p_t (log p_t - log p_s)` subtracts two
    log-softmaxes of size ~log(K) to get a KL of size ~1/T^2: in float32 it
    is pure round-off above T ~ 100 (negative values included). Instead,
    with `g = z_t - z_s`, `h = g - sum_k p_t,k g_k` (so `E_pt[h] = 0`) and
    `e = h / T`, the exact identity

        KL = log E_pt[exp(-e)] = log1p(S),  S = sum_k p_t,k * phi(e_k),
        phi(x) = exp(-x) - 1 + x >= 0,

    has no cancellation: every term is >= 0, `phi` comes from its Taylor
    series where `|e| <= 0.5`, and `log1p` keeps the relative precision of
    a tiny `S` (`S ~ Var(e)/2 ~ 1/T^2`). The student's log-softmax is
    never formed. A row whose largest term `p_t,k exp(-e_k)` would pass
    `exp(60)` (KL > ~60, nothing subtle there) is rescaled by `exp(-M)`
    first: `KL = M + log(exp(-M) + S exp(-M))`.
    """
    log_p_t = ops.log_softmax(teacher / temperature, axis=-1)
    p_t = ops.exp(log_p_t)
    g = teacher - student
    h = g - ops.sum(p_t * g, axis=-1, keepdims=True)
    e = h / temperature
    small = ops.less_equal(ops.abs(e), _SERIES_LIMIT)
    # Each branch only sees inputs it handles, so gradients stay finite.
    e_small = ops.where(small, e, 0.0)
    e_big = ops.where(small, 1.0, e)
    # log of p_t,k exp(-e_k), the term that can overflow; rows shifted by M.
    exponent = log_p_t - e_big
    shift = ops.stop_gradient(
        ops.maximum(
            ops.max(
                ops.where(small, -math.inf, exponent), axis=-1, keepdims=True
            )
            - _EXP_CAP,
            0.0,
        )
    )
    scale = ops.exp(-shift)  # 1 for every ordinary row
    series = p_t * 0.5 * ops.square(e_small) * _phi_over_half_square(e_small)
    # Direct phi for |e| > 0.5 (>= 0.1 there, so no cancellation).
    direct = ops.exp(exponent - shift) - scale * p_t * (1.0 - e_big)
    terms = ops.where(small, scale * series, direct)
    s = ops.sum(ops.maximum(terms, 0.0), axis=-1)  # (e^KL - 1) * exp(-M)
    shift = ops.squeeze(shift, axis=-1)
    rescaled = ops.greater(shift, 0.0)
    t_squared = ops.square(temperature)
    precise = t_squared * ops.log1p(ops.where(rescaled, 0.0, s))
    huge = t_squared * (
        shift + ops.log(ops.exp(-shift) + ops.where(rescaled, s, 1.0))
    )
    return ops.where(rescaled, huge, precise)


def logits_distillation_loss(
    teacher_logits,
    student_logits,
    temperature=1.0,
    *,
    reduction="mean",
    standardize=False,
    ddof=1,
):
    """Hinton knowledge-distillation loss on temperature-softened logits.

    Transfers the teacher's full output distribution ("dark knowledge"),
    softened by a temperature `T`, per example:

        L_KD = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )
             = T^2 * sum_k p_t,k * (log p_t,k - log p_s,k)

    then the batch mean. The `T^2` factor keeps the gradient size independent
    of `T`; as `T` grows, `L_KD` tends to `0.5 * Var_k(z_t - z_s)` (logit
    matching). The teacher is treated as a constant (`stop_gradient`);
    computed in float32. Unlike passing the string `"kl_divergence"` to
    `keras.distillation.LogitsDistillation`, the inputs are raw logits: the
    softmax and the `T^2` are applied here.

    Precision: the value is always `>= 0` and stays within 1e-4 relative
    (typically 1e-7) of a 50-digit reference over the whole accepted
    temperature range `[1e-4, 1e4]` (tests/losses/test_logits.py), including
    large `T` where the textbook float32 formula is round-off (negative
    values from `T = 1e3` on): the KL is
    computed as `log1p(sum_k p_t,k * phi(e_k))` on the centred logit
    differences `e = (z_t - z_s - mean_pt(z_t - z_s)) / T`, with
    `phi(x) = exp(-x) - 1 + x >= 0` from its Taylor series near 0.

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
        Network", 2015, https://arxiv.org/abs/1503.02531. Reference
        implementation: https://github.com/HobbitLong/RepDistiller
        (`distiller_zoo/KD.py`).

    Args:
        teacher_logits: Teacher logits, shape `(B, num_classes)`.
        student_logits: Student logits, same shape.
        temperature: Softmax temperature `T`, a finite number in
            `[1e-4, 1e4]` (`keras_kd.losses.validation.MIN_TEMPERATURE` /
            `MAX_TEMPERATURE`); a bool is rejected. A Python / NumPy number
            is validated; a tensor or `keras.Variable` (e.g. changed by a
            callback) is used as is (`LogitsDistillation.temperature`
            validates on assignment). Defaults to `1.0`, the library default
            of `LogitsDistillation` (Hinton et al. and RepDistiller use 4).
        reduction: `"mean"` for the batch mean (a scalar) or `"none"` for
            per-example values of shape `(B,)`. Defaults to `"mean"`.
        standardize: z-score both rows of logits first (logit
            standardisation, `standardize_logits`; Sun et al., CVPR 2024).
            Defaults to `False`.
        ddof: the standard deviation of `standardize`: `1` (the official
            code) or `0` (the paper). Defaults to `1`.

    Returns:
        A float32 scalar (`reduction="mean"`) or a float32 `(B,)` tensor
        (`reduction="none"`), `>= 0`.

    Raises:
        ValueError: If `temperature` is NaN, infinite or outside
            `[1e-4, 1e4]`, the logits are not rank 2, their shapes differ,
            or `reduction` is unknown.
        TypeError: If `temperature` is a bool or a string.

    Example:

    >>> import numpy as np
    >>> z_t = np.array([[2.0, 0.0, -1.0]], dtype="float32")
    >>> round(float(logits_distillation_loss(z_t, z_t)), 6)
    0.0
    >>> z_s = np.array([[0.0, 0.0, 0.0]], dtype="float32")
    >>> float(logits_distillation_loss(z_t, z_s, temperature=2.0)) > 0
    True
    """
    validate_reduction(reduction)
    if not is_graph_value(temperature):
        check_temperature(temperature)
    teacher = ops.stop_gradient(to_float32(teacher_logits))
    student = to_float32(student_logits)
    for name, tensor in (
        ("teacher_logits", teacher),
        ("student_logits", student),
    ):
        validate_rank(
            tensor,
            (2,),
            name=name,
            what=_RANK_WHAT,
            hint="Pass the pre-softmax outputs of the classification head.",
        )
    validate_same_shape(
        teacher,
        student,
        what="logits_distillation_loss",
        hint="Teacher and student must predict the same classes.",
    )
    if standardize:
        teacher = standardize_logits(teacher, ddof=ddof)
        student = standardize_logits(student, ddof=ddof)
    per_example = _scaled_kl(teacher, student, to_float32(temperature))
    return reduce_per_example(per_example, reduction)


def _concrete_value(value):
    """`value` as a Python scalar if it is known now; `None` if symbolic.

    Numbers (and bools / strings, so that they are rejected) are returned
    as they are; eager tensors, variables and NumPy arrays with one element
    as a Python scalar. Symbolic tensors (inside a traced function) are not
    known yet: `None`.
    """
    if isinstance(value, (bool, np.bool_, str, numbers.Number)):
        return value
    numpy_method = getattr(value, "numpy", None)  # eager tensors, variables
    if numpy_method is None and (
        keras.backend.backend() == "tensorflow" and ops.is_tensor(value)
    ):
        return None  # a symbolic TensorFlow tensor: eager ones have .numpy()
    try:
        array = numpy_method() if numpy_method else ops.convert_to_numpy(value)
    except (
        TypeError,
        ValueError,
        AttributeError,
        NotImplementedError,
        RuntimeError,
    ):
        return None  # symbolic: the value is not known while tracing
    array = np.asarray(array)
    if array.size != 1:
        return None  # wrong shape: `assign` itself reports it
    return array.reshape(()).item()


class TemperatureVariable(keras.Variable):
    """A `keras.Variable` that only accepts valid temperatures.

    Every `assign` of a value known at that time (a Python number, a NumPy
    scalar, an eager tensor: what callbacks and weight loading pass) is
    checked with `keras_kd.losses.validation.check_temperature`: NaN, Inf,
    bools and values outside `[1e-4, 1e4]` raise instead of silently
    reaching the loss. Symbolic assignments inside a traced function cannot
    be checked and are applied as they are.
    """

    def assign(self, value):
        concrete = _concrete_value(value)
        if concrete is not None:
            check_temperature(concrete, owner=f"Assigning `{self.path}`")
        return super().assign(value)


@registry.register(
    "kd", "logits_distillation", variants={"kd_ls": {"standardize": True}}
)
@keras.saving.register_keras_serializable(package="keras_kd")
class LogitsDistillation(DistillationLoss):
    """Hinton knowledge distillation on the logits, with the T^2 scaling.

    `L = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`, per example, then
    the batch mean (`logits_distillation_loss`, non-negative and float32
    precise over the whole accepted temperature range). The softmax is
    always applied (unlike a plain `"kl_divergence"` string loss) and `T^2`
    keeps the gradient size independent of `T`. If a model's last layer
    applies a softmax, the Distiller reads the tensor before it, so the loss
    always sees logits.

    The temperature is a non-trainable float32 variable (`loss.temperature`,
    a `TemperatureVariable`) that a callback may change during `fit`, with
    `loss.temperature.assign(2.0)` or `loss.temperature = 2.0`; both check
    the value like the constructor does.

    Library default, `T = 1` with weight 1 (the task loss keeps weight 1):
    the student learns from the label and from the teacher's probabilities
    in equal parts. The published `T = 4` spreads the target over the
    teacher's small probabilities and, with `T^2 = 16` on the KL, dominates
    the task loss. On keras_kd's panel it lost accuracy against the student
    alone with a tiny student under Adam and barely gained with a small one
    under SGD, where `T = 1` did better with both (and `T = 2`, or `T = 4`
    with weight 1/16 or 1/4, lay in between). Measured:
    `benchmarks/results/panel_v0_1.md` (`T = 4`) and
    `benchmarks/results/defaults_search.md` (the other settings).

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
        Network", 2015. RepDistiller `distiller_zoo/KD.py`.

    Args:
        temperature: the softmax temperature `T`, a finite number in
            `[1e-4, 1e4]` (typically 1 to 8; a bool is rejected, `True` is
            not 1). Defaults to `1.0` (`preset="library"`) or `4.0`
            (`preset="paper"`).
        standardize: z-score each example's teacher and student logits
            before the softmax (logit standardisation, Sun et al., CVPR
            2024: `standardize_logits`); `keras_kd.losses.get("kd_ls")`
            builds it. Defaults to `False`.
        ddof: the standard deviation `standardize` divides by: `1` (the
            official code, PyTorch's sample std) or `0` (the paper's
            population std). Defaults to `1`.
        preset: `"library"` (default: `T = 1`, weight 1 beside the task
            loss) or `"paper"` (`T = 4`, weight 0.9: RepDistiller's and
            mdistiller's KD, which also weight the task loss by 0.1: pass
            `student_loss_weight=0.1` to the Distiller for their recipe;
            with `standardize=True`, the logit-standardisation paper's KD:
            base temperature `T = 2`, weight 9, beside a task loss weighted
            0.1).
        name: name used in logs. Defaults to `"logits_distillation"`.

    Raises:
        TypeError: if `temperature` is not a real number (or is a bool).
        ValueError: if `temperature` is NaN, infinite or outside
            `[1e-4, 1e4]`.

    Example:

    >>> kd = LogitsDistillation(temperature=4.0)
    >>> float(kd.temperature.numpy())
    4.0
    >>> kd.temperature = 2.0  # same as kd.temperature.assign(2.0)
    >>> float(kd.temperature.numpy())
    2.0
    """

    default_weight = 1.0
    default_temperature = 1.0
    paper_weight = 0.9
    paper_temperature = 4.0
    #: The logit-standardisation paper's KD (`standardize=True`).
    standardized_paper_weight = 9.0
    standardized_paper_temperature = 2.0
    reads_hidden_layers = False

    def __init__(
        self,
        temperature=None,
        *,
        standardize=False,
        ddof=1,
        name="logits_distillation",
        **kwargs,
    ):
        preset = check_preset(
            kwargs.get("preset", "library"), "LogitsDistillation"
        )
        if not isinstance(standardize, bool):
            raise TypeError(
                f"LogitsDistillation: `standardize` must be True or False; "
                f"received {standardize!r}."
            )
        ddof = _check_ddof(ddof, "LogitsDistillation")
        paper = preset == "paper"
        if temperature is None:
            temperature = (
                (
                    self.standardized_paper_temperature
                    if standardize
                    else self.paper_temperature
                )
                if paper
                else self.default_temperature
            )
        temperature = check_temperature(temperature, owner="LogitsDistillation")
        for key in ("teacher_layer_name", "student_layer_name"):
            if key in kwargs:
                raise TypeError(
                    f"LogitsDistillation reads the models' logits and takes "
                    f"no `{key}`; received {key}={kwargs[key]!r}. To distil "
                    "a hidden layer use a feature loss, e.g. "
                    "keras_kd.losses.FitNetsHint(teacher_layer, "
                    "student_layer)."
                )
        super().__init__(None, None, name=name, **kwargs)
        if paper and standardize:
            self.default_weight = self.standardized_paper_weight
        self.standardize = standardize
        self.ddof = ddof
        self._initial_temperature = temperature
        with keras.name_scope(self.name, caller=self):
            # Assigning the variable to an attribute tracks it (saved with
            # the layer) exactly like `add_weight` does.
            self._temperature = TemperatureVariable(
                initializer=keras.initializers.Constant(temperature),
                shape=(),
                dtype="float32",
                trainable=False,
                name="temperature",
            )

    @property
    def temperature(self):
        """The temperature variable (a float32 `TemperatureVariable`)."""
        return self._temperature

    @temperature.setter
    def temperature(self, value):
        self._temperature.assign(value)

    def configure_pair(self, index, teacher_shape, student_shape, dtype, names):
        if teacher_shape is None or student_shape is None:
            return None
        for role, shape in (
            ("teacher", teacher_shape),
            ("student", student_shape),
        ):
            if len(shape) != 2:
                raise ValueError(
                    f"LogitsDistillation needs logits of shape (B, classes); "
                    f"the {role} '{names[role == 'student']}' outputs "
                    f"{shape}. Distil a classifier, or use a feature loss."
                )
        if None not in (teacher_shape[-1], student_shape[-1]) and (
            teacher_shape[-1] != student_shape[-1]
        ):
            raise ValueError(
                f"LogitsDistillation needs the same classes on both sides; "
                f"teacher '{names[0]}' has {teacher_shape[-1]} and student "
                f"'{names[1]}' has {student_shape[-1]}."
            )
        return None

    def pair_loss(self, index, teacher, student):
        return logits_distillation_loss(
            teacher,
            student,
            self.temperature,
            reduction="none",
            standardize=self.standardize,
            ddof=self.ddof,
        )

    def get_config(self):
        config = super().get_config()
        for key in (
            "teacher_layer_name",
            "student_layer_name",
            "pair_weights",
            "teacher_tap",
            "student_tap",
        ):
            config.pop(key, None)
        config.update(
            temperature=self._initial_temperature,
            standardize=self.standardize,
            ddof=self.ddof,
        )
        return config
