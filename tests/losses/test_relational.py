"""RKD distance / angle losses vs the float64 loop references.

The references (references.py) build every pairwise distance from the
difference of two rows and every angle from an explicit triplet loop, with
the spec's frequency weights. Tolerance: rtol=1e-5, atol=1e-6 (float32 vs
float64; the values are means of smooth-L1 terms of O(1) quantities).
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
from references import ref_rkd  # noqa: E402
from references import ref_rkd_angle  # noqa: E402
from references import ref_rkd_distance  # noqa: E402

from keras_kd.losses.relational import relational_angle_loss  # noqa: E402
from keras_kd.losses.relational import relational_distance_loss  # noqa: E402
from keras_kd.losses.relational import relational_loss  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
MODES = ["code", "paper"]

FUNCTIONS = {
    "distance": (relational_distance_loss, ref_rkd_distance),
    "angle": (relational_angle_loss, ref_rkd_angle),
    "total": (relational_loss, ref_rkd),
}


def call(kind, teacher, student, **kwargs):
    """The keras_kd value as a float."""
    return float(to_numpy(FUNCTIONS[kind][0](teacher, student, **kwargs)))


def reference(kind, teacher, student, mode="code", sample_weight=None):
    return FUNCTIONS[kind][1](
        teacher, student, mode=mode, sample_weight=sample_weight
    )


def random_features(seed, batch=6, t_dim=12, s_dim=8):
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(batch, t_dim)).astype("float32")
    # A different scale: the distance normaliser must absorb it.
    student = (3.0 * rng.normal(size=(batch, s_dim))).astype("float32")
    return teacher, student


def random_weights(seed, batch=6):
    rng = np.random.default_rng(100 + seed)
    return rng.uniform(0.0, 2.0, size=(batch,)).astype("float32")


@pytest.mark.parametrize("kind", ["distance", "angle", "total"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference(kind, mode, seed):
    teacher, student = random_features(seed)
    out = FUNCTIONS[kind][0](teacher, student, mode=mode)
    assert tuple(out.shape) == ()
    assert dtype_name(out) == "float32"
    np.testing.assert_allclose(
        float(to_numpy(out)),
        reference(kind, teacher, student, mode),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("kind", ["distance", "angle", "total"])
@pytest.mark.parametrize("mode", MODES)
def test_weighted_matches_reference(kind, mode):
    for seed in (3, 4):
        teacher, student = random_features(seed)
        w = random_weights(seed)
        np.testing.assert_allclose(
            call(kind, teacher, student, mode=mode, sample_weight=w),
            reference(kind, teacher, student, mode, w),
            rtol=RTOL,
            atol=ATOL,
        )


def test_defaults():
    teacher, student = random_features(5)
    d = ref_rkd_distance(teacher, student, "code")
    a = ref_rkd_angle(teacher, student, "code")
    np.testing.assert_allclose(
        call("distance", teacher, student), d, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        call("angle", teacher, student), a, rtol=RTOL, atol=ATOL
    )
    # relational_loss = 25 distance + 50 angle by default.
    np.testing.assert_allclose(
        call("total", teacher, student), 25 * d + 50 * a, rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        call(
            "total",
            teacher,
            student,
            distance_weight=2.0,
            angle_weight=0.5,
            mode="paper",
        ),
        ref_rkd(teacher, student, 2.0, 0.5, "paper"),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("kind", ["distance", "angle"])
def test_rank_4_inputs_are_flattened(kind):
    rng = np.random.default_rng(6)
    teacher = rng.normal(size=(5, 2, 2, 3)).astype("float32")
    student = rng.normal(size=(5, 3, 1, 2)).astype("float32")
    for mode in MODES:
        np.testing.assert_allclose(
            call(kind, teacher, student, mode=mode),
            reference(
                kind, teacher.reshape(5, -1), student.reshape(5, -1), mode
            ),
            rtol=RTOL,
            atol=ATOL,
        )


@pytest.mark.parametrize("kind", ["distance", "angle", "total"])
@pytest.mark.parametrize("mode", MODES)
def test_unit_weights_equal_no_weights(kind, mode):
    teacher, student = random_features(7)
    np.testing.assert_allclose(
        call(kind, teacher, student, mode=mode, sample_weight=np.ones(6)),
        call(kind, teacher, student, mode=mode),
        rtol=1e-6,
        atol=1e-7,
    )


@pytest.mark.parametrize("kind", ["distance", "angle", "total"])
@pytest.mark.parametrize("mode", MODES)
def test_zero_weight_removes_the_example(kind, mode):
    teacher, student = random_features(8)
    w = random_weights(8)
    w[2] = 0.0
    base = call(kind, teacher, student, mode=mode, sample_weight=w)
    rng = np.random.default_rng(9)
    other_t, other_s = teacher.copy(), student.copy()
    other_t[2] = 50.0 * rng.normal(size=teacher.shape[1])
    other_s[2] = 50.0 * rng.normal(size=student.shape[1])
    np.testing.assert_allclose(
        call(kind, other_t, other_s, mode=mode, sample_weight=w),
        base,
        rtol=1e-5,
        atol=1e-6,
    )
    # ...and equals the loss on the batch without that example.
    keep = [0, 1, 3, 4, 5]
    np.testing.assert_allclose(
        call(
            kind,
            teacher[keep],
            student[keep],
            mode=mode,
            sample_weight=w[keep],
        ),
        base,
        rtol=1e-5,
        atol=1e-6,
    )


# Only the angle term: the official distance term's normaliser counts a
# duplicated example's pair with its copy (clamped to 1e-6 apart, so > 0)
# but never an example's pair with itself, so no weighting can equal the
# official code on a batch with a duplicate (weights follow the official
# code on batches without duplicates, checked above).
@pytest.mark.parametrize("kind", ["angle"])
def test_weight_two_equals_duplicate_in_code_mode(kind):
    teacher, student = random_features(10)
    w = np.ones(6, "float32")
    w[3] = 2.0
    duplicated_t = np.concatenate([teacher, teacher[3:4]])
    duplicated_s = np.concatenate([student, student[3:4]])
    np.testing.assert_allclose(
        call(kind, teacher, student, mode="code", sample_weight=w),
        call(kind, duplicated_t, duplicated_s, mode="code"),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        call(kind, duplicated_t, duplicated_s, mode="code"),
        reference(kind, duplicated_t, duplicated_s, "code"),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("kind", ["distance", "angle", "total"])
@pytest.mark.parametrize("mode", MODES)
def test_all_zero_weights_give_zero(kind, mode):
    teacher, student = random_features(11)
    value = call(kind, teacher, student, mode=mode, sample_weight=np.zeros(6))
    assert value == 0.0


@pytest.mark.parametrize("kind", ["distance", "angle", "total"])
@pytest.mark.parametrize("mode", MODES)
def test_gradients(kind, mode):
    teacher, student = random_features(12, batch=5, t_dim=6, s_dim=4)
    w = random_weights(12, batch=5)

    def fn(t, s):
        return FUNCTIONS[kind][0](t, s, mode=mode, sample_weight=w)

    _, (t_grad, s_grad) = value_and_grad(fn, teacher, student)
    assert np.all(t_grad == 0)  # the teacher is a constant (stop_gradient)
    assert np.all(np.isfinite(s_grad))
    # Against float64 central differences of the reference (the student's
    # own normaliser mu_S is differentiated through, as in RepDistiller).
    numeric = ref_numeric_grad(
        lambda s: FUNCTIONS[kind][1](teacher, s, mode=mode, sample_weight=w),
        student,
    )
    np.testing.assert_allclose(
        s_grad, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max()
    )


@pytest.mark.parametrize("kind", ["distance", "angle", "total"])
@pytest.mark.parametrize("mode", MODES)
def test_gradients_finite_with_identical_examples(kind, mode):
    """Zero distances (diagonal and duplicated rows) give finite gradients."""
    teacher, student = random_features(13, batch=5)
    teacher[4] = teacher[1]
    student[4] = student[1]
    student[2] = student[0]  # identical in the student only

    def fn(t, s):
        return FUNCTIONS[kind][0](t, s, mode=mode)

    value, (t_grad, s_grad) = value_and_grad(fn, teacher, student)
    assert np.isfinite(value)
    assert np.all(t_grad == 0)
    assert np.all(np.isfinite(s_grad))
    if mode == "code":
        # Identical rows: the official Gram-matrix distance leaves float32
        # round-off (~1e-6 in the squared distance, so ~1e-3 after the
        # root) where the float64 reference has the 1e-6 clamp; the
        # normaliser moves by up to 1e-4 relative.
        np.testing.assert_allclose(
            value,
            reference(kind, teacher, student, "code"),
            rtol=1e-4,
            atol=ATOL,
        )


@pytest.mark.parametrize("kind", ["distance", "angle", "total"])
def test_compiled_matches_eager(kind):
    teacher, student = random_features(14)
    w = random_weights(14)

    def fn(t, s, weights):
        return FUNCTIONS[kind][0](t, s, mode="code", sample_weight=weights)

    eager = to_numpy(fn(teacher, student, w))
    graph = to_numpy(compiled(fn)(teacher, student, w))
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        graph,
        reference(kind, teacher, student, "code", w),
        rtol=RTOL,
        atol=ATOL,
    )
