"""Float64 NumPy reference of the domain-adaptation MMD, pair by pair."""

import numpy as np


def ref_mmd(source, target, kernels=5, multiplier=2.0, bandwidth=None):
    """Multi-kernel Gaussian MMD^2 (the biased estimator of the official
    `mmd_rbf_noaccelerate`): pooled pairwise squared distances one pair at
    a time, the base bandwidth their off-diagonal mean divided by
    `multiplier ** (kernels // 2)`, the kernel sum, the three block
    means."""
    s = np.asarray(source, np.float64).reshape(len(source), -1)
    t = np.asarray(target, np.float64).reshape(len(target), -1)
    total = np.concatenate([s, t])
    n = len(total)
    d = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            d[i, j] = sum((a - b) ** 2 for a, b in zip(total[i], total[j]))
    if bandwidth is None:
        bandwidth = d.sum() / (n * n - n)
    base = bandwidth / multiplier ** (kernels // 2)
    k = sum(np.exp(-d / (base * multiplier**i)) for i in range(kernels))
    m = len(s)
    return k[:m, :m].mean() + k[m:, m:].mean() - 2 * k[:m, m:].mean()
