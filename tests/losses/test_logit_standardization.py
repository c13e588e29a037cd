"""Logit standardisation (Sun et al. 2024) vs float64 loop references.

`standardize_logits` against per-row z-scores computed with explicit sums
(references.py `ref_standardize`), and `logits_distillation_loss(...,
standardize=True)` against T^2 KL of the standardised rows (`ref_kd`), for
ddof=1 (torch's `std`, the official code) and ddof=0 (the paper).
Tolerance: rtol=1e-5, atol=1e-6 (float32 vs float64; z-scores are O(1)).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from references import ref_kd  # noqa: E402
from references import ref_numeric_grad  # noqa: E402
from references import ref_standardize  # noqa: E402

from keras_kd.losses import logits_distillation_loss  # noqa: E402
from keras_kd.losses.logits import standardize_logits  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


def random_logits(seed, batch=6, classes=10, scale=3.0):
    rng = np.random.default_rng(seed)
    # Different offsets and scales per row, as between real networks.
    offset = rng.normal(size=(batch, 1)) * 5.0
    gain = rng.uniform(0.5, 4.0, size=(batch, 1))
    teacher = offset + gain * scale * rng.normal(size=(batch, classes))
    student = scale * rng.normal(size=(batch, classes))
    return teacher.astype("float32"), student.astype("float32")


def kd(teacher, student, temperature=1.0, **kwargs):
    return to_numpy(
        logits_distillation_loss(teacher, student, temperature, **kwargs)
    )


@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standardize_matches_reference(ddof, seed):
    logits, _ = random_logits(seed)
    out = standardize_logits(logits, ddof=ddof)
    assert tuple(out.shape) == logits.shape
    assert dtype_name(out) == "float32"
    np.testing.assert_allclose(
        to_numpy(out), ref_standardize(logits, ddof), rtol=RTOL, atol=ATOL
    )


def test_standardize_default_ddof_is_1_and_epsilon():
    logits, _ = random_logits(3)
    np.testing.assert_allclose(
        to_numpy(standardize_logits(logits)),
        ref_standardize(logits, 1),
        rtol=RTOL,
        atol=ATOL,
    )
    for ddof in (0, 1):
        np.testing.assert_allclose(
            to_numpy(standardize_logits(logits, ddof=ddof, epsilon=0.5)),
            ref_standardize(logits, ddof, epsilon=0.5),
            rtol=RTOL,
            atol=ATOL,
        )


@pytest.mark.parametrize("ddof", [0, 1])
def test_standardized_rows_have_zero_mean_and_unit_std(ddof):
    logits, _ = random_logits(4)
    out = to_numpy(standardize_logits(logits, ddof=ddof)).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(out.std(axis=1, ddof=ddof), 1.0, rtol=1e-5)


def test_constant_row_is_finite():
    logits = np.full((2, 5), 3.0, "float32")
    out = to_numpy(standardize_logits(logits))
    np.testing.assert_allclose(out, 0.0, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
@pytest.mark.parametrize("ddof", [0, 1])
@pytest.mark.parametrize("seed", [5, 6])
def test_kd_loss_matches_reference(temperature, ddof, seed):
    teacher, student = random_logits(seed)
    expected = ref_kd(teacher, student, temperature, True, ddof)
    per_example = logits_distillation_loss(
        teacher,
        student,
        temperature,
        reduction="none",
        standardize=True,
        ddof=ddof,
    )
    assert tuple(per_example.shape) == (6,)
    assert dtype_name(per_example) == "float32"
    np.testing.assert_allclose(
        to_numpy(per_example), expected, rtol=RTOL, atol=ATOL
    )
    mean = logits_distillation_loss(
        teacher, student, temperature, standardize=True, ddof=ddof
    )
    assert tuple(mean.shape) == ()
    np.testing.assert_allclose(
        float(to_numpy(mean)), expected.mean(), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        float(to_numpy(mean)), to_numpy(per_example).mean(), rtol=1e-6
    )


def test_kd_defaults():
    teacher, student = random_logits(7)
    # standardize defaults to False; with True, ddof defaults to 1.
    np.testing.assert_allclose(
        kd(teacher, student, 2.0, reduction="none"),
        ref_kd(teacher, student, 2.0, False),
        rtol=RTOL,
        atol=1e-5,
    )
    np.testing.assert_allclose(
        kd(teacher, student, 2.0, reduction="none", standardize=True),
        ref_kd(teacher, student, 2.0, True, 1),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("ddof", [0, 1])
def test_kd_invariant_to_row_affine_maps(ddof):
    """Standardised KD ignores each row's shift and (positive) scale."""
    teacher, student = random_logits(8)
    rng = np.random.default_rng(9)
    shift = rng.normal(size=(2, 6, 1)) * 10.0
    gain = rng.uniform(0.2, 5.0, size=(2, 6, 1))
    moved_t = (gain[0] * teacher + shift[0]).astype("float32")
    moved_s = (gain[1] * student + shift[1]).astype("float32")
    options = {"reduction": "none", "standardize": True, "ddof": ddof}
    np.testing.assert_allclose(
        kd(moved_t, moved_s, 3.0, **options),
        kd(teacher, student, 3.0, **options),
        rtol=1e-4,
        atol=1e-5,
    )


@pytest.mark.parametrize("ddof", [0, 1])
def test_gradients(ddof):
    teacher, student = random_logits(10, batch=4, classes=6)

    def fn(t, s):
        return logits_distillation_loss(t, s, 2.0, standardize=True, ddof=ddof)

    _, (t_grad, s_grad) = value_and_grad(fn, teacher, student)
    assert np.all(t_grad == 0)  # the teacher is a constant (stop_gradient)
    assert np.all(np.isfinite(s_grad))
    numeric = ref_numeric_grad(
        lambda s: ref_kd(teacher, s, 2.0, True, ddof).mean(), student
    )
    np.testing.assert_allclose(
        s_grad, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max()
    )


def test_compiled_matches_eager():
    teacher, student = random_logits(11)

    def fn(t, s):
        return (
            standardize_logits(t, ddof=0),
            logits_distillation_loss(
                t, s, 4.0, reduction="none", standardize=True, ddof=0
            ),
        )

    eager = [to_numpy(x) for x in fn(teacher, student)]
    graph = [to_numpy(x) for x in compiled(fn)(teacher, student)]
    for g, e in zip(graph, eager):
        np.testing.assert_allclose(g, e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        graph[0], ref_standardize(teacher, 0), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        graph[1], ref_kd(teacher, student, 4.0, True, 0), rtol=RTOL, atol=ATOL
    )
