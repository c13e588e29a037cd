"""Decoupled KD (DKD) vs a float64 log-space loop reference.

The reference (`ref_dkd_parts` below) computes, per example and in
log space, TCKD = T^2 KL([p_gt, 1 - p_gt]_T || [..]_S) and NCKD = T^2 KL over
the softmax of the non-target classes only. Tolerance: rtol=1e-5,
atol=1e-5 (float32 vs float64; values are T^2-scaled KLs, up to ~1e2).
"""

import math
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from references import _f64  # noqa: E402
from references import _kl_from_logs  # noqa: E402
from references import _log_softmax  # noqa: E402
from references import _logsumexp  # noqa: E402
from references import ref_numeric_grad  # noqa: E402
from references import ref_standardize  # noqa: E402


# float64 references of DKD (mdistiller `distillers/DKD.py`), in loops.
def _binary_logs(logits, target):
    """log [p_gt, 1 - p_gt] of softmax(logits), computed in log space."""
    lse = _logsumexp(logits)
    others = [v for c, v in enumerate(logits) if c != target]
    return [logits[target] - lse, _logsumexp(others) - lse]


def ref_dkd_parts(
    teacher, student, labels, temperature=4.0, standardize=False, ddof=1
):
    """Per-example (TCKD, NCKD), each (B,), both including the T^2 factor.

    `labels`: integer class ids (B,). TCKD = T^2 KL(b_T || b_S) with b =
    [p_gt, 1 - p_gt]; NCKD = T^2 KL over the softmax of the non-target
    classes only.
    """
    teacher, student = _f64(teacher), _f64(student)
    if standardize:
        teacher = ref_standardize(teacher, ddof)
        student = ref_standardize(student, ddof)
    tckd, nckd = [], []
    for b in range(teacher.shape[0]):
        gt = int(labels[b])
        z_t = [v / temperature for v in teacher[b]]
        z_s = [v / temperature for v in student[b]]
        tckd.append(
            temperature**2
            * _kl_from_logs(_binary_logs(z_t, gt), _binary_logs(z_s, gt))
        )
        rest_t = [v for c, v in enumerate(z_t) if c != gt]
        rest_s = [v for c, v in enumerate(z_s) if c != gt]
        nckd.append(
            temperature**2
            * _kl_from_logs(_log_softmax(rest_t), _log_softmax(rest_s))
        )
    return np.array(tckd), np.array(nckd)


def ref_dkd(
    teacher,
    student,
    labels,
    alpha=1.0,
    beta=8.0,
    temperature=4.0,
    standardize=False,
    ddof=1,
):
    """Per-example alpha * TCKD + beta * NCKD, (B,)."""
    tckd, nckd = ref_dkd_parts(
        teacher, student, labels, temperature, standardize, ddof
    )
    return alpha * tckd + beta * nckd


def ref_target_probability(logits, labels, temperature=1.0):
    """p_gt = softmax(z / T)[gt] per example, (B,)."""
    logits = _f64(logits)
    out = []
    for b in range(logits.shape[0]):
        z = [v / temperature for v in logits[b]]
        out.append(math.exp(_log_softmax(z)[int(labels[b])]))
    return np.array(out)


from keras_kd.losses import logits_distillation_loss  # noqa: E402
from keras_kd.losses.decoupled import decoupled_kd_loss  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5


def random_logits(seed, batch=6, classes=10, scale=3.0):
    rng = np.random.default_rng(seed)
    teacher = (scale * rng.normal(size=(batch, classes))).astype("float32")
    student = (scale * rng.normal(size=(batch, classes))).astype("float32")
    labels = rng.integers(0, classes, size=batch)
    # Teachers usually rank the label first: lift it for half the batch.
    half = batch // 2
    teacher[np.arange(half), labels[:half]] += 5.0
    return teacher, student, labels


def dkd(teacher, student, labels, **kwargs):
    return to_numpy(decoupled_kd_loss(teacher, student, labels, **kwargs))


