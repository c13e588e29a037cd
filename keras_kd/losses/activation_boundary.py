"""Activation boundary (AB) distillation: Heo et al., AAAI 2019."""

import math
import warnings

import keras
from keras import ops

from keras_kd.connectors import Connector
from keras_kd.losses import registry
from keras_kd.losses.base import CONNECTOR_CHOICES
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.tap_check import describe_boundary_problem
from keras_kd.losses.tensors import flatten_per_example
from keras_kd.losses.tensors import reduce_per_example
from keras_kd.losses.tensors import to_float32
from keras_kd.losses.tensors import validate_rank
from keras_kd.losses.tensors import validate_reduction
from keras_kd.losses.tensors import validate_same_shape
from keras_kd.losses.validation import check_real
from keras_kd.losses.validation import is_graph_value

__all__ = [
    "ActivationBoundary",
    "activation_boundary_loss",
    "boundary_agreement",
]

_RANK_HINT = (
    "Pass a dense pre-activation (B, C) or a feature map (B, H, W, C); map "
    "the student to the teacher's shape with a connector first."
)


def _check_margin(margin):
    return check_real(
        margin,
        "margin",
        minimum=0.0,
        hint="The margin is the distance the student pre-activation must "
        "keep from zero; pass a finite number >= 0, e.g. the official "
        "margin=1.0.",
    )


def _validate_inputs(teacher, student, what):
    validate_rank(
        teacher,
        (2, 4),
        name="teacher_preactivation",
        what=what,
        hint=_RANK_HINT,
    )
    validate_rank(
        student,
        (2, 4),
        name="student_preactivation",
        what=what,
        hint=_RANK_HINT,
    )
    validate_same_shape(
        teacher,
        student,
        what=what,
        hint="Map the student pre-activation to the teacher's shape with a "
        "connector (1x1 Conv2D + BatchNormalization) before the loss.",
    )


def activation_boundary_loss(
    teacher_preactivation,
    student_preactivation,
    margin=1.0,
    *,
    reduction="mean",
):
    """Activation-boundary loss: squared hinge on the teacher's on/off states.

    Transfers the teacher's activation boundaries: for every neuron, whether
    its pre-activation is positive ("on") or not ("off"). Only the sign of the
    teacher tensor is used, so a post-ReLU teacher tensor gives the same loss.
    The student pre-activation `s` (already mapped to the teacher's shape by
    a connector) is pushed at least `margin` to the teacher's side of zero:

        L_AB = (1/B) * sum_{b,h,w,c} ( 1[t>0]  * relu(margin - s)^2
                                     + 1[t<=0] * relu(margin + s)^2 )

    i.e. a sum over all non-batch elements and a mean over the batch (not a
    mean over elements: the loss grows with H*W*C). The teacher is treated as
    a constant (`stop_gradient`). Computed in float32 whatever the input
    dtype.

    Reference:
        Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of
        Activation Boundaries Formed by Hidden Neurons", AAAI 2019,
        https://arxiv.org/abs/1811.03233. Official code:
        https://github.com/bhheo/AB_distillation

    Args:
        teacher_preactivation: Teacher pre-activation, shape `(B, C)` or
            `(B, H, W, C)`.
        student_preactivation: Student pre-activation after the connector,
            same shape as `teacher_preactivation`.
        margin: The margin `mu`, a finite number `>= 0` (not a bool), or a
            tensor / variable, which is not validated. Defaults to `1.0`.
        reduction: `"mean"` for the batch mean (a scalar) or `"none"` for
            per-example values of shape `(B,)`. Defaults to `"mean"`.

    Returns:
        A float32 scalar (`reduction="mean"`) or a float32 `(B,)` tensor
        (`reduction="none"`).

    Raises:
        ValueError: If `margin` is negative, NaN or infinite, the inputs are
            not rank 2 or 4, their shapes differ, or `reduction` is unknown.
        TypeError: If `margin` is not a number (a bool included).

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, -1.0]], dtype="float32")  # neuron 0 on, 1 off
    >>> s = np.array([[0.5, 3.0]], dtype="float32")
    >>> # (1 - 0.5)^2 + (1 + 3)^2 = 0.25 + 16
    >>> float(activation_boundary_loss(t, s, margin=1.0))
    16.25
    """
    validate_reduction(reduction)
    if not is_graph_value(margin):
        _check_margin(margin)
    teacher = ops.stop_gradient(to_float32(teacher_preactivation))
    student = to_float32(student_preactivation)
    _validate_inputs(teacher, student, "activation_boundary_loss")
    margin = to_float32(margin)
    # One branch: relu(mu - s) where the teacher is on, relu(mu + s) where it
    # is off, i.e. relu(mu - sign * s) with sign = +1 / -1 (half the work of
    # computing both masked terms; identical values).
    sign = ops.where(ops.greater(teacher, 0.0), 1.0, -1.0)
    per_element = ops.square(ops.relu(margin - sign * student))
    per_example = ops.sum(flatten_per_example(per_element), axis=1)
    return reduce_per_example(per_example, reduction)


