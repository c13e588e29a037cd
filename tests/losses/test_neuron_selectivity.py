"""neuron_selectivity_loss vs a float64 NumPy reference with explicit kernels.

The reference builds every pairwise kernel value with Python loops over
channel pairs (no Gram-matrix shortcut). Tolerance: rtol=1e-4, atol=1e-5.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled_unknown_batch  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import intermediate_shapes  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from keras import ops  # noqa: E402

from keras_kd.losses.neuron_selectivity import neuron_selectivity_loss  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def np_rows(feature_map, eps=1e-12):
    """(H, W, C) -> list of C unit-norm rows of length H*W (float64)."""
    f = np.asarray(feature_map, np.float64)
    rows = []
    for c in range(f.shape[-1]):
        row = f[:, :, c].reshape(-1)
        rows.append(row / max(np.sqrt(np.sum(row**2)), eps))
    return rows


def np_kernel(x, y, kernel, degree=2, offset=0.0, bandwidth=1.0):
    if kernel == "linear":
        return float(np.dot(x, y))
    if kernel == "polynomial":
        return float((np.dot(x, y) + offset) ** degree)
    return float(np.exp(-np.sum((x - y) ** 2) / (2.0 * bandwidth**2)))


def np_mmd2_per_example(t, s, kernel, **options):
    out = []
    for b in range(t.shape[0]):
        t_rows, s_rows = np_rows(t[b]), np_rows(s[b])
        k_tt = np.mean(
            [np_kernel(a, c, kernel, **options) for a in t_rows for c in t_rows]
        )
        k_ss = np.mean(
            [np_kernel(a, c, kernel, **options) for a in s_rows for c in s_rows]
        )
        k_ts = np.mean(
            [np_kernel(a, c, kernel, **options) for a in t_rows for c in s_rows]
        )
        out.append(k_tt + k_ss - 2.0 * k_ts)
    return np.array(out)


def random_maps(t_shape=(3, 4, 4, 6), s_shape=(3, 4, 4, 4), seed=0):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=t_shape).astype("float32")
    # Post-ReLU-like student so the distributions differ clearly.
    s = np.maximum(rng.normal(size=s_shape), 0.0).astype("float32") + 0.1
    return t, s


KERNEL_CASES = [
    ("linear", {}),
    ("polynomial", {}),
    ("polynomial", {"degree": 3, "offset": 0.5}),
    ("polynomial", {"degree": 1, "offset": 1.0}),
    ("gaussian", {}),
    ("gaussian", {"bandwidth": 0.5}),
]


@pytest.mark.parametrize("kernel,options", KERNEL_CASES)
def test_matches_numpy(kernel, options):
    t, s = random_maps(seed=1)
    expected = np_mmd2_per_example(t, s, kernel, **options)
    per_example = neuron_selectivity_loss(
        t, s, kernel, reduction="none", **options
    )
    assert tuple(per_example.shape) == (3,)
    assert dtype_name(per_example) == "float32"
    np.testing.assert_allclose(
        ops.convert_to_numpy(per_example), expected, rtol=RTOL, atol=ATOL
    )
    mean = neuron_selectivity_loss(t, s, kernel, **options)
    assert tuple(mean.shape) == ()
    np.testing.assert_allclose(
        float(mean), expected.mean(), rtol=RTOL, atol=ATOL
    )


def test_default_is_polynomial_degree_2():
    t, s = random_maps(seed=2)
    np.testing.assert_allclose(
        float(neuron_selectivity_loss(t, s)),
        np_mmd2_per_example(t, s, "polynomial", degree=2).mean(),
        rtol=RTOL,
        atol=ATOL,
    )


def test_same_hw_different_h_and_w_is_accepted():
    t, _ = random_maps(seed=3)
    s = np.random.default_rng(3).normal(size=(3, 2, 8, 5)).astype("float32")
    np.testing.assert_allclose(
        ops.convert_to_numpy(neuron_selectivity_loss(t, s, reduction="none")),
        np_mmd2_per_example(t, s, "polynomial"),
        rtol=RTOL,
        atol=ATOL,
    )


def test_linear_mmd_is_squared_distance_of_means():
    t, s = random_maps(seed=4)
    expected = []
    for b in range(t.shape[0]):
        mean_t = np.mean(np_rows(t[b]), axis=0)
        mean_s = np.mean(np_rows(s[b]), axis=0)
        expected.append(np.sum((mean_t - mean_s) ** 2))
    np.testing.assert_allclose(
        ops.convert_to_numpy(
            neuron_selectivity_loss(t, s, "linear", reduction="none")
        ),
        expected,
        rtol=RTOL,
        atol=ATOL,
    )
    # ...and equals the kernel-mean form of the linear kernel.
    np.testing.assert_allclose(
        expected, np_mmd2_per_example(t, s, "linear"), rtol=1e-10
    )


@pytest.mark.parametrize("kernel", ["linear", "polynomial", "gaussian"])
def test_identical_inputs_give_zero(kernel):
    t, _ = random_maps(seed=5)
    loss = neuron_selectivity_loss(t, t, kernel, reduction="none")
    np.testing.assert_allclose(ops.convert_to_numpy(loss), 0.0, atol=1e-5)
    # Scaling a channel does not change its normalised row.
    np.testing.assert_allclose(
        float(neuron_selectivity_loss(t, 3.0 * t, kernel)), 0.0, atol=1e-5
    )


def test_gaussian_bandwidth_changes_value():
    t, s = random_maps(seed=6)
    narrow = float(neuron_selectivity_loss(t, s, "gaussian", bandwidth=0.5))
    wide = float(neuron_selectivity_loss(t, s, "gaussian", bandwidth=2.0))
    assert narrow > 0 and wide > 0
    assert abs(narrow - wide) > 1e-3
    variable = keras.Variable(0.5, trainable=False)
    np.testing.assert_allclose(
        float(neuron_selectivity_loss(t, s, "gaussian", bandwidth=variable)),
        narrow,
        rtol=1e-6,
    )


@pytest.mark.parametrize("kernel", ["linear", "polynomial", "gaussian"])
def test_float16_inputs(kernel):
    t, s = random_maps(seed=7)
    t16, s16 = t.astype("float16"), s.astype("float16")
    out = neuron_selectivity_loss(t16, s16, kernel)
    assert dtype_name(out) == "float32"
    reference = neuron_selectivity_loss(
        t16.astype("float32"), s16.astype("float32"), kernel
    )
    np.testing.assert_allclose(float(out), float(reference), rtol=1e-6)
    np.testing.assert_allclose(
        float(out), float(neuron_selectivity_loss(t, s, kernel)), rtol=1e-2
    )


@pytest.mark.parametrize("kernel", ["linear", "polynomial", "gaussian"])
def test_gradients_finite_and_nonzero(kernel):
    t, s = random_maps(seed=8)
    s[:, :, :, 0] = 0.0  # a dead (all-zero) student channel
    _, (t_grad, grad) = value_and_grad(
        lambda a, b: neuron_selectivity_loss(a, b, kernel), t, s
    )
    assert np.all(t_grad == 0)  # teacher is a constant (stop_gradient)
    assert np.all(np.isfinite(grad))
    assert np.any(np.abs(grad[..., 1:]) > 1e-6)


@pytest.mark.parametrize("kernel", ["linear", "polynomial", "gaussian"])
def test_no_pairwise_broadcast_tensor(kernel):
    """No intermediate as large as (B, C_T, C_S, HW) is computed.

    Every intermediate: the traced graph (TensorFlow), the jaxpr (JAX), each
    ATen op run (PyTorch); see backend_utils.intermediate_shapes.
    """
    b, h, w, c_t, c_s = 2, 4, 4, 6, 5
    rng = np.random.default_rng(10)
    shapes = intermediate_shapes(
        lambda t, s: neuron_selectivity_loss(t, s, kernel),
        rng.normal(size=(b, h, w, c_t)),
        rng.normal(size=(b, h, w, c_s)),
    )
    assert any(len(shape) == 3 for shape in shapes)  # the per-example grams
    limit = b * c_t * c_s * h * w
    for shape in shapes:
        if shape and all(d is not None for d in shape):
            assert np.prod(shape) < limit, shape


def test_compiles_with_unknown_batch_and_xla():
    t, s = random_maps(seed=9)

    def fn(a, b):
        return neuron_selectivity_loss(a, b, "gaussian", reduction="none")

    np.testing.assert_allclose(
        compiled_unknown_batch(fn, t, s),
        np_mmd2_per_example(t, s, "gaussian"),
        rtol=RTOL,
        atol=ATOL,
    )


def test_unknown_kernel():
    t, s = random_maps()
    with pytest.raises(ValueError, match="'rbf'") as info:
        neuron_selectivity_loss(t, s, "rbf")
    for name in ("linear", "polynomial", "gaussian"):
        assert name in str(info.value)


@pytest.mark.parametrize("degree", [0, -2])
def test_bad_degree_value(degree):
    t, s = random_maps()
    with pytest.raises(ValueError, match=f"degree={degree}"):
        neuron_selectivity_loss(t, s, degree=degree)


@pytest.mark.parametrize("degree", [2.5, 2.0, "2", True])
def test_bad_degree_type(degree):
    t, s = random_maps()
    with pytest.raises(TypeError, match="degree"):
        neuron_selectivity_loss(t, s, degree=degree)


@pytest.mark.parametrize("bandwidth", [0.0, -1.0])
def test_bad_bandwidth(bandwidth):
    t, s = random_maps()
    with pytest.raises(ValueError, match=f"bandwidth={bandwidth!r}"):
        neuron_selectivity_loss(t, s, "gaussian", bandwidth=bandwidth)


def test_bad_epsilon():
    t, s = random_maps()
    with pytest.raises(ValueError, match="epsilon=0"):
        neuron_selectivity_loss(t, s, epsilon=0)


def test_mismatched_hw():
    t, s = random_maps(t_shape=(2, 4, 4, 3), s_shape=(2, 5, 5, 3))
    with pytest.raises(ValueError) as info:
        neuron_selectivity_loss(t, s)
    message = str(info.value)
    assert "(2, 4, 4, 3)" in message and "(2, 5, 5, 3)" in message
    assert "H*W" in message


@pytest.mark.parametrize("shape", [(2, 16), (2, 4, 4), (2, 1, 4, 4, 3)])
def test_wrong_rank(shape):
    good = np.ones((2, 4, 4, 3), "float32")
    bad = np.ones(shape, "float32")
    for args in ((good, bad), (bad, good)):
        with pytest.raises(ValueError) as info:
            neuron_selectivity_loss(*args)
        message = str(info.value)
        assert "NST needs spatial feature maps (B, H, W, C)" in message
        assert f"received shape {shape}" in message


def test_bad_reduction():
    t, s = random_maps()
    with pytest.raises(ValueError, match="reduction='sum'"):
        neuron_selectivity_loss(t, s, reduction="sum")
