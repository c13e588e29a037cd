"""Similarity-preserving loss vs the float64 loop reference.

The reference (references.py `ref_sp`) builds each Gram entry as an explicit
dot product of two flattened rows and normalises each row with the spec's
weighted norm. Tolerance: rtol=1e-5, atol=1e-6 (float32 vs float64).
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
from references import ref_sp  # noqa: E402

from keras_kd.losses.similarity_preserving import similarity_preserving_loss  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


def sp(teacher, student, **kwargs):
    return float(
        to_numpy(similarity_preserving_loss(teacher, student, **kwargs))
    )


def random_features(seed, batch=6, t_shape=(4, 4, 3), s_shape=(10,)):
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(batch, *t_shape)).astype("float32")
    # Post-ReLU-like student: non-negative Gram entries, unlike the teacher.
    student = np.maximum(rng.normal(size=(batch, *s_shape)), 0.0)
    return teacher, student.astype("float32")


def random_weights(seed, batch=6):
    rng = np.random.default_rng(100 + seed)
    return rng.uniform(0.0, 2.0, size=(batch,)).astype("float32")


@pytest.mark.parametrize(
    "t_shape,s_shape",
    [((16,), (8,)), ((4, 4, 3), (10,)), ((4, 4, 2), (8, 8, 5))],
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(t_shape, s_shape, seed):
    teacher, student = random_features(seed, t_shape=t_shape, s_shape=s_shape)
    out = similarity_preserving_loss(teacher, student)
    assert tuple(out.shape) == ()
    assert dtype_name(out) == "float32"
    # Rank-4 inputs are flattened in NHWC order (x.reshape(B, -1)).
    np.testing.assert_allclose(
        float(to_numpy(out)),
        ref_sp(teacher.reshape(6, -1), student.reshape(6, -1)),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("seed", [3, 4, 5])
def test_weighted_matches_reference(seed):
    teacher, student = random_features(seed)
    w = random_weights(seed)
    np.testing.assert_allclose(
        sp(teacher, student, sample_weight=w),
        ref_sp(teacher, student, w),
        rtol=RTOL,
        atol=ATOL,
    )


def test_unit_weights_equal_no_weights():
    teacher, student = random_features(6)
    np.testing.assert_allclose(
        sp(teacher, student, sample_weight=np.ones(6, "float32")),
        sp(teacher, student),
        rtol=1e-6,
        atol=1e-7,
    )


def test_zero_weight_removes_the_example():
    teacher, student = random_features(7)
    w = random_weights(7)
    w[4] = 0.0
    base = sp(teacher, student, sample_weight=w)
    rng = np.random.default_rng(8)
    other_t, other_s = teacher.copy(), student.copy()
    other_t[4] = 30.0 * rng.normal(size=teacher.shape[1:])
    other_s[4] = 30.0 * rng.normal(size=student.shape[1:])
    np.testing.assert_allclose(
        sp(other_t, other_s, sample_weight=w), base, rtol=1e-5, atol=1e-7
    )
    keep = [0, 1, 2, 3, 5]
    np.testing.assert_allclose(
        sp(teacher[keep], student[keep], sample_weight=w[keep]),
        base,
        rtol=1e-5,
        atol=1e-7,
    )


def test_weight_two_equals_duplicate():
    teacher, student = random_features(9)
    w = np.ones(6, "float32")
    w[1] = 2.0
    duplicated_t = np.concatenate([teacher, teacher[1:2]])
    duplicated_s = np.concatenate([student, student[1:2]])
    np.testing.assert_allclose(
        sp(teacher, student, sample_weight=w),
        sp(duplicated_t, duplicated_s),
        rtol=1e-5,
        atol=1e-7,
    )


def test_all_zero_weights_give_zero():
    teacher, student = random_features(10)
    assert sp(teacher, student, sample_weight=np.zeros(6, "float32")) == 0.0


def test_identical_up_to_scale_gives_zero():
    teacher, _ = random_features(11)
    # Row normalisation removes a global scale of the features.
    np.testing.assert_allclose(sp(teacher, 2.5 * teacher), 0.0, atol=1e-7)


def test_gradients():
    teacher, student = random_features(12, batch=5, s_shape=(6,))
    w = random_weights(12, batch=5)

    def fn(t, s):
        return similarity_preserving_loss(t, s, sample_weight=w)

    _, (t_grad, s_grad) = value_and_grad(fn, teacher, student)
    assert np.all(t_grad == 0)  # the teacher is a constant (stop_gradient)
    assert np.all(np.isfinite(s_grad))
    numeric = ref_numeric_grad(
        lambda s: ref_sp(teacher, s, w), student.astype(np.float64)
    )
    np.testing.assert_allclose(
        s_grad, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max()
    )


def test_compiled_matches_eager():
    teacher, student = random_features(13)
    w = random_weights(13)

    def fn(t, s, weights):
        return similarity_preserving_loss(t, s, sample_weight=weights)

    eager = to_numpy(fn(teacher, student, w))
    graph = to_numpy(compiled(fn)(teacher, student, w))
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(
        graph, ref_sp(teacher, student, w), rtol=RTOL, atol=ATOL
    )
