"""FitNets hints: Romero et al., ICLR 2015."""

import warnings

import keras
from keras import ops

from keras_kd.connectors import Connector
from keras_kd.losses import registry
from keras_kd.losses.base import CONNECTOR_CHOICES
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.tensors import flatten_per_example
from keras_kd.losses.tensors import reduce_per_example
from keras_kd.losses.tensors import to_float32
from keras_kd.losses.tensors import validate_reduction
from keras_kd.losses.tensors import validate_same_shape

__all__ = [
    "FitNetsHint",
    "fitnets_hint_loss",
]

_RANK_WHAT = "fitnets_hint_loss needs batched tensors (B, ...)"


def fitnets_hint_loss(teacher_hint, student_guided, *, reduction="mean"):
    """FitNets hint loss: mean squared error to the teacher's hint layer.

    Transfers the teacher's intermediate representation (the "hint"): the
    student's guided layer, mapped to the hint's shape by a regressor
    (connector), is regressed onto it, per example:

        L = mean_{h,w,c} (s - t)^2

    then the batch mean (so `reduction="mean"` equals `mean((s - t)^2)`
    over all elements, as in RepDistiller). The teacher is treated as a
    constant (`stop_gradient`); computed in float32.

    Reference:
        Romero, Ballas, Kahou, Chassang, Gatta, Bengio, "FitNets: Hints for
        Thin Deep Nets", ICLR 2015, https://arxiv.org/abs/1412.6550.
        Official code: https://github.com/adri-romsor/FitNets; reference
        implementation: https://github.com/HobbitLong/RepDistiller
        (`distiller_zoo/FitNet.py`).

    Args:
        teacher_hint: Teacher hint tensor, shape `(B, ...)`, e.g.
            `(B, H, W, C)`.
        student_guided: Student guided tensor after the regressor, same shape.
        reduction: `"mean"` for the batch mean (a scalar) or `"none"` for
            per-example values of shape `(B,)`. Defaults to `"mean"`.

    Returns:
        A float32 scalar (`reduction="mean"`) or a float32 `(B,)` tensor
        (`reduction="none"`).

    Raises:
        ValueError: If the shapes differ, an input has rank < 2, or
            `reduction` is unknown.

    Example:

    >>> import numpy as np
    >>> t = np.zeros((2, 2, 2, 1), dtype="float32")
    >>> s = np.full((2, 2, 2, 1), 3.0, dtype="float32")
    >>> float(fitnets_hint_loss(t, s))
    9.0
    """
    validate_reduction(reduction)
    teacher = ops.stop_gradient(to_float32(teacher_hint))
    student = to_float32(student_guided)
    for name, tensor in (
        ("teacher_hint", teacher),
        ("student_guided", student),
    ):
        if len(tensor.shape) < 2:
            raise ValueError(
                f"{_RANK_WHAT}; received shape {tuple(tensor.shape)} for "
                f"`{name}`, expected rank >= 2. Add the batch axis (a single "
                "example has shape (1, ...))."
            )
    validate_same_shape(
        teacher,
        student,
        what="fitnets_hint_loss",
        hint="Map the student layer to the teacher hint's shape with a "
        "regressor (e.g. a Conv2D + BatchNormalization connector).",
    )
    squared_error = flatten_per_example(ops.square(student - teacher))
    per_example = ops.mean(squared_error, axis=1)
    return reduce_per_example(per_example, reduction)


def _keras_kd_taps(stages):
    """The ReLU ending the stage before the last, in both networks."""
    hint = f"stage{max(stages - 1, 1)}_relu"
    return dict(teacher_layer_name=hint, student_layer_name=hint)


