"""Domain-adaptation terms vs float64 NumPy references written with loops.

- MMD: the pooled batch's pairwise squared distances one pair at a time,
  the base bandwidth their off-diagonal mean / multiplier^(kernels // 2),
  the kernel sums, then the three block means (the biased estimator of the
  official `mmd_rbf_noaccelerate`; unequal batch sizes too).
- The weights: DANN's ramp and the official geometric `beta`.
Tolerance: rtol 1e-5 (float32 vs float64).
"""

import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from domain_references import ref_mmd  # noqa: E402
from references import ref_numeric_grad  # noqa: E402

from keras_kd.procedures import domain_terms as D  # noqa: E402


def _batches(seed, ns=6, nt=6, dim=4, shift=0.5):
    rng = np.random.default_rng(seed)
    s = rng.normal(size=(ns, dim)).astype("float32")
    t = (rng.normal(size=(nt, dim)) + shift).astype("float32")
    return s, t


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("sizes", [(6, 6), (5, 7)])
def test_mmd_matches_reference(seed, sizes):
    s, t = _batches(seed, *sizes)
    np.testing.assert_allclose(
        to_numpy(D.multi_kernel_mmd(s, t)), ref_mmd(s, t), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    "kernels, multiplier, bandwidth", [(3, 1.5, None), (1, 2.0, 4.0)]
)
def test_mmd_options_match_reference(kernels, multiplier, bandwidth):
    s, t = _batches(3)
    out = D.multi_kernel_mmd(
        s, t, kernels=kernels, multiplier=multiplier, bandwidth=bandwidth
    )
    np.testing.assert_allclose(
        to_numpy(out),
        ref_mmd(s, t, kernels, multiplier, bandwidth),
        rtol=1e-5,
        atol=1e-6,
    )


def test_mmd_flattens_feature_maps_and_grows_with_the_shift():
    rng = np.random.default_rng(4)
    s = rng.normal(size=(4, 2, 2, 3)).astype("float32")
    t = (rng.normal(size=(4, 2, 2, 3)) + 2.0).astype("float32")
    np.testing.assert_allclose(
        to_numpy(D.multi_kernel_mmd(s, t)), ref_mmd(s, t), rtol=1e-5
    )
    near = float(to_numpy(D.multi_kernel_mmd(*_batches(5, shift=0.1))))
    far = float(to_numpy(D.multi_kernel_mmd(*_batches(5, shift=3.0))))
    assert far > near


def test_mmd_gradient_holds_the_bandwidth_constant():
    s, t = _batches(6, 3, 3, 2)
    pooled = np.concatenate([s, t]).astype(np.float64)
    n = len(pooled)
    squared = ((pooled[:, None] - pooled[None]) ** 2).sum(-1)
    bandwidth = squared.sum() / (n * n - n)

    def fn(v):
        return D.multi_kernel_mmd(s, v)

    _, (grad,) = value_and_grad(fn, t)
    numeric = ref_numeric_grad(lambda v: ref_mmd(s, v, bandwidth=bandwidth), t)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


def test_weights_follow_the_official_formulas():
    assert D.adaptation_ramp(0.0) == 0.0
    assert D.adaptation_ramp(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1)
    epochs = 400
    growth = math.log(0.9 / 0.1) / epochs
    for epoch in (1, 2, 200, 400):  # the official loop counts from 1
        assert D.progressive_weight(epoch - 1, epochs) == pytest.approx(
            0.1 * math.exp(growth * (epoch - 1))
        )