@pytest.mark.parametrize(
    "alpha,beta,temperature",
    [(1.0, 8.0, 4.0), (0.5, 2.0, 1.0), (2.0, 0.3, 2.5)],
)
@pytest.mark.parametrize("standardize,ddof", [(False, 1), (True, 1), (True, 0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_reference(alpha, beta, temperature, standardize, ddof, seed):
    teacher, student, labels = random_logits(seed)
    options = {
        "alpha": alpha,
        "beta": beta,
        "temperature": temperature,
        "standardize": standardize,
        "ddof": ddof,
    }
    expected = ref_dkd(
        teacher, student, labels, alpha, beta, temperature, standardize, ddof
    )
    per_example = decoupled_kd_loss(
        teacher, student, labels, reduction="none", **options
    )
    assert tuple(per_example.shape) == (6,)
    assert dtype_name(per_example) == "float32"
    np.testing.assert_allclose(
        to_numpy(per_example), expected, rtol=RTOL, atol=ATOL
    )
    mean = decoupled_kd_loss(teacher, student, labels, **options)
    assert tuple(mean.shape) == ()
    assert dtype_name(mean) == "float32"
    np.testing.assert_allclose(
        float(to_numpy(mean)), expected.mean(), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        float(to_numpy(mean)), to_numpy(per_example).mean(), rtol=1e-6
    )


def test_defaults():
    """alpha=1, beta=8, T=4, no standardisation, batch mean."""
    teacher, student, labels = random_logits(2)
    np.testing.assert_allclose(
        float(dkd(teacher, student, labels)),
        ref_dkd(teacher, student, labels, 1.0, 8.0, 4.0).mean(),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("standardize,ddof", [(False, 1), (True, 1), (True, 0)])
def test_kl_decomposes_into_tckd_and_nckd(temperature, standardize, ddof):
    """KL(p_T || p_S) = TCKD + (1 - p_T,gt) NCKD, per example."""
    teacher, student, labels = random_logits(3)
    options = {
        "temperature": temperature,
        "standardize": standardize,
        "ddof": ddof,
        "reduction": "none",
    }
    tckd = dkd(teacher, student, labels, alpha=1.0, beta=0.0, **options)
    nckd = dkd(teacher, student, labels, alpha=0.0, beta=1.0, **options)
    ref_tckd, ref_nckd = ref_dkd_parts(
        teacher, student, labels, temperature, standardize, ddof
    )
    np.testing.assert_allclose(tckd, ref_tckd, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(nckd, ref_nckd, rtol=RTOL, atol=ATOL)
    z_t = ref_standardize(teacher, ddof) if standardize else teacher
    p_gt = ref_target_probability(z_t, labels, temperature)
    kd = to_numpy(
        logits_distillation_loss(
            teacher,
            student,
            temperature,
            reduction="none",
            **({"standardize": True, "ddof": ddof} if standardize else {}),
        )
    )
    np.testing.assert_allclose(
        tckd + (1.0 - p_gt) * nckd, kd, rtol=1e-4, atol=ATOL
    )


@pytest.mark.parametrize("label_dtype", ["int32", "int64"])
def test_one_hot_labels_equal_integer_labels(label_dtype):
    teacher, student, labels = random_logits(4)
    one_hot = np.eye(10, dtype="float32")[labels]
    from_ids = dkd(
        teacher, student, labels.astype(label_dtype), reduction="none"
    )
    from_one_hot = dkd(teacher, student, one_hot, reduction="none")
    np.testing.assert_allclose(from_one_hot, from_ids, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        from_ids, ref_dkd(teacher, student, labels), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_huge_logits_stay_finite(temperature):
    """Logits ~1e3 apart: p_gt underflows in float32 unless log-space."""
    teacher, student, labels = random_logits(5, scale=1.0e3)
    per_example = dkd(
        teacher, student, labels, temperature=temperature, reduction="none"
    )
    assert np.all(np.isfinite(per_example)), per_example

    def fn(t, s):
        return decoupled_kd_loss(t, s, labels, temperature=temperature)

    value, (t_grad, s_grad) = value_and_grad(fn, teacher, student)
    assert np.isfinite(value)
    assert np.all(t_grad == 0)
    assert np.all(np.isfinite(s_grad))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_huge_logits_match_reference(temperature):
    # Looser atol: logits/T up to ~3e3 carry float32 rounding of ~1e-4 each.
    teacher, student, labels = random_logits(5, scale=1.0e3)
    np.testing.assert_allclose(
        dkd(
            teacher, student, labels, temperature=temperature, reduction="none"
        ),
        ref_dkd(teacher, student, labels, temperature=temperature),
        rtol=1e-4,
        atol=1e-2,
    )


@pytest.mark.parametrize("standardize", [False, True])
def test_gradients(standardize):
    teacher, student, labels = random_logits(6, batch=4, classes=5)

    def fn(t, s):
        return decoupled_kd_loss(t, s, labels, standardize=standardize)

    _, (t_grad, s_grad) = value_and_grad(fn, teacher, student)
    assert np.all(t_grad == 0)  # the teacher is a constant (stop_gradient)
    assert np.all(np.isfinite(s_grad))
    numeric = ref_numeric_grad(
        lambda s: ref_dkd(teacher, s, labels, standardize=standardize).mean(),
        student,
    )
    np.testing.assert_allclose(
        s_grad, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max()
    )


def test_compiled_matches_eager():
    teacher, student, labels = random_logits(7)

    def fn(t, s, y):
        return decoupled_kd_loss(
            t, s, y, beta=2.0, standardize=True, reduction="none"
        )

    labels = labels.astype("int32")
    eager = to_numpy(fn(teacher, student, labels))
    graph = to_numpy(compiled(fn)(teacher, student, labels))
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        graph,
        ref_dkd(teacher, student, labels, beta=2.0, standardize=True),
        rtol=RTOL,
        atol=ATOL,
    )


def test_distiller_without_labels_fails_before_training_and_says_how():
    import keras

    from keras_kd import Distiller
    from keras_kd.losses import DecoupledKnowledgeDistillation
    from keras_kd.models import conv_net

    keras.utils.set_random_seed(0)
    teacher = conv_net((8, 8, 3), 5, (8, 16), name="teacher")
    student = conv_net((8, 8, 3), 5, (4, 8), name="student")
    distiller = Distiller(teacher, student, [DecoupledKnowledgeDistillation()])
    distiller.compile(optimizer="sgd")
    before = [to_numpy(w) for w in student.weights]
    x = np.random.default_rng(0).uniform(0, 255, (8, 8, 8, 3))
    with pytest.raises(ValueError, match="reads the labels: pass `y`"):
        distiller.fit(x.astype("float32"), epochs=1, verbose=0)
    for a, b in zip(before, student.weights):
        np.testing.assert_array_equal(a, to_numpy(b))
