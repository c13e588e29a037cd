"""attention_map / attention_transfer_loss vs a float64 NumPy reference.

Tolerance: rtol=1e-4, atol=1e-5 (float32 vs float64); attention maps are
unit-norm, so their entries and the loss are small: atol=1e-6 there.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled_unknown_batch  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import grad  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from keras import ops  # noqa: E402

from keras_kd.losses.attention import attention_map  # noqa: E402
from keras_kd.losses.attention import attention_transfer_loss  # noqa: E402

RTOL, ATOL = 1e-4, 1e-6


def np_attention(features, p=2, eps=1e-12):
    """Paper's Q = vec(mean_c |A_c|^p), L2-normalised, loop-wise, float64."""
    f = np.asarray(features, np.float64)
    b_size, h, w, c = f.shape
    out = np.zeros((b_size, h * w))
    for b in range(b_size):
        for i in range(h):
            for j in range(w):
                out[b, i * w + j] = (
                    sum(abs(f[b, i, j, k]) ** p for k in range(c)) / c
                )
        out[b] /= max(np.sqrt(np.sum(out[b] ** 2)), eps)
    return out


def np_at_per_example(t, s, p=2):
    q_t, q_s = np_attention(t, p), np_attention(s, p)
    return np.array(
        [np.mean((q_s[b] - q_t[b]) ** 2) for b in range(t.shape[0])]
    )


def random_maps(t_shape=(3, 5, 5, 6), s_shape=(3, 5, 5, 3), seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=t_shape).astype("float32"),
        rng.normal(size=s_shape).astype("float32"),
    )


