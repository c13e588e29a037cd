"""fitnets_hint_loss vs a float64 NumPy reference (loop over elements).

Tolerance: rtol=1e-4, atol=1e-5 (float32 vs float64).
"""

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled_unknown_batch  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from keras import ops  # noqa: E402

from keras_kd.losses.hints import FitNetsHint  # noqa: E402
from keras_kd.losses.hints import fitnets_hint_loss  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def np_hint_per_example(t, s):
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    out = []
    for b in range(t.shape[0]):
        squares = [(s[b][i] - t[b][i]) ** 2 for i in np.ndindex(t.shape[1:])]
        out.append(sum(squares) / len(squares))
    return np.array(out)


def random_pair(shape, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=shape).astype("float32"),
        rng.normal(size=shape).astype("float32"),
    )


@pytest.mark.parametrize("shape", [(3, 8), (3, 5, 5, 4), (3, 4, 6)])
def test_matches_numpy(shape):
    t, s = random_pair(shape, seed=1)
    expected = np_hint_per_example(t, s)
    per_example = fitnets_hint_loss(t, s, reduction="none")
    assert tuple(per_example.shape) == (3,)
    assert dtype_name(per_example) == "float32"
    np.testing.assert_allclose(
        ops.convert_to_numpy(per_example), expected, rtol=RTOL, atol=ATOL
    )
    mean = fitnets_hint_loss(t, s)
    assert tuple(mean.shape) == ()
    np.testing.assert_allclose(
        float(mean), expected.mean(), rtol=RTOL, atol=ATOL
    )
    # Equal-size examples: the batch mean is the mean over all elements.
    np.testing.assert_allclose(
        float(mean), np.mean((s.astype(np.float64) - t) ** 2), rtol=RTOL
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs(dtype):
    t, s = random_pair((3, 4, 4, 2), seed=2)
    t_low, s_low = ops.cast(t, dtype), ops.cast(s, dtype)
    out = fitnets_hint_loss(t_low, s_low)
    assert dtype_name(out) == "float32"
    reference = fitnets_hint_loss(
        ops.cast(t_low, "float32"), ops.cast(s_low, "float32")
    )
    np.testing.assert_allclose(float(out), float(reference), rtol=1e-6)
    np.testing.assert_allclose(
        float(out), np_hint_per_example(t, s).mean(), rtol=2e-2
    )


def test_gradients():
    t, s = random_pair((3, 4, 4, 2), seed=3)
    _, (t_grad, grad) = value_and_grad(fitnets_hint_loss, t, s)
    assert np.all(t_grad == 0)  # teacher is a constant (stop_gradient)
    assert np.all(np.isfinite(grad)) and np.all(grad != 0)
    expected = 2.0 * (s.astype(np.float64) - t) / s.size
    np.testing.assert_allclose(grad, expected, rtol=RTOL, atol=1e-7)


def test_compiles_with_unknown_batch_and_xla():
    t, s = random_pair((3, 4, 4, 2), seed=4)

    def fn(a, b):
        return fitnets_hint_loss(a, b, reduction="none")

    np.testing.assert_allclose(
        compiled_unknown_batch(fn, t, s),
        np_hint_per_example(t, s),
        rtol=RTOL,
        atol=ATOL,
    )


def test_shape_mismatch():
    with pytest.raises(ValueError) as info:
        fitnets_hint_loss(np.zeros((2, 4, 4, 8)), np.zeros((2, 4, 4, 6)))
    message = str(info.value)
    assert "(2, 4, 4, 8)" in message and "(2, 4, 4, 6)" in message
    assert "regressor" in message


def test_rank_error():
    with pytest.raises(ValueError, match=r"\(5,\)"):
        fitnets_hint_loss(np.zeros((5,)), np.zeros((5,)))


def test_bad_reduction():
    t, s = random_pair((2, 3))
    with pytest.raises(ValueError, match="reduction='sum'"):
        fitnets_hint_loss(t, s, reduction="sum")


# --- FitNetsHint(connector=...), the name ActivationBoundary uses too --------

NAMES = ("teacher", "student")


def configured(hint, t_shape, s_shape):
    hint.configure([t_shape], [s_shape], "float32", NAMES)
    return hint.connectors


@pytest.mark.parametrize(
    "connector,t_shape,s_shape,built",
    [
        ("always", (None, 4, 4, 8), (None, 4, 4, 8), 1),
        ("auto", (None, 4, 4, 8), (None, 4, 4, 8), 0),
        ("auto", (None, 4, 4, 8), (None, 4, 4, 6), 1),
        ("never", (None, 4, 4, 8), (None, 4, 4, 8), 0),
    ],
)
def test_connector_choices(connector, t_shape, s_shape, built):
    hint = FitNetsHint("t", "s", connector=connector)
    assert hint.connector == connector
    assert len(configured(hint, t_shape, s_shape)) == built


def test_connector_never_with_different_shapes_says_what_to_pass():
    hint = FitNetsHint("t", "s", connector="never")
    with pytest.raises(ValueError, match="connector='never'.*differ.*'auto'"):
        configured(hint, (None, 4, 4, 8), (None, 4, 4, 6))


def test_unknown_connector_lists_the_choices():
    with pytest.raises(
        ValueError, match=r"\('always', 'auto', 'never'\).*'maybe'"
    ):
        FitNetsHint("t", "s", connector="maybe")


def test_regressor_is_a_deprecated_alias_of_connector():
    with pytest.warns(DeprecationWarning, match="connector='auto'"):
        hint = FitNetsHint("t", "s", regressor="auto")
    assert hint.connector == "auto"
    assert len(configured(hint, (None, 4, 4, 8), (None, 4, 4, 8))) == 0
    with pytest.warns(DeprecationWarning, match="read `connector`"):
        assert hint.regressor == "auto"
    config = hint.get_config()
    assert config["connector"] == "auto" and "regressor" not in config


def test_regressor_and_a_different_connector_conflict():
    with (
        pytest.warns(DeprecationWarning),
        pytest.raises(ValueError, match="Pass only `connector`"),
    ):
        FitNetsHint("t", "s", connector="never", regressor="auto")


def test_config_round_trip_and_old_configs_load_without_warning():
    hint = FitNetsHint("t", "s", connector="auto")
    assert FitNetsHint.from_config(hint.get_config()).connector == "auto"
    old = dict(hint.get_config())
    old["regressor"] = old.pop("connector")  # saved by keras_kd 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FitNetsHint.from_config(old).connector == "auto"
