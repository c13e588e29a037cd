"""BSS base samples, target classes and attack vs float64 references.

The references (boundary_references.py) follow the official BSS code per
example in float64; the attack reference runs on a linear teacher
(`Normalization`, `Flatten`, `Dense`), whose gradient is analytic. Every
case is checked to be far from a tie (scores, sampling boundaries, move
decisions), so float32 cannot flip a discrete choice. Tolerance for the
attacked inputs: rtol=1e-4, atol=1e-5 (raw inputs in [0, 1], steps of
O(0.1) to O(1)).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from boundary_references import ref_boundary_attack  # noqa: E402
from boundary_references import ref_linear_logits  # noqa: E402
from boundary_references import ref_qualifying  # noqa: E402
from boundary_references import ref_sample_target_classes  # noqa: E402
from boundary_references import ref_select_base_samples  # noqa: E402
from boundary_references import ref_selection_margin  # noqa: E402
from boundary_references import ref_target_margin  # noqa: E402

from keras_kd.procedures.boundary import boundary_attack  # noqa: E402
from keras_kd.procedures.boundary import sample_target_classes  # noqa: E402
from keras_kd.procedures.boundary import select_base_samples  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5
# Wide enough never to bind: the tests of clipping pass their own bounds.
NO_CLIP = (-1e3, 1e3)
SHAPE = (2, 2, 3)
CHANNEL_MEAN = np.array([0.49, 0.48, 0.45])
CHANNEL_SCALE = np.array([0.25, 0.4, 0.15])
# name -> (mean, scale, the `input_scale` argument; None: left at default).
SCALES = {
    "default": (0.0, 1.0, None),
    "scalar": (0.45, 0.27, 0.27),
    "channels": (CHANNEL_MEAN, CHANNEL_SCALE, CHANNEL_SCALE),
}


# --------------------------------------------------------------------------
# select_base_samples
# --------------------------------------------------------------------------


def selection_case(seed, batch, n_qualifying, classes=5):
    """Logits and labels where exactly `n_qualifying` examples have both
    argmaxes on the label; the others fail through the teacher, the student
    or both."""
    rng = np.random.default_rng(seed)
    teacher = 2.0 * rng.normal(size=(batch, classes))
    student = 2.0 * rng.normal(size=(batch, classes))
    labels = np.argmax(teacher, axis=1)
    qualifying = set(rng.permutation(batch)[:n_qualifying].tolist())
    for i in range(batch):
        boost = rng.uniform(0.3, 2.0)
        if i in qualifying:
            student[i, labels[i]] = student[i].max() + boost
            continue
        kind = i % 3
        if kind in (0, 2):  # the teacher misses the label
            labels[i] = (labels[i] + rng.integers(1, classes)) % classes
        if kind == 0:  # ...and the student hits it
            student[i, labels[i]] = student[i].max() + boost
        else:  # the student misses it
            wrong = (labels[i] + rng.integers(1, classes)) % classes
            student[i, wrong] = student[i].max() + boost
    return (
        teacher.astype("float32"),
        student.astype("float32"),
        labels.astype("int32"),
    )


def chosen_set(teacher, student, labels, max_samples):
    """The keras_kd choice as a set, after checking shapes and dtypes."""
    indices, mask = select_base_samples(teacher, student, labels, max_samples)
    k = min(max_samples, teacher.shape[0])
    assert tuple(indices.shape) == (k,)
    assert tuple(mask.shape) == (k,)
    assert dtype_name(mask) == "float32"
    assert dtype_name(indices).startswith(("int", "uint"))
    indices, mask = to_numpy(indices), to_numpy(mask)
    assert set(np.unique(mask).tolist()) <= {0.0, 1.0}
    chosen = indices[mask == 1.0].tolist()
    assert all(0 <= i < teacher.shape[0] for i in chosen)
    assert len(chosen) == len(set(chosen)), chosen
    return set(chosen)


@pytest.mark.parametrize(
    "batch, n_qualifying, max_samples",
    [
        (16, 11, 4),  # more qualify than kept: top scores
        (16, 11, 10),
        (12, 5, 8),  # fewer qualify: all of them
        (12, 6, 6),  # exactly max_samples qualify
        (6, 4, 64),  # max_samples above the batch: k = batch
        (9, 1, 4),  # exactly one (the official code crashes here)
        (9, 0, 4),  # none: mask all zeros
    ],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_select_base_samples(seed, batch, n_qualifying, max_samples):
    teacher, student, labels = selection_case(seed, batch, n_qualifying)
    assert len(ref_qualifying(teacher, student, labels)) == n_qualifying
    assert ref_selection_margin(teacher, student, labels, max_samples) > 1e-5
    expected = ref_select_base_samples(teacher, student, labels, max_samples)
    assert len(expected) == min(n_qualifying, max_samples)
    assert chosen_set(teacher, student, labels, max_samples) == expected


def test_select_ranks_by_off_label_distance():
    """Two qualifying examples, one kept: the score leaves out the label.

    Example 0 differs from its teacher mostly on the label (off-label score
    0.0216, 0.0649 with the label), example 1 only off it (0.0371 both).
    """
    teacher = np.array(
        [[2.0, 0.0, 0.0], [3.0, 1.5, 0.0], [0.0, 5.0, 0.0]], "float32"
    )
    student = np.array(
        [[6.0, 0.0, 0.0], [3.0, 0.0, 1.5], [0.0, 0.0, 5.0]], "float32"
    )
    labels = np.array([0, 0, 1], "int32")
    assert ref_select_base_samples(teacher, student, labels, 1) == {1}
    assert chosen_set(teacher, student, labels, 1) == {1}


# --------------------------------------------------------------------------
# sample_target_classes
# --------------------------------------------------------------------------


def safe_uniform(rng, logits, min_margin=1e-4):
    """Uniform draws in [0, 1), redrawn while within `min_margin` of a
    class boundary."""
    u = rng.uniform(size=logits.shape[0]).astype("float32")
    while True:
        close = ref_target_margin(logits, u) < min_margin
        if not close.any():
            return u
        u[close] = rng.uniform(size=int(close.sum())).astype("float32")


def call_targets(logits, uniform):
    out = sample_target_classes(logits, uniform)
    assert tuple(out.shape) == (logits.shape[0],)
    assert dtype_name(out).startswith(("int", "uint"))
    return to_numpy(out)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_target_classes_match_reference(seed):
    rng = np.random.default_rng(seed)
    logits = (2.0 * rng.normal(size=(32, 10))).astype("float32")
    uniform = safe_uniform(rng, logits)
    expected = ref_sample_target_classes(logits, uniform)
    out = call_targets(logits, uniform)
    np.testing.assert_array_equal(out, expected)
    assert not np.any(out == np.argmax(logits, axis=1))


def test_target_classes_cover_every_class():
    """One row, uniforms on a grid: every class but the top one is drawn,
    each as often as its share of the remaining probability."""
    rng = np.random.default_rng(3)
    row = (0.5 * rng.normal(size=(1, 6))).astype("float32")
    n = 400
    logits = np.repeat(row, n, axis=0)
    uniform = ((np.arange(n) + 0.5) / n).astype("float32")
    keep = ref_target_margin(logits, uniform) > 1e-4
    logits, uniform = logits[keep], uniform[keep]
    expected = ref_sample_target_classes(logits, uniform)
    top = int(np.argmax(row))
    assert set(expected.tolist()) == set(range(6)) - {top}
    np.testing.assert_array_equal(call_targets(logits, uniform), expected)


def test_zero_uniform_gives_the_second_class():
    rng = np.random.default_rng(4)
    logits = (2.0 * rng.normal(size=(16, 7))).astype("float32")
    second = np.argsort(-logits.astype(np.float64), axis=1)[:, 1]
    uniform = np.zeros(16, "float32")
    np.testing.assert_array_equal(
        ref_sample_target_classes(logits, uniform), second
    )
    np.testing.assert_array_equal(call_targets(logits, uniform), second)


# --------------------------------------------------------------------------
# boundary_attack
# --------------------------------------------------------------------------


def linear_teacher(kernel, bias, mean, scale, shape=SHAPE):
    """Normalization((x - mean) / scale) -> Flatten -> Dense, float32."""
    model = keras.Sequential(
        [
            keras.Input(shape),
            keras.layers.Normalization(mean=mean, variance=np.square(scale)),
            keras.layers.Flatten(),
            keras.layers.Dense(kernel.shape[1]),
        ]
    )
    model.layers[-1].set_weights(
        [kernel.astype("float32"), bias.astype("float32")]
    )
    return model


def attack_case(seed, mean, scale, batch=8, classes=4):
    """Raw inputs in [0, 1] and a kernel whose last class is far from the
    others: an attack towards or away from it flips in one step (step size
    0.3), an attack between the other classes moves for all 10 steps."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch,) + SHAPE).astype("float32")
    dim = int(np.prod(SHAPE))
    kernel = 0.15 * rng.normal(size=(dim, classes))
    kernel[:, -1] *= 12.0
    bias = 0.5 * rng.normal(size=classes)
    kernel = kernel.astype("float32")
    bias = bias.astype("float32")
    base = np.argmax(ref_linear_logits(x, kernel, bias, mean, scale), axis=1)
    targets = np.zeros(batch, "int32")
    for i in range(batch):
        if base[i] == classes - 1 or i % 2 == 0:
            near = [c for c in range(classes) if c != base[i]]
            targets[i] = near[rng.integers(len(near))]
        else:
            near = [c for c in range(classes - 1) if c != base[i]]
            targets[i] = near[rng.integers(len(near))]
    return x, targets, kernel, bias


