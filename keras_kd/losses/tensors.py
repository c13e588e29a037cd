"""The tensors of the loss functions: shape and rank checks, float32, reduction.

Checks of the tensors a loss function receives (`validate_rank`,
`validate_same_shape`: what was received, what is expected, how to fix it),
the float32 cast and per-example L2 normalisation they share, and the
reduction of their per-example values. Checks of hyperparameters (numbers
set once, such as a temperature) live in `keras_kd.losses.validation`.

Every loss function in `keras_kd.losses` first computes one value per example
(shape `(B,)`, float32) and then hands it to `reduce_per_example`. The loss
classes call the functions with `reduction="none"` and do the global-batch
reduction themselves, so that the result stays correct under `tf.distribute`.
"""

from keras import ops

REDUCTIONS = ("mean", "none")


def validate_reduction(reduction):
    """Checks that `reduction` is one of `REDUCTIONS` and returns it.

    Args:
        reduction: The requested reduction, `"mean"` or `"none"`.

    Returns:
        `reduction`, unchanged.

    Raises:
        ValueError: If `reduction` is anything else.
    """
    if not isinstance(reduction, str) or reduction not in REDUCTIONS:
        raise ValueError(
            f"`reduction` must be one of {REDUCTIONS}; received "
            f"reduction={reduction!r}. Pass reduction='mean' for the batch "
            "mean (a scalar) or reduction='none' for the per-example values "
            "(shape (batch_size,))."
        )
    return reduction


def reduce_per_example(values, reduction="mean"):
    """Reduces per-example loss values over the batch.

    Args:
        values: Tensor of shape `(B,)`, one value per example.
        reduction: `"mean"` returns the batch mean (a scalar); `"none"`
            returns `values` unchanged. Defaults to `"mean"`.

    Returns:
        A scalar tensor (`"mean"`) or the `(B,)` tensor `values` (`"none"`).

    Raises:
        ValueError: If `reduction` is not `"mean"` or `"none"`, or `values`
            is not rank 1.

    Example:

    >>> import numpy as np
    >>> values = np.array([1.0, 2.0, 6.0], dtype="float32")
    >>> float(reduce_per_example(values, "mean"))
    3.0
    >>> tuple(reduce_per_example(values, "none").shape)
    (3,)
    """
    validate_reduction(reduction)
    validate_rank(
        values, (1,), name="values", what="per-example loss values (B,)"
    )
    if reduction == "none":
        return values
    return ops.mean(values)


def to_float32(x):
    """Casts `x` (tensor, variable or array of any float dtype) to float32."""
    return ops.cast(x, "float32")


def static_shape(tensor):
    """Returns the static shape of `tensor` as a tuple (`None` if unknown)."""
    return tuple(tensor.shape)


def validate_rank(tensor, ranks, *, name, what, hint=""):
    """Raises a ValueError unless `tensor` has one of the ranks in `ranks`.

    Args:
        tensor: The tensor to check.
        ranks: Tuple of accepted ranks, e.g. `(2, 4)`.
        name: The argument name, shown in the message, e.g.
            `"student_features"`.
        what: What is expected, shown first in the message, e.g.
            `"NST needs spatial feature maps (B, H, W, C)"`.
        hint: How to fix it, appended to the message. Defaults to `""`.

    Returns:
        The static shape of `tensor` as a tuple.
    """
    shape = static_shape(tensor)
    if len(shape) not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        message = (
            f"{what}; received shape {shape} (rank {len(shape)}) for "
            f"`{name}`, expected rank {expected}."
        )
        if hint:
            message += f" {hint}"
        raise ValueError(message)
    return shape


def shapes_compatible(shape_a, shape_b):
    """True if two static shapes agree wherever both dimensions are known."""
    if len(shape_a) != len(shape_b):
        return False
    return all(
        a is None or b is None or a == b for a, b in zip(shape_a, shape_b)
    )


def validate_same_shape(teacher, student, *, what, hint=""):
    """Raises a ValueError unless teacher and student static shapes match.

    Batch and other unknown (`None`) dimensions are not compared.

    Args:
        teacher: The teacher tensor.
        student: The student tensor.
        what: The function name, shown first in the message.
        hint: How to fix it, appended to the message. Defaults to `""`.
    """
    t_shape, s_shape = static_shape(teacher), static_shape(student)
    if not shapes_compatible(t_shape[1:], s_shape[1:]):
        message = (
            f"{what} needs teacher and student tensors of the same shape; "
            f"received teacher shape {t_shape} and student shape {s_shape}."
        )
        if hint:
            message += f" {hint}"
        raise ValueError(message)


def flatten_per_example(x):
    """Reshapes `(B, ...)` to `(B, N)`; works with an unknown batch size."""
    return ops.reshape(x, (ops.shape(x)[0], -1))


def l2_normalize(x, axis, epsilon):
    """`x / max(||x||_2, epsilon)` along `axis` (torch `F.normalize`).

    Written as `x * rsqrt(max(||x||^2, epsilon^2))`: the same values, and an
    all-zero slice has a finite (zero) gradient instead of NaN.

    Args:
        x: A float tensor.
        axis: The axis the norm is taken over (kept, size 1, for the
            division).
        epsilon: Lower bound on the norm, a number `> 0`.

    Returns:
        A tensor of the shape of `x`: unit L2 norm along `axis`, or zeros
        where the slice is all zero.

    Example:

    >>> import numpy as np
    >>> from keras import ops
    >>> x = np.array([[3.0, 4.0], [0.0, 0.0]], dtype="float32")
    >>> y = l2_normalize(x, axis=1, epsilon=1e-12)
    >>> ops.convert_to_numpy(y).astype("float64").round(6).tolist()
    [[0.6, 0.8], [0.0, 0.0]]
    """
    squared_norm = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return ops.multiply(
        x, ops.rsqrt(ops.maximum(squared_norm, epsilon * epsilon))
    )
