"""The terms of joint distillation and domain adaptation: pure functions.

- `multi_kernel_mmd`: the maximum mean discrepancy between a source and a
  target batch of features under a sum of Gaussian kernels (DAN, Long et
  al., ICML 2015, as the official code of Nguyen-Meidine et al. computes it:
  `mmd_rbf_noaccelerate`, 5 kernels, bandwidth multiplier 2, base bandwidth
  the mean off-diagonal squared distance of the pooled batch divided by 4,
  held constant for the gradient, biased quadratic estimator).
- `adaptation_ramp`: the weight of the MMD term, `2 / (1 + exp(-10 p)) - 1`
  for training progress `p` in [0, 1] (DANN's ramp).
- `progressive_weight`: the weight of distillation, growing geometrically
  from `start` at the first epoch to `end` after the last (`beta`).

Reference: Nguyen-Meidine, Granger, Kiran, Dolz, Blais-Morin, "Joint
Progressive Knowledge Distillation and Unsupervised Domain Adaptation",
IJCNN 2020 (https://arxiv.org/abs/2005.07839; code: LIVIAETS/KD_UDA).
"""

import math

from keras import ops

from keras_kd.losses import pairwise


def multi_kernel_mmd(
    source, target, *, kernels=5, multiplier=2.0, bandwidth=None
):
    """Squared MMD of two feature batches under `kernels` Gaussian kernels.

    `K(x, y) = sum_i exp(-||x - y||^2 / (b * multiplier^i))` over `i = 0 ..
    kernels - 1`, with `b = bandwidth / multiplier^(kernels // 2)`, and
    `MMD^2 = mean K(s, s') + mean K(t, t') - 2 mean K(s, t)` (the biased
    estimator: diagonals included). `bandwidth` defaults to the mean
    squared distance between distinct rows of the pooled batch, taken as a
    constant for the gradient (the official code reads it from `.data`).

    Args:
        source: `(B_s, ...)` features, flattened per example.
        target: `(B_t, ...)` features of the same size per example.
        kernels: number of kernels. Defaults to `5`.
        multiplier: ratio between neighbouring bandwidths. Defaults to `2.0`.
        bandwidth: a fixed base bandwidth. Defaults to `None` (from the
            batch).

    Returns:
        A float32 scalar, >= 0 up to rounding.

    Example:

    >>> import numpy as np
    >>> x = np.random.default_rng(0).normal(size=(6, 3)).astype("float32")
    >>> abs(float(multi_kernel_mmd(x, x))) < 1e-6  # one distribution
    True
    """
    s = pairwise.as_matrix(source)
    t = pairwise.as_matrix(target)
    total = ops.concatenate([s, t], axis=0)
    n = ops.shape(total)[0]
    squares = ops.sum(ops.square(total), axis=1)
    distances = pairwise.squared_distances_from_gram(
        ops.expand_dims(squares, 1),
        ops.expand_dims(squares, 0),
        ops.matmul(total, ops.transpose(total)),
    )
    if bandwidth is None:
        count = ops.cast(n * n - n, "float32")
        base = ops.stop_gradient(ops.sum(distances) / count)
    else:
        base = ops.cast(bandwidth, "float32")
    base = base / (multiplier ** (kernels // 2))
    kernel = ops.zeros_like(distances)
    for i in range(kernels):
        kernel = kernel + ops.exp(-distances / (base * multiplier**i))
    rows = ops.shape(s)[0]
    xx = kernel[:rows, :rows]
    yy = kernel[rows:, rows:]
    xy = kernel[:rows, rows:]
    return ops.mean(xx) + ops.mean(yy) - 2.0 * ops.mean(xy)


def adaptation_ramp(progress):
    """DANN's ramp `2 / (1 + exp(-10 p)) - 1`: 0 at `p = 0`, 0.987 at 0.5."""
    return 2.0 / (1.0 + math.exp(-10.0 * float(progress))) - 1.0


def progressive_weight(epoch, epochs, *, start=0.1, end=0.9):
    """`start * (end / start) ** (epoch / epochs)` for epoch `0 ..
    epochs - 1`: the official `beta` (0.1 growing towards 0.9)."""
    return start * math.exp(math.log(end / start) * epoch / epochs)