def call_attack(teacher, x, targets, input_scale, **kwargs):
    kwargs.setdefault("clip", NO_CLIP)
    if input_scale is not None:
        kwargs["input_scale"] = input_scale
    x_in = x.copy()
    out = boundary_attack(teacher, x_in, targets, **kwargs)
    np.testing.assert_array_equal(x_in, x)  # the input is left alone
    assert tuple(out.shape) == x.shape
    assert dtype_name(out) == "float32"
    return to_numpy(out)


@pytest.mark.parametrize("scale_kind", sorted(SCALES))
@pytest.mark.parametrize("seed", [0, 1])
def test_one_step_matches_reference(seed, scale_kind):
    mean, scale, input_scale = SCALES[scale_kind]
    x, targets, kernel, bias = attack_case(seed, mean, scale)
    teacher = linear_teacher(kernel, bias, mean, scale)
    # The Keras teacher is the linear model the reference differentiates.
    np.testing.assert_allclose(
        to_numpy(teacher(x)),
        ref_linear_logits(x, kernel, bias, mean, scale),
        rtol=1e-5,
        atol=1e-5,
    )
    expected, active, margin = ref_boundary_attack(
        x, targets, kernel, bias, mean, scale, steps=1, clip=NO_CLIP
    )
    assert active[0].all() and margin > 1e-3
    assert np.abs(expected - x).max() > 1e-2  # the step is not negligible
    out = call_attack(teacher, x, targets, input_scale, steps=1)
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("steps", [2, 10])
@pytest.mark.parametrize("scale_kind", sorted(SCALES))
@pytest.mark.parametrize("seed", [1, 2, 9])
def test_stopping_rule_matches_reference(seed, scale_kind, steps):
    """Examples the teacher no longer gives their base class stop moving;
    the others go on (the official mask is recomputed every step)."""
    mean, scale, input_scale = SCALES[scale_kind]
    x, targets, kernel, bias = attack_case(seed, mean, scale)
    expected, active, margin = ref_boundary_attack(
        x, targets, kernel, bias, mean, scale, steps=steps, clip=NO_CLIP
    )
    assert margin > 1e-3
    stopped_early = active[0] & ~active[1]
    moving_throughout = active.all(axis=0)
    assert stopped_early.any() and moving_throughout.any()
    teacher = linear_teacher(kernel, bias, mean, scale)
    out = call_attack(
        teacher, x, targets, input_scale, steps=steps, step_size=0.3
    )
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)
    # Stopped examples sit where their first step left them.
    one_step, _, _ = ref_boundary_attack(
        x, targets, kernel, bias, mean, scale, steps=1, clip=NO_CLIP
    )
    np.testing.assert_allclose(
        out[stopped_early], one_step[stopped_early], rtol=RTOL, atol=ATOL
    )