def boundary_agreement(
    teacher_preactivation, student_preactivation, *, reduction="mean"
):
    """Fraction of neurons whose on/off state the student reproduces.

    The true (non-differentiable) AB objective, useful as a metric:

        agreement = mean_{h,w,c} 1[ 1[t>0] == 1[s>0] ]   per example,

    then the batch mean. 1.0 means every activation boundary is transferred.

    Reference:
        Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of
        Activation Boundaries Formed by Hidden Neurons", AAAI 2019,
        https://arxiv.org/abs/1811.03233. Official code:
        https://github.com/bhheo/AB_distillation

    Args:
        teacher_preactivation: Teacher pre-activation, shape `(B, C)` or
            `(B, H, W, C)`.
        student_preactivation: Student pre-activation after the connector,
            same shape as `teacher_preactivation`.
        reduction: `"mean"` for the batch mean (a scalar) or `"none"` for
            per-example values of shape `(B,)`. Defaults to `"mean"`.

    Returns:
        A float32 scalar or `(B,)` tensor with values in `[0, 1]`.

    Raises:
        ValueError: If the inputs are not rank 2 or 4, their shapes differ,
            or `reduction` is unknown.

    Example:

    >>> import numpy as np
    >>> t = np.array([[2.0, -1.0, 0.5, -3.0]], dtype="float32")
    >>> s = np.array([[1.0, 1.0, 0.1, -0.2]], dtype="float32")
    >>> float(boundary_agreement(t, s))
    0.75
    """
    validate_reduction(reduction)
    teacher = ops.stop_gradient(to_float32(teacher_preactivation))
    student = ops.stop_gradient(to_float32(student_preactivation))
    _validate_inputs(teacher, student, "boundary_agreement")
    agree = ops.cast(
        ops.equal(ops.greater(teacher, 0.0), ops.greater(student, 0.0)),
        "float32",
    )
    per_example = ops.mean(flatten_per_example(agree), axis=1)
    return reduce_per_example(per_example, reduction)


def _keras_kd_taps(stages):
    """Every stage's last ReLU, in teacher and student."""
    relus = [f"stage{i}_relu" for i in range(1, stages + 1)]
    return dict(teacher_layer_name=relus, student_layer_name=relus)