@registry.register(
    "fitnets", "hint", "fitnets_hint", taps={"keras_kd": _keras_kd_taps}
)
@keras.saving.register_keras_serializable(package="keras_kd")
class FitNetsHint(DistillationLoss):
    """FitNets hint learning: a regressor maps the student onto the teacher.

    `L = mean((r(s) - t)^2)` over every element of the hint, per example,
    then the batch mean, where the regressor `r` is a `Conv2D` +
    `BatchNormalization` (3x3 "same" for equal sizes, stride-k for a student
    map k times larger, a stride-k transposed conv for one k times smaller;
    `Dense` + BN for rank-2 features), trained with the student and never
    exported. RepDistiller trains `CE + 100 * hint` in one stage
    (`preset="paper"`: weight 100); the library default is 10, chosen on
    the panel benchmark, where 100 put a small Fashion-MNIST student trained
    300 SGD steps 0.9 points below training alone and 10 did not. The
    paper's two-stage variant is a `keras_kd.callbacks.StagedSchedule`.

    Reference:
        Romero et al., "FitNets: Hints for Thin Deep Nets", ICLR 2015.
        RepDistiller `distiller_zoo/FitNet.py` and `models/util.py`
        (`ConvReg`).

    Args:
        teacher_layer_name: the hint layer(s) of the teacher.
        student_layer_name: the guided layer(s) of the student.
        connector: when to build the regressor: `"always"` (FitNets),
            `"auto"` (only when the shapes differ) or `"never"` (the shapes
            must match; plain MSE). Defaults to `"always"`. The same
            argument as `ActivationBoundary`'s.
        regressor: deprecated alias of `connector` (a `DeprecationWarning`).
        pair_weights: one weight per pair, each a finite number `>= 0`.
            Defaults to `1.0` each.
        teacher_tap, student_tap: where to read the layers. Default
            `"output"`.
        name: name used in logs. Defaults to `"fitnets_hint"`.

    Example:

    >>> hint = FitNetsHint("t_block2", "s_block2")
    >>> hint.connector, hint.default_weight
    ('always', 10.0)
    """

    default_weight = 10.0
    paper_weight = 100.0
    _deprecated_attributes = {
        **DistillationLoss._deprecated_attributes,
        "regressor": (
            "FitNetsHint.regressor is deprecated: read `connector` instead.",
            lambda loss: loss.connector,
        ),
    }

    def __init__(
        self,
        teacher_layer_name,
        student_layer_name,
        *,
        connector="always",
        pair_weights=None,
        teacher_tap=None,
        student_tap=None,
        name="fitnets_hint",
        **kwargs,
    ):
        if "regressor" in kwargs:
            regressor = kwargs.pop("regressor")
            warnings.warn(
                "FitNetsHint(regressor=...) is deprecated: pass "
                f"connector={regressor!r} instead (the name ActivationBoundary "
                "uses too).",
                DeprecationWarning,
                stacklevel=2,
            )
            if connector not in ("always", regressor):
                raise ValueError(
                    "FitNetsHint received both connector="
                    f"{connector!r} and its deprecated alias regressor="
                    f"{regressor!r}. Pass only `connector`."
                )
            connector = regressor
        if connector not in CONNECTOR_CHOICES:
            raise ValueError(
                f"`connector` must be one of {CONNECTOR_CHOICES}; received "
                f"{connector!r}. 'always' builds a regressor for every pair "
                "(FitNets), 'auto' only where the shapes differ, 'never' "
                "none (the shapes must match)."
            )
        super().__init__(
            teacher_layer_name,
            student_layer_name,
            pair_weights=pair_weights,
            teacher_tap=teacher_tap,
            student_tap=student_tap,
            name=name,
            **kwargs,
        )
        self.connector = connector

    @classmethod
    def from_config(cls, config):
        # Files saved before the argument was named `connector` hold
        # `regressor`: load them without a deprecation warning.
        config = dict(config)
        if "regressor" in config:
            config.setdefault("connector", config.pop("regressor"))
        return super().from_config(config)

    @staticmethod
    def default_pair_weights(n):
        return [1.0] * n

    def configure_pair(self, index, teacher_shape, student_shape, dtype, names):
        where = self.describe_pair(index, names)
        if len(teacher_shape) != len(student_shape) or len(
            teacher_shape
        ) not in (2, 4):
            raise ValueError(
                f"FitNetsHint cannot pair {where}: shapes {teacher_shape} and "
                f"{student_shape}. Both must be (B, C) or (B, H, W, C)."
            )
        same = teacher_shape[1:] == student_shape[1:]
        if self.connector == "never" and not same:
            raise ValueError(
                f"FitNetsHint with connector='never' cannot pair {where}: "
                f"shapes {teacher_shape} and {student_shape} differ. Use "
                "connector='auto' (a regressor where the shapes differ) or "
                "'always'."
            )
        if self.connector == "never" or (self.connector == "auto" and same):
            return None
        return Connector(
            student_shape,
            teacher_shape,
            kind="regressor",
            dtype=dtype,
            name=f"{self.name}_regressor_{index}",
        )

    def pair_loss(self, index, teacher, student):
        return fitnets_hint_loss(teacher, student, reduction="none")

    def get_config(self):
        config = super().get_config()
        config.update(connector=self.connector)
        return config
