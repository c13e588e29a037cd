"""Batch-level helpers: example weights, weighted means over pairs, norms.

The relational losses (RKD, SP, PKT) compare the examples of a batch with
each other. `sample_weight` acts on them as a *frequency* weight: a sum over
pairs `(i, j)` weights each pair by `w_i * w_j`, a sum over triplets by
`w_i * w_j * w_k`, and a sum over one index (a row normalisation) by `w_j`;
a mean divides by the sum of the same weights. All-ones weights give the
unweighted formula, a weight of 0 removes an example (its features change
nothing), and a weight of 2 counts an example twice (exactly so where the
official code keeps the diagonal). Scaling every weight by the same factor
changes nothing: the weights say how examples count relative to each other.
"""

from keras import ops


def as_matrix(x):
    """`x` as float32 `(B, D)`: features flattened per example."""
    x = ops.cast(x, "float32")
    if len(x.shape) == 2:
        return x
    return ops.reshape(x, (ops.shape(x)[0], -1))


def example_weights(sample_weight, like):
    """`(B,)` float32 weights: `sample_weight`, or ones shaped like `like`."""
    if sample_weight is None:
        return ops.ones((ops.shape(like)[0],), "float32")
    return ops.cast(ops.reshape(sample_weight, (-1,)), "float32")


def safe_divide(numerator, denominator):
    """`numerator / denominator`, and 0 where the denominator is 0."""
    positive = ops.greater(denominator, 0.0)
    return ops.where(
        positive, numerator / ops.where(positive, denominator, 1.0), 0.0
    )


def off_diagonal(size):
    """`(size, size)` float32 mask: 1 off the diagonal, 0 on it."""
    return 1.0 - ops.eye(size, dtype="float32")


def pair_weights(w, mask=None):
    """`w_i * w_j` for every pair, times `mask` if given."""
    weights = ops.expand_dims(w, 1) * ops.expand_dims(w, 0)
    return weights if mask is None else weights * mask


def weighted_mean(values, weights):
    """`sum(weights * values) / sum(weights)` (0 when the weights are 0)."""
    return safe_divide(ops.sum(weights * values), ops.sum(weights))


def safe_norm(x, axis=-1, keepdims=False):
    """The L2 norm along `axis` with a zero (not NaN) gradient at 0."""
    squares = ops.sum(ops.square(x), axis=axis, keepdims=keepdims)
    positive = ops.greater(squares, 0.0)
    return ops.where(positive, ops.sqrt(ops.where(positive, squares, 1.0)), 0.0)


def squared_distances_from_gram(norms_a, norms_b, gram):
    """`||a_i - b_j||^2 = |a_i|^2 + |b_j|^2 - 2 a_i.b_j`, clamped at 0
    against rounding; `norms_*` broadcast against `gram` (NST's Gaussian
    kernel and the domain-adaptation MMD share it)."""
    return ops.maximum(norms_a + norms_b - 2.0 * gram, 0.0)


def huber(x):
    """Smooth L1 (Huber with delta 1): `x^2 / 2` for `|x| < 1`, else
    `|x| - 1/2` (PyTorch `smooth_l1_loss`, the official RKD's)."""
    magnitude = ops.abs(x)
    return ops.where(
        ops.less(magnitude, 1.0), 0.5 * ops.square(x), magnitude - 0.5
    )
