"""Flow of solution procedure (FSP): Yim, Joo, Bae & Kim, CVPR 2017."""

import keras
import numpy as np
from keras import ops

from keras_kd.connectors import Connector
from keras_kd.losses import registry
from keras_kd.losses.base import CONNECTOR_CHOICES
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.relational import MODES
from keras_kd.losses.tensors import reduce_per_example
from keras_kd.losses.tensors import validate_reduction

__all__ = [
    "FlowOfSolution",
    "flow_of_solution_loss",
    "flow_of_solution_matrix",
]


def _adaptive_pool_matrix(size_in, size_out):
    """`(size_out, size_in)` averaging matrix of PyTorch's adaptive average
    pooling: output cell `i` averages inputs `floor(i * n / m)` to
    `ceil((i + 1) * n / m) - 1`."""
    matrix = np.zeros((size_out, size_in), "float32")
    for i in range(size_out):
        start = (i * size_in) // size_out
        end = -((-(i + 1) * size_in) // size_out)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def _pool_to(x, height, width):
    """Adaptive average pooling of NHWC `x` to `(height, width)`."""
    h, w = x.shape[1], x.shape[2]
    if (h, w) == (height, width):
        return x
    x = ops.einsum("oh,bhwc->bowc", _adaptive_pool_matrix(h, height), x)
    return ops.einsum("pw,bowc->bopc", _adaptive_pool_matrix(w, width), x)


def _check_map(x, name):
    if len(x.shape) != 4 or None in tuple(x.shape[1:3]):
        raise ValueError(
            f"flow_of_solution needs feature maps (B, H, W, C) with known H "
            f"and W; `{name}` has shape {tuple(x.shape)}. Tap convolutional "
            "layers (before global pooling) of a model with a fixed input "
            "size."
        )


def flow_of_solution_matrix(bottom, top):
    """The FSP matrix between two feature maps of one network.

    `G[c1, c2] = mean_{h,w} bottom[h, w, c1] * top[h, w, c2]` per example,
    after the larger map is average-pooled to the smaller's size (adaptive
    pooling, as RepDistiller's `F.adaptive_avg_pool2d`).

    Args:
        bottom: a stage's input `(B, H1, W1, C1)`.
        top: the stage's output `(B, H2, W2, C2)`.

    Returns:
        A float32 tensor `(B, C1, C2)`.

    Example:

    >>> import numpy as np
    >>> bottom = np.ones((1, 4, 4, 2), "float32")
    >>> top = np.full((1, 2, 2, 3), 2.0, "float32")
    >>> tuple(flow_of_solution_matrix(bottom, top).shape)
    (1, 2, 3)
    """
    bottom = ops.cast(bottom, "float32")
    top = ops.cast(top, "float32")
    _check_map(bottom, "bottom")
    _check_map(top, "top")
    (h1, w1), (h2, w2) = bottom.shape[1:3], top.shape[1:3]
    if h1 > h2:
        bottom = _pool_to(bottom, h2, w2)
    elif h2 > h1:
        top = _pool_to(top, h1, w1)
    elif w1 != w2:
        bottom = _pool_to(bottom, h1, min(w1, w2))
        top = _pool_to(top, h1, min(w1, w2))
    positions = bottom.shape[1] * bottom.shape[2]
    return ops.einsum("bhwc,bhwd->bcd", bottom, top) / float(positions)


def flow_of_solution_loss(
    teacher_bottom,
    teacher_top,
    student_bottom,
    student_top,
    *,
    mode="code",
    reduction="mean",
):
    """FSP loss: squared distance between teacher and student FSP matrices.

    `G_T = flow_of_solution_matrix(teacher_bottom, teacher_top)` and the
    same for the student (`C1 x C2` each, so the channel counts must match
    between the networks; the spatial sizes need not). Per example,
    `mode="code"` (the default, RepDistiller) takes the mean of
    `(G_T - G_S)^2` over the `C1 * C2` entries; `mode="paper"` their sum
    (the paper's `||G_T - G_S||_2^2`, `C1 * C2` times larger). The teacher
    is a constant.

    Reference:
        Yim, Joo, Bae, Kim, "A Gift from Knowledge Distillation: Fast
        Optimization, Network Minimization and Transfer Learning", CVPR
        2017. Code: RepDistiller `distiller_zoo/FSP.py` (no official code).

    Args:
        teacher_bottom, teacher_top: the teacher's stage input and output.
        student_bottom, student_top: the student's.
        mode: `"code"` or `"paper"`. Defaults to `"code"`.
        reduction: `"mean"` (batch mean) or `"none"` (`(B,)`). Defaults to
            `"mean"`.

    Returns:
        A float32 scalar, or `(B,)` with `reduction="none"`.

    Example:

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.normal(size=(2, 4, 4, 3)), rng.normal(size=(2, 2, 2, 5))
    >>> float(flow_of_solution_loss(a, b, a, b))
    0.0
    """
    validate_reduction(reduction)
    if mode not in MODES:
        raise ValueError(
            f"flow_of_solution_loss: `mode` must be one of {MODES}; "
            f"received {mode!r}."
        )
    teacher = ops.stop_gradient(
        flow_of_solution_matrix(teacher_bottom, teacher_top)
    )
    student = flow_of_solution_matrix(student_bottom, student_top)
    if tuple(teacher.shape[1:]) != tuple(student.shape[1:]):
        raise ValueError(
            f"flow_of_solution_loss compares FSP matrices of equal size; the "
            f"teacher's is {tuple(teacher.shape[1:])} (channels of bottom, "
            f"top) and the student's {tuple(student.shape[1:])}. Map the "
            "student's channels to the teacher's first (FlowOfSolution's "
            "`connector='auto'`)."
        )
    squares = ops.square(teacher - student)
    reduce = ops.mean if mode == "code" else ops.sum
    return reduce_per_example(reduce(squares, axis=(1, 2)), reduction)


def _keras_kd_taps(stages):
    """Every stage's output: a FSP matrix between consecutive stages."""
    relus = [f"stage{i}_relu" for i in range(1, stages + 1)]
    return dict(
        teacher_layer_name=relus, student_layer_name=relus, connector="auto"
    )


@registry.register("fsp", "flow_of_solution", taps={"keras_kd": _keras_kd_taps})
@keras.saving.register_keras_serializable(package="keras_kd")
class FlowOfSolution(DistillationLoss):
    """Flow of solution procedure: how features flow from layer to layer.

    Transfers the *flow* between consecutive taps: for taps
    `f_0, ..., f_n` of each network (e.g. every stage's output, shallowest
    first), the FSP matrices `G_i = flow_of_solution_matrix(f_{i-1}, f_i)`
    of the student should match the teacher's (`flow_of_solution_loss`),
    one term per `i`, combined as `sum_i pair_weights[i] * L_i`. With `n + 1`
    taps there are `n` terms (and `n` pair weights).

    Training, as the paper and RepDistiller: FSP alone first (an
    initialisation stage, `keras_kd.callbacks.FlowOfSolutionSchedule`), then
    the task loss without FSP.

    Channels. The paper and RepDistiller compare FSP matrices of equal size,
    so each tap needs the same channel count in teacher and student
    (RepDistiller raises otherwise); `connector="never"` (the default)
    raises a clear error when they differ. `connector="auto"` maps each
    student tap whose channel count differs to the teacher's with a 1x1
    `Conv2D` + BatchNormalization (trained with the student, never
    exported). That connector is not in the paper: it is keras_kd's way to
    apply FSP to pairs of different widths, as most real pairs are.

    Reference:
        Yim, Joo, Bae, Kim, CVPR 2017. RepDistiller `distiller_zoo/FSP.py`
        (unweighted sum over the matrices, 30 initialisation epochs of
        240, then cross-entropy alone).

    Args:
        teacher_layer_name: at least two teacher layers, shallowest first.
        student_layer_name: the matching student layers.
        connector: `"never"` (the paper; equal channels required),
            `"auto"` (a 1x1 conv + BN where channels differ) or `"always"`.
            Defaults to `"never"`.
        mode: `"code"` (RepDistiller's mean over the matrix entries) or
            `"paper"` (their sum). Defaults to `"code"`.
        pair_weights: one weight per FSP matrix (`n` for `n + 1` taps).
            Defaults to ones (RepDistiller's sum).
        **kwargs: `teacher_tap`, `student_tap`, `preset`, `name` (see
            `DistillationLoss`). Both presets weigh the term 1.

    Example:

    >>> fsp = FlowOfSolution(["s1", "s2", "s3"], ["s1", "s2", "s3"])
    >>> fsp.num_terms, fsp.pair_weights
    (2, [1.0, 1.0])
    """

    initialization_stage = True

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        *,
        connector="never",
        mode="code",
        name="flow_of_solution",
        **kwargs,
    ):
        if connector not in CONNECTOR_CHOICES:
            raise ValueError(
                f"`connector` must be one of {CONNECTOR_CHOICES}; received "
                f"{connector!r}. 'auto' maps a student tap whose channel "
                "count differs from the teacher's with a 1x1 conv + BN, "
                "'always' every tap, 'never' none (the paper)."
            )
        if mode not in MODES:
            raise ValueError(
                f"FlowOfSolution: `mode` must be one of {MODES}; received "
                f"{mode!r}."
            )
        for what, value in (
            ("teacher_layer_name", teacher_layer_name),
            ("student_layer_name", student_layer_name),
        ):
            if isinstance(value, str) or (
                isinstance(value, (list, tuple)) and len(value) < 2
            ):
                raise ValueError(
                    f"FlowOfSolution compares the flow between consecutive "
                    f"layers, so `{what}` must list at least two layers "
                    f"(shallowest first); received {value!r}."
                )
        super().__init__(
            teacher_layer_name, student_layer_name, name=name, **kwargs
        )
        self.connector = connector
        self.mode = mode

    @classmethod
    def num_terms_of(cls, num_pairs):
        """One FSP matrix between each two consecutive taps."""
        return max(num_pairs - 1, 1)

    @staticmethod
    def default_pair_weights(n):
        """RepDistiller's unweighted sum: 1 per matrix."""
        return [1.0] * n

    def term_log_name(self, index):
        return f"{self.name}_{self.pair_label(index + 1)}"

    def configure_pair(self, index, teacher_shape, student_shape, dtype, names):
        where = self.describe_pair(index, names)
        for role, shape in (
            ("teacher", teacher_shape),
            ("student", student_shape),
        ):
            if len(shape) != 4:
                raise ValueError(
                    f"FlowOfSolution needs feature maps (B, H, W, C); the "
                    f"{role} tensor of {where} has shape {shape}. Tap "
                    "convolutional layers (before global pooling)."
                )
        differ = teacher_shape[-1] != student_shape[-1]
        if self.connector == "never" and differ:
            raise ValueError(
                f"FlowOfSolution compares FSP matrices of equal size, but "
                f"{where} have {teacher_shape[-1]} and {student_shape[-1]} "
                "channels (the paper and RepDistiller need equal channel "
                "counts). Pass connector='auto' to map the student's "
                "channels with a 1x1 conv + BN (keras_kd's extension, not "
                "in the paper), or tap layers of equal width."
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

    def compute(
        self, teacher_features, student_features, training=False, context=None
    ):
        prepared = [
            self.prepare_pair(index, t, s, training)
            for index, (t, s) in enumerate(
                zip(teacher_features, student_features)
            )
        ]
        terms = [
            flow_of_solution_loss(
                prepared[i][0],
                prepared[i + 1][0],
                prepared[i][1],
                prepared[i + 1][1],
                mode=self.mode,
                reduction="none",
            )
            for i in range(len(prepared) - 1)
        ]
        return terms, {}

    def get_config(self):
        config = super().get_config()
        config.update(connector=self.connector, mode=self.mode)
        return config