@registry.register(
    "ab", "activation_boundary", taps={"keras_kd": _keras_kd_taps}
)
@keras.saving.register_keras_serializable(package="keras_kd")
class ActivationBoundary(DistillationLoss):
    """Activation boundary transfer over one or several layer pairs.

    Transfers where each teacher neuron switches on and off: for every pair,
    `activation_boundary_loss(t, r(s), margin)` on the teacher's and the
    student's **pre-activation** tensors, where `r` is a connector (1x1
    `Conv2D` without bias + `BatchNormalization`, He-normal init; `Dense` +
    BN for rank-2 features) built when the channel counts differ. Pairs are
    combined as `sum_i pair_weight_i * L_i`; the official weights are
    `2^(i - n + 1)` from the shallowest pair to the deepest (1/4, 1/2, 1 for
    three pairs). Logs `boundary_agreement` (fraction of teacher neurons
    whose on/off state the student reproduces), per pair when there are
    several. Use `keras_kd.callbacks.ActivationBoundarySchedule` for the
    paper's two-stage training.

    Scale. The official code sums the squared hinge over every element and
    scales the term by `3e-3` (`preset="paper"`), so the term grows with
    `H * W * C`: on a small 28x28 CNN it dwarfs a task loss near 1, even
    after weighting (the logged `activation_boundary_loss` in
    `benchmarks/results/defaults_search.md`). The library default
    (`normalize=True`, weight 1) divides the summed term by the
    pair-weighted element count `sum_i pair_weight_i * H_i * W_i * C_i`:
    the term becomes a weighted average of the per-element hinge, so one
    weight suits any feature size, and the pairs keep the official code's
    relative weights (on a network whose stages halve `H * W * C`,
    `2^(i - n + 1)` makes every pair count the same). On keras_kd's panel
    (AB initialisation then cross-entropy, optimizer restarted), the
    official scale lost accuracy against the student alone with a small
    student under SGD, where the library default stays inside the noise, as
    it does with a tiny student under Adam, whose updates ignore the loss
    scale; with KD after the initialisation the small student gains.
    Measured: `benchmarks/results/defaults_search.md` (the official scale)
    and `benchmarks/results/panel.md` (the library default).

    Taps: by default both sides read the pre-activation of the named layer:
    name an activation layer (`ReLU`, `Activation("relu")`, ...) and its
    input is read, or a layer with a fused activation (`Conv2D(...,
    activation="relu")`) and its output before the activation is read. If
    the named layer's output already is the pre-activation (the
    `BatchNormalization` or `Add` right before a ReLU, the official taps),
    pass `teacher_tap="output"` / `student_tap="output"`.

    Reference:
        Heo, Lee, Yun, Choi, "Knowledge Transfer via Distillation of
        Activation Boundaries Formed by Hidden Neurons", AAAI 2019.
        Official code: https://github.com/bhheo/AB_distillation
        (RepDistiller `distiller_zoo/AB.py` for the weights).

    Args:
        teacher_layer_name: teacher layer name, or a list (one per pair,
            shallowest first).
        student_layer_name: student layer name(s), same length.
        margin: the margin `mu`, a finite number `>= 0` (not a bool).
            Defaults to `1.0`.
        pair_weights: one weight per pair, each a finite number `>= 0`.
            Defaults to `2^(i - n + 1)`.
        connector: `"auto"` (a connector when channel counts differ, as in
            the method description), `"always"` (as the official code, which
            builds one for every pair) or `"never"`. Defaults to `"auto"`.
        teacher_tap: where to read the teacher layers. Defaults to
            `"preactivation"` (only its sign is used).
        student_tap: where to read the student layers. Defaults to
            `"preactivation"`.
        normalize: divide the official summed term by the pair-weighted
            number of elements per example (`sum_i pair_weight_i * H_i *
            W_i * C_i` of the teacher tensors), so that one weight suits any
            feature size while the pairs keep their official relative
            weights. (With a spatial size unknown until run time, each pair
            is divided by its own element count.) Defaults to `True` with
            `preset="library"` and `False` (the official sum) with
            `preset="paper"`.
        preset: `"library"` (default: `normalize=True`, weight `1.0`) or
            `"paper"` (the official sum over elements, weight `3e-3`).
        name: name used in logs and `set_loss_weights`. Defaults to
            `"activation_boundary"`.

    Example:

    >>> ab = ActivationBoundary(["t_relu1", "t_relu2"], ["s_relu1", "s_relu2"])
    >>> ab.pair_weights
    [0.5, 1.0]
    """

    default_weight = 1.0
    paper_weight = 3e-3
    default_tap = "preactivation"
    initialization_stage = True
    pair_metric_names = ("boundary_agreement",)

    def __init__(
        self,
        teacher_layer_name,
        student_layer_name,
        *,
        margin=1.0,
        pair_weights=None,
        connector="auto",
        normalize=None,
        teacher_tap=None,
        student_tap=None,
        name="activation_boundary",
        **kwargs,
    ):
        margin = _check_margin(margin)
        if normalize is None:
            normalize = kwargs.get("preset", "library") != "paper"
        if not isinstance(normalize, bool):
            raise TypeError(
                f"`normalize` must be True or False; received {normalize!r}."
            )
        if connector not in CONNECTOR_CHOICES:
            raise ValueError(
                f"`connector` must be one of {CONNECTOR_CHOICES}; received "
                f"{connector!r}. 'auto' builds a connector where the channel "
                "counts differ, 'always' for every pair (the official code), "
                "'never' none."
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
        self.margin = float(margin)
        self.connector = connector
        self.normalize = normalize
        self._weighted_elements = None

    @staticmethod
    def default_pair_weights(n):
        return [2.0 ** (i - n + 1) for i in range(n)]

    def configure_pair(self, index, teacher_shape, student_shape, dtype, names):
        where = self.describe_pair(index, names)
        for role, shape in (
            ("teacher", teacher_shape),
            ("student", student_shape),
        ):
            if len(shape) not in (2, 4):
                raise ValueError(
                    f"ActivationBoundary needs dense (B, C) or spatial "
                    f"(B, H, W, C) pre-activations; the {role} tensor of "
                    f"{where} has shape {shape}. Tap a Dense or Conv layer's "
                    "activation."
                )
        if len(teacher_shape) != len(student_shape) or (
            teacher_shape[1:-1] != student_shape[1:-1]
        ):
            raise ValueError(
                f"ActivationBoundary cannot pair {where}: shapes "
                f"{teacher_shape} and {student_shape} differ in more than "
                "the channel axis (a 1x1 connector maps channels only). Tap "
                "layers with the same spatial size."
            )
        differ = teacher_shape[-1] != student_shape[-1]
        if self.connector == "never" and differ:
            raise ValueError(
                f"ActivationBoundary with connector='never' cannot pair "
                f"{where}: {student_shape[-1]} student channels vs "
                f"{teacher_shape[-1]} teacher channels. Use connector='auto'."
            )
        if self.connector == "always" or (self.connector == "auto" and differ):
            return Connector(
                student_shape,
                teacher_shape,
                kind="projection",
                dtype=dtype,
                name=f"{self.name}_connector_{index}",
            )
        return None

    def check_models(self, teacher, student):
        """Warns when a teacher tap cannot hold a ReLU boundary at zero.

        AB reads only the sign of the teacher tensor, so that tensor must be
        a pre-activation feeding a ReLU-like activation (the output of a
        linear layer, `BatchNormalization` or `Add` right before the ReLU,
        or `where="preactivation"` of the ReLU / of a layer with a fused
        ReLU), or a ReLU-like output (same sign). A `UserWarning` names the
        layer and what to tap instead when it reads a one-signed activation
        (sigmoid, softmax, softplus: every neuron always "on"), another
        non-ReLU activation, a pooling layer, the model's logits (a final
        layer without activation) or a linear output that does not feed a
        ReLU. Training still runs. The Distiller calls this once.

        Args:
            teacher: the teacher `keras.Model`.
            student: the student `keras.Model` (not checked: its tensor
                goes through a connector and is trained to fit).

        Returns:
            `None`.
        """
        for tap, _ in self.pair_taps:
            if tap is None:
                continue
            problem = describe_boundary_problem(teacher, tap)
            if problem is None:
                continue
            warnings.warn(
                f"{type(self).__name__} '{self.name}': the teacher "
                f"'{teacher.name}' {problem}. Activation boundaries need a "
                "tensor whose sign is a ReLU's on/off state: tap the "
                "BatchNormalization / Add / linear layer right before a ReLU "
                "with teacher_tap='output', or name the ReLU (or a layer "
                "with a fused ReLU) with teacher_tap='preactivation'.",
                UserWarning,
                stacklevel=2,
            )

    def configure(self, teacher_shapes, student_shapes, student_dtype, names):
        super().configure(teacher_shapes, student_shapes, student_dtype, names)
        # Elements per example of each teacher tensor; None when a spatial
        # size is only known at run time (pair_loss then counts each pair).
        weighted = None
        if all(None not in shape[1:] for shape in teacher_shapes):
            weighted = sum(
                w * math.prod(shape[1:])
                for w, shape in zip(self.pair_weights, teacher_shapes)
            )
            weighted = float(weighted) if weighted > 0 else 1.0
        self._weighted_elements = weighted

    def pair_loss(self, index, teacher, student):
        loss = activation_boundary_loss(
            teacher, student, self.margin, reduction="none"
        )
        if self.normalize:
            elements = self._weighted_elements
            if elements is None:  # a dynamic spatial size: count at run time
                shape = ops.shape(teacher)
                elements = 1
                for size in shape[1:]:
                    elements = elements * size
                elements = ops.cast(elements, "float32")
            loss = loss / elements
        return loss

    def pair_metrics(self, index, teacher, student):
        return {
            "boundary_agreement": boundary_agreement(
                teacher, student, reduction="none"
            )
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            margin=self.margin,
            connector=self.connector,
            normalize=self.normalize,
        )
        return config