@pytest.mark.parametrize("p", [2, 1, 3, 1.5])
def test_attention_map_matches_numpy(p):
    t, _ = random_maps(seed=1)
    q = ops.convert_to_numpy(attention_map(t, p=p))
    assert q.shape == (3, 25) and q.dtype == np.float32
    np.testing.assert_allclose(q, np_attention(t, p), rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("p", [2, 4])
def test_loss_matches_numpy(p):
    t, s = random_maps(seed=2)
    expected = np_at_per_example(t, s, p)
    per_example = attention_transfer_loss(t, s, p=p, reduction="none")
    assert tuple(per_example.shape) == (3,)
    assert dtype_name(per_example) == "float32"
    np.testing.assert_allclose(
        ops.convert_to_numpy(per_example), expected, rtol=RTOL, atol=ATOL
    )
    mean = attention_transfer_loss(t, s, p=p)
    assert tuple(mean.shape) == ()
    np.testing.assert_allclose(
        float(mean), expected.mean(), rtol=RTOL, atol=ATOL
    )
    # Reference code form: (at(x) - at(y)).pow(2).mean() over batch and HW.
    np.testing.assert_allclose(
        float(mean),
        np.mean((np_attention(s, p) - np_attention(t, p)) ** 2),
        rtol=RTOL,
        atol=ATOL,
    )


def test_identical_and_channel_count_invariance():
    t, _ = random_maps(seed=3)
    np.testing.assert_allclose(
        float(attention_transfer_loss(t, t)), 0.0, atol=1e-9
    )
    # Duplicating channels keeps the channel mean, hence the map.
    doubled = np.concatenate([t, t], axis=-1)
    np.testing.assert_allclose(
        float(attention_transfer_loss(t, doubled)), 0.0, atol=1e-9
    )


def test_zero_features_give_zero_map_and_finite_gradient():
    zeros = np.zeros((2, 3, 3, 4), "float32")
    np.testing.assert_array_equal(
        ops.convert_to_numpy(attention_map(zeros)), 0.0
    )
    t, _ = random_maps((2, 3, 3, 4), (2, 3, 3, 4), seed=4)
    (zeros_grad,) = grad(lambda s: attention_transfer_loss(t, s), zeros)
    assert np.all(np.isfinite(zeros_grad))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs(dtype):
    t, s = random_maps(seed=5)
    t_low, s_low = ops.cast(t, dtype), ops.cast(s, dtype)
    out = attention_transfer_loss(t_low, s_low)
    assert dtype_name(out) == "float32"
    assert dtype_name(attention_map(t_low)) == "float32"
    reference = attention_transfer_loss(
        ops.cast(t_low, "float32"), ops.cast(s_low, "float32")
    )
    np.testing.assert_allclose(float(out), float(reference), rtol=1e-6)
    np.testing.assert_allclose(
        float(out), np_at_per_example(t, s).mean(), rtol=5e-2
    )


def test_gradients():
    t, s = random_maps(seed=6)
    _, (t_grad, s_grad) = value_and_grad(attention_transfer_loss, t, s)
    assert np.all(t_grad == 0)  # teacher is a constant (stop_gradient)
    assert np.all(np.isfinite(s_grad))
    assert np.count_nonzero(s_grad) > 0.9 * s_grad.size


def test_compiles_with_unknown_batch_and_xla():
    t, s = random_maps(seed=7)

    def fn(a, b):
        return attention_transfer_loss(a, b, reduction="none")

    np.testing.assert_allclose(
        compiled_unknown_batch(fn, t, s),
        np_at_per_example(t, s),
        rtol=RTOL,
        atol=ATOL,
    )


def test_mismatched_spatial_size():
    t, s = random_maps((2, 4, 4, 3), (2, 5, 5, 3))
    with pytest.raises(ValueError) as info:
        attention_transfer_loss(t, s)
    message = str(info.value)
    assert "(2, 4, 4, 3)" in message and "(2, 5, 5, 3)" in message
    assert "H*W=16" in message and "H*W=25" in message


@pytest.mark.parametrize("shape", [(2, 16), (2, 4, 4)])
def test_wrong_rank(shape):
    good = np.ones((2, 4, 4, 3), "float32")
    bad = np.ones(shape, "float32")
    for args in ((good, bad), (bad, good)):
        with pytest.raises(ValueError, match=r"\(B, H, W, C\)") as info:
            attention_transfer_loss(*args)
        assert f"received shape {shape}" in str(info.value)
    with pytest.raises(ValueError) as info:
        attention_map(bad)
    assert f"received shape {shape}" in str(info.value)


@pytest.mark.parametrize("p", [0, -2])
def test_bad_p(p):
    t, s = random_maps()
    with pytest.raises(ValueError, match=f"p={p!r}"):
        attention_transfer_loss(t, s, p=p)
    with pytest.raises(ValueError, match=f"p={p!r}"):
        attention_map(t, p=p)


@pytest.mark.parametrize("p", ["2", None])
def test_bad_p_type(p):
    t, s = random_maps()
    with pytest.raises(TypeError, match=f"p={p!r}"):
        attention_transfer_loss(t, s, p=p)


def test_bad_reduction():
    t, s = random_maps()
    with pytest.raises(ValueError, match="reduction='sum'"):
        attention_transfer_loss(t, s, reduction="sum")


@pytest.mark.parametrize(
    "p,scale", [(8, 100.0), (16, 100.0), (4, 1e6), (2, 1e12)]
)
def test_large_p_and_large_activations_stay_in_float32(p, scale):
    # |A|^p and its square used to overflow float32 (p=16, |A| ~ 100: a zero
    # or NaN map, so a loss that silently says nothing), and for p = 2 the
    # squares of the map in its norm overflow from |A| ~ 3e9. The map does
    # not change when A or the map is scaled, so it is computed on
    # A / max|A| (p = 2: the map over its max); the float64 reference works
    # on the raw features (no overflow in float64 here).
    t, s = random_maps(seed=12)
    t, s = (scale * t).astype("float32"), (scale * s).astype("float32")
    q = ops.convert_to_numpy(attention_map(t, p=p))
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(q, np_attention(t, p), rtol=RTOL, atol=ATOL)
    loss, (s_grad,) = value_and_grad(
        lambda s_: attention_transfer_loss(t, s_, p=p), s
    )
    np.testing.assert_allclose(
        float(loss), np_at_per_example(t, s, p).mean(), rtol=RTOL, atol=ATOL
    )
    assert np.all(np.isfinite(s_grad))


def test_scaling_the_features_changes_neither_map_nor_gradient():
    # Why the per-example rescaling is exact: Q(c * A) = Q(A) for c > 0, so
    # the gradient through the stop_gradient'ed peak is the true one.
    t, s = random_maps(seed=13)
    grads = []
    for scale in (1.0, 1e3):
        (s_grad,) = grad(
            lambda s_: attention_transfer_loss(t, s_, p=3), scale * s
        )
        grads.append(scale * s_grad)
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-4, atol=1e-9)
    # ... and it equals the float64 finite-difference gradient.
    base = np_at_per_example(t, s, 3).mean()
    step = 1e-3
    bumped = s.astype(np.float64).copy()
    bumped[0, 1, 2, 0] += step
    numeric = (np_at_per_example(t, bumped, 3).mean() - base) / step
    np.testing.assert_allclose(
        grads[0][0, 1, 2, 0], numeric, rtol=1e-2, atol=1e-7
    )
