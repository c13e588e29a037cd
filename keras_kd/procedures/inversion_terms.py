"""The terms of teacher inversion (DeepInversion): pure functions.

Each is written with `keras.ops` in float32 and reduces over the whole
synthesised batch, as the official code does (`deepinversion.py`,
`cifar10/deepinversion_cifar10.py` of NVlabs/DeepInversion). Images are
channels-last, `(B, H, W, C)`, in the units the teacher normalises to.

Reference: Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer
via DeepInversion", CVPR 2020 (https://arxiv.org/abs/1912.08795).
"""

from keras import ops

TV_MODES = ("official", "paper")


def _float32(x):
    return ops.cast(x, "float32")


def _norm(x):
    """The unsquared L2 (Frobenius) norm of a whole tensor."""
    return ops.sqrt(ops.sum(ops.square(x)))


def batch_norm_statistics_loss(
    inputs, moving_mean, moving_variance, *, axis=-1
):
    """DeepInversion's feature-statistics term for one BatchNormalization
    layer: `||mu - moving_mean||_2 + ||var - moving_variance||_2`.

    `mu` and `var` are the statistics of the layer's *input* batch over
    every axis but `axis` (batch and spatial positions); the variance is the
    population one (`unbiased=False` in the official hook), and both norms
    are unsquared.

    Args:
        inputs: the layer's input, e.g. `(B, H, W, C)` or `(B, C)`.
        moving_mean: the layer's `moving_mean`, `(C,)`.
        moving_variance: the layer's `moving_variance`, `(C,)`.
        axis: the normalised (channel) axis. Defaults to `-1`.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> x = np.array([[1.0, 0.0], [3.0, 0.0]], "float32")
    >>> round(float(batch_norm_statistics_loss(x, [2.0, 0.0], [1.0, 1.0])), 4)
    1.0
    """
    x = _float32(inputs)
    rank = len(x.shape)
    axis = axis % rank
    reduce = tuple(i for i in range(rank) if i != axis)
    mean = ops.mean(x, axis=reduce)
    variance = ops.mean(
        ops.square(x - ops.mean(x, axis=reduce, keepdims=True)), axis=reduce
    )
    return _norm(mean - _float32(moving_mean)) + _norm(
        variance - _float32(moving_variance)
    )


def total_variation(images, *, mode="official"):
    """The total-variation prior of DeepInversion.

    `mode="official"` (the official code): the sum of the unsquared L2 norms,
    over the whole batch, of the differences between horizontal, vertical
    and both diagonal neighbours. `mode="paper"`: horizontal and vertical
    neighbours only.

    Args:
        images: `(B, H, W, C)`.
        mode: `"official"` or `"paper"`. Defaults to `"official"`.

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> x = np.zeros((1, 2, 2, 1), "float32")
    >>> x[0, 0, 0, 0] = 1.0
    >>> float(total_variation(x, mode="paper"))  # one step right, one down
    2.0
    """
    if mode not in TV_MODES:
        raise ValueError(
            f"Unknown total-variation mode={mode!r}; expected one of "
            f"{TV_MODES}."
        )
    x = _float32(images)
    right = x[:, :, :-1, :] - x[:, :, 1:, :]
    down = x[:, :-1, :, :] - x[:, 1:, :, :]
    total = _norm(right) + _norm(down)
    if mode == "official":
        up_right = x[:, 1:, :-1, :] - x[:, :-1, 1:, :]
        down_right = x[:, :-1, :-1, :] - x[:, 1:, 1:, :]
        total = total + _norm(up_right) + _norm(down_right)
    return total


def image_l2(images):
    """The L2 prior: the unsquared norm of the whole batch of images."""
    return _norm(_float32(images))


def _kl_rows(p, q):
    """KL(p || q) per row of probabilities (natural log; 0 log 0 = 0)."""
    ratio = ops.where(p > 0, ops.log(ops.maximum(p, 1e-30)), 0.0) - ops.where(
        p > 0, ops.log(ops.maximum(q, 1e-30)), 0.0
    )
    return ops.sum(p * ratio, axis=-1)


def jensen_shannon_divergence(
    teacher_logits, student_logits, *, temperature=3.0
):
    """Per-example Jensen-Shannon divergence (natural log) of the two
    networks' softmax outputs at `temperature`: `(KL(p_T || M) +
    KL(p_S || M)) / 2` with `M = (p_T + p_S) / 2`; between 0 and log 2.

    Returns:
        `(B,)` float32.
    """
    p_teacher = ops.softmax(_float32(teacher_logits) / temperature, axis=-1)
    p_student = ops.softmax(_float32(student_logits) / temperature, axis=-1)
    middle = 0.5 * (p_teacher + p_student)
    return 0.5 * (_kl_rows(p_teacher, middle) + _kl_rows(p_student, middle))


def adaptive_competition_loss(
    teacher_logits, student_logits, *, temperature=3.0
):
    """Adaptive DeepInversion's competition term: `1 - JS(p_T, p_S)`,
    averaged over the batch; small where teacher and student disagree.

    Follows the paper: the official code computes `KL(M || P)` (arguments
    reversed) on probabilities clipped to [0.01, 0.99].

    Args:
        teacher_logits: `(B, K)`.
        student_logits: `(B, K)`.
        temperature: softmax temperature. Defaults to `3.0` (the official
            value).

    Returns:
        A float32 scalar.

    Example:

    >>> import numpy as np
    >>> z = np.array([[2.0, 0.0, -1.0]], "float32")
    >>> float(adaptive_competition_loss(z, z))  # they agree: no reward
    1.0
    """
    return 1.0 - ops.mean(
        jensen_shannon_divergence(
            teacher_logits, student_logits, temperature=temperature
        )
    )
