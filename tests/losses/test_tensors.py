import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled_unknown_batch  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import grad  # noqa: E402
from keras import ops  # noqa: E402

from keras_kd.losses.tensors import flatten_per_example  # noqa: E402
from keras_kd.losses.tensors import l2_normalize  # noqa: E402
from keras_kd.losses.tensors import reduce_per_example  # noqa: E402
from keras_kd.losses.tensors import to_float32  # noqa: E402
from keras_kd.losses.tensors import validate_rank  # noqa: E402
from keras_kd.losses.tensors import validate_reduction  # noqa: E402
from keras_kd.losses.tensors import validate_same_shape  # noqa: E402


def test_mean_and_none():
    values = np.random.default_rng(0).normal(size=(5,)).astype("float32")
    mean = reduce_per_example(values, "mean")
    assert tuple(mean.shape) == ()
    np.testing.assert_allclose(
        float(mean), values.astype("float64").mean(), rtol=1e-6
    )
    none = reduce_per_example(values, "none")
    assert tuple(none.shape) == (5,)
    np.testing.assert_array_equal(ops.convert_to_numpy(none), values)


@pytest.mark.parametrize("bad", ["sum", "MEAN", "", None, 1])
def test_bad_reduction(bad):
    with pytest.raises(ValueError, match="reduction") as info:
        reduce_per_example(np.ones((3,), "float32"), bad)
    assert repr(bad) in str(info.value)
    assert "'mean'" in str(info.value) and "'none'" in str(info.value)
    with pytest.raises(ValueError):
        validate_reduction(bad)


def test_reduce_requires_rank_1():
    with pytest.raises(ValueError, match=r"\(3, 2\)"):
        reduce_per_example(np.ones((3, 2), "float32"), "mean")


def test_validate_rank_message():
    x = np.ones((2, 3, 4), "float32")
    assert validate_rank(x, (3,), name="x", what="w") == (2, 3, 4)
    with pytest.raises(ValueError) as info:
        validate_rank(
            x, (2, 4), name="features", what="X needs (B, C)", hint="Do Y."
        )
    message = str(info.value)
    for part in (
        "X needs (B, C)",
        "(2, 3, 4)",
        "`features`",
        "2 or 4",
        "Do Y.",
    ):
        assert part in message


def test_validate_same_shape_ignores_batch_and_unknown():
    validate_same_shape(np.ones((2, 3)), np.ones((5, 3)), what="f")
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(2, 4\)"):
        validate_same_shape(np.ones((2, 3)), np.ones((2, 4)), what="f")


def test_to_float32_and_flatten_with_unknown_batch():
    x = np.arange(24, dtype="float16").reshape(2, 3, 4)
    assert dtype_name(to_float32(x)) == "float32"
    out = compiled_unknown_batch(flatten_per_example, x.astype("float32"))
    assert out.shape == (2, 12)
    np.testing.assert_array_equal(out, x.astype("float32").reshape(2, 12))


def np_l2_normalize(x, axis, epsilon):
    """torch `F.normalize`: x / max(||x||_2, epsilon), float64."""
    x = np.asarray(x, np.float64)
    norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    return x / np.maximum(norm, epsilon)


@pytest.mark.parametrize("axis", [1, 2])
def test_l2_normalize_matches_float64(axis):
    x = np.random.default_rng(3).normal(size=(2, 5, 3)).astype("float32")
    x[0, :, 0] = 0.0  # an all-zero slice along axis 1
    x[1, 0, :] = 0.0  # an all-zero slice along axis 2
    out = ops.convert_to_numpy(l2_normalize(x, axis=axis, epsilon=1e-12))
    np.testing.assert_allclose(
        out, np_l2_normalize(x, axis, 1e-12), rtol=1e-6, atol=1e-7
    )


def test_l2_normalize_epsilon_bounds_the_norm():
    x = np.full((1, 4), 1e-3, "float32")  # norm 2e-3 < epsilon
    out = ops.convert_to_numpy(l2_normalize(x, axis=1, epsilon=0.1))
    np.testing.assert_allclose(out, np_l2_normalize(x, 1, 0.1), rtol=1e-6)


def test_l2_normalize_zero_slice_has_finite_gradient():
    x = np.zeros((2, 3), "float32")
    (g,) = grad(lambda x_: ops.sum(l2_normalize(x_, axis=1, epsilon=1e-12)), x)
    assert np.all(np.isfinite(g))
