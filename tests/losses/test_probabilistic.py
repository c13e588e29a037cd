"""PKT loss vs the float64 loop reference, "code" and "paper" modes.

The reference (references.py `ref_pkt`) builds each cosine entry and each
row normaliser with explicit loops, with the spec's frequency weights.
Tolerance: rtol=1e-5, atol=1e-7 (float32 vs float64; the values are
O(1e-2) means of P log(P / Q) terms).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from references import ref_numeric_grad  # noqa: E402
from references import ref_pkt  # noqa: E402

from keras_kd.losses.probabilistic import probabilistic_transfer_loss  # noqa: E402

RTOL, ATOL = 1e-5, 1e-7
MODES = ["code", "paper"]


def pkt(teacher, student, **kwargs):
    return float(
        to_numpy(probabilistic_transfer_loss(teacher, student, **kwargs))
    )


def random_features(seed, batch=7, t_dim=12, s_dim=5):
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(batch, t_dim)).astype("float32")
    student = rng.normal(size=(batch, s_dim)).astype("float32")
    return teacher, student


def random_weights(seed, batch=7):
    rng = np.random.default_rng(100 + seed)
    return rng.uniform(0.0, 2.0, size=(batch,)).astype("float32")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(mode, seed):
    teacher, student = random_features(seed)
    out = probabilistic_transfer_loss(teacher, student, mode=mode)
    assert tuple(out.shape) == ()
    assert dtype_name(out) == "float32"
    np.testing.assert_allclose(
        float(to_numpy(out)),
        ref_pkt(teacher, student, mode),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [3, 4])
def test_weighted_matches_reference(mode, seed):
    teacher, student = random_features(seed)
    w = random_weights(seed)
    np.testing.assert_allclose(
        pkt(teacher, student, mode=mode, sample_weight=w),
        ref_pkt(teacher, student, mode, sample_weight=w),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("mode", MODES)
def test_epsilon(mode):
    teacher, student = random_features(5)
    np.testing.assert_allclose(
        pkt(teacher, student, mode=mode, epsilon=1e-2),
        ref_pkt(teacher, student, mode, epsilon=1e-2),
        rtol=RTOL,
        atol=ATOL,
    )


def test_default_mode_is_code_and_rank_4_is_flattened():
    rng = np.random.default_rng(6)
    teacher = rng.normal(size=(6, 2, 2, 3)).astype("float32")
    student = rng.normal(size=(6, 4, 4, 1)).astype("float32")
    np.testing.assert_allclose(
        pkt(teacher, student),
        ref_pkt(teacher.reshape(6, -1), student.reshape(6, -1), "code"),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("mode", MODES)
def test_unit_weights_equal_no_weights(mode):
    teacher, student = random_features(7)
    np.testing.assert_allclose(
        pkt(teacher, student, mode=mode, sample_weight=np.ones(7, "float32")),
        pkt(teacher, student, mode=mode),
        rtol=1e-6,
        atol=1e-8,
    )


@pytest.mark.parametrize("mode", MODES)
def test_zero_weight_removes_the_example(mode):
    teacher, student = random_features(8)
    w = random_weights(8)
    w[0] = 0.0
    base = pkt(teacher, student, mode=mode, sample_weight=w)
    rng = np.random.default_rng(9)
    other_t, other_s = teacher.copy(), student.copy()
    other_t[0] = 40.0 * rng.normal(size=teacher.shape[1])
    other_s[0] = 40.0 * rng.normal(size=student.shape[1])
    np.testing.assert_allclose(
        pkt(other_t, other_s, mode=mode, sample_weight=w),
        base,
        rtol=1e-5,
        atol=1e-8,
    )
    np.testing.assert_allclose(
        pkt(teacher[1:], student[1:], mode=mode, sample_weight=w[1:]),
        base,
        rtol=1e-5,
        atol=1e-8,
    )


def test_weight_two_equals_duplicate_in_code_mode():
    teacher, student = random_features(10)
    w = np.ones(7, "float32")
    w[5] = 2.0
    duplicated_t = np.concatenate([teacher, teacher[5:6]])
    duplicated_s = np.concatenate([student, student[5:6]])
    np.testing.assert_allclose(
        pkt(teacher, student, mode="code", sample_weight=w),
        pkt(duplicated_t, duplicated_s, mode="code"),
        rtol=1e-5,
        atol=1e-8,
    )


@pytest.mark.parametrize("mode", MODES)
def test_all_zero_weights_give_zero(mode):
    teacher, student = random_features(11)
    w = np.zeros(7, "float32")
    assert pkt(teacher, student, mode=mode, sample_weight=w) == 0.0


@pytest.mark.parametrize("mode", MODES)
def test_gradients(mode):
    teacher, student = random_features(12, batch=5, s_dim=4)
    w = random_weights(12, batch=5)

    def fn(t, s):
        return probabilistic_transfer_loss(t, s, mode=mode, sample_weight=w)

    _, (t_grad, s_grad) = value_and_grad(fn, teacher, student)
    assert np.all(t_grad == 0)  # the teacher is a constant (stop_gradient)
    assert np.all(np.isfinite(s_grad))
    numeric = ref_numeric_grad(
        lambda s: ref_pkt(teacher, s, mode, sample_weight=w), student
    )
    np.testing.assert_allclose(
        s_grad, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max()
    )


@pytest.mark.parametrize("mode", MODES)
def test_compiled_matches_eager(mode):
    teacher, student = random_features(13)
    w = random_weights(13)

    def fn(t, s, weights):
        return probabilistic_transfer_loss(
            t, s, mode=mode, sample_weight=weights
        )

    eager = to_numpy(fn(teacher, student, w))
    graph = to_numpy(compiled(fn)(teacher, student, w))
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(
        graph,
        ref_pkt(teacher, student, mode, sample_weight=w),
        rtol=RTOL,
        atol=ATOL,
    )