def test_stop_when_a_third_class_takes_over():
    """Moving towards class 1, class 2 overtakes the base class 0 after the
    third step: the example stops although the target was never reached.

    By hand (one pixel, two channels, only the first one matters):
    f = (0, x - 2, x / 2 - 0.6); x moves by 0.3 * (f_0 - f_1 + 1e-4) while
    f_0 is the largest: 0 -> 0.60003 -> 1.020051 -> 1.3140657, then
    f_2 = 0.057 > f_0 = 0.
    """
    kernel = np.array([[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]], "float32")
    bias = np.array([0.0, -2.0, -0.6], "float32")
    x = np.zeros((1, 1, 1, 2), "float32")
    targets = np.array([1], "int32")
    expected, active, _ = ref_boundary_attack(
        x, targets, kernel, bias, 0.0, 1.0, steps=10, clip=NO_CLIP
    )
    np.testing.assert_allclose(
        expected.reshape(-1), [1.3140657, 0.0], rtol=0, atol=1e-7
    )
    assert active[:, 0].tolist() == [True] * 3 + [False] * 7
    teacher = linear_teacher(kernel, bias, 0.0, 1.0, shape=(1, 1, 2))
    out = call_attack(teacher, x, targets, None, steps=10, step_size=0.3)
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("scale_kind", ["scalar", "channels"])
def test_clipping_matches_reference(scale_kind, steps):
    mean, scale, input_scale = SCALES[scale_kind]
    x, targets, kernel, bias = attack_case(5, mean, scale)
    clip = (0.0, 1.0)
    kwargs = dict(steps=steps, step_size=2.0)
    expected, _, margin = ref_boundary_attack(
        x, targets, kernel, bias, mean, scale, clip=clip, **kwargs
    )
    unclipped, _, _ = ref_boundary_attack(
        x, targets, kernel, bias, mean, scale, clip=NO_CLIP, **kwargs
    )
    assert margin > 1e-3
    at_bound = (expected == 0.0) | (expected == 1.0)
    assert 0.05 < at_bound.mean() < 0.95  # clipping binds, not everywhere
    assert np.abs(unclipped - expected).max() > 0.1
    teacher = linear_teacher(kernel, bias, mean, scale)
    out = call_attack(teacher, x, targets, input_scale, clip=clip, **kwargs)
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out, expected, rtol=RTOL, atol=ATOL)
