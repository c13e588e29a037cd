"""DeepInversion's terms vs float64 NumPy references written with loops.

- BatchNormalization statistics: per channel, the mean and the population
  variance of the layer's input over every other axis, then the unsquared
  norms of the differences from the moving statistics.
- Total variation: every neighbour difference visited pixel by pixel (two
  directions for "paper", four for "official"), squared and summed per
  direction, square-rooted per direction.
- Adaptive term: 1 - mean JS with the paper's KL(p || M) (not the official
  code's KL(M || P) on clipped probabilities).
Tolerance: rtol 1e-5 (float32 vs float64).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from references import ref_numeric_grad  # noqa: E402

from keras_kd.procedures import inversion_terms as T  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


def ref_bn_statistics(x, mean, variance, axis=-1):
    x = np.moveaxis(np.asarray(x, np.float64), axis, -1)
    channels = x.shape[-1]
    flat = x.reshape(-1, channels)
    mu = np.zeros(channels)
    var = np.zeros(channels)
    for c in range(channels):
        column = flat[:, c]
        mu[c] = sum(column) / len(column)
        var[c] = sum((v - mu[c]) ** 2 for v in column) / len(column)
    mean = np.asarray(mean, np.float64)
    variance = np.asarray(variance, np.float64)
    return np.sqrt(np.sum((mu - mean) ** 2)) + np.sqrt(
        np.sum((var - variance) ** 2)
    )


def ref_total_variation(x, mode):
    x = np.asarray(x, np.float64)
    b, h, w, c = x.shape
    directions = [(0, 1), (1, 0)]
    if mode == "official":
        # x[i+1, j] - x[i, j+1] and x[i, j] - x[i+1, j+1]
        directions += ["anti", (1, 1)]
    total = 0.0
    for d in directions:
        s = 0.0
        for n in range(b):
            for i in range(h):
                for j in range(w):
                    for k in range(c):
                        if d == "anti":
                            if i + 1 < h and j + 1 < w:
                                s += (
                                    x[n, i + 1, j, k] - x[n, i, j + 1, k]
                                ) ** 2
                        else:
                            di, dj = d
                            if i + di < h and j + dj < w:
                                s += (
                                    x[n, i, j, k] - x[n, i + di, j + dj, k]
                                ) ** 2
        total += np.sqrt(s)
    return total


def ref_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def ref_adaptive(teacher, student, temperature):
    p = ref_softmax(np.asarray(teacher, np.float64) / temperature)
    q = ref_softmax(np.asarray(student, np.float64) / temperature)
    js = []
    for pi, qi in zip(p, q):
        m = 0.5 * (pi + qi)
        kl_p = sum(a * np.log(a / b) for a, b in zip(pi, m) if a > 0)
        kl_q = sum(a * np.log(a / b) for a, b in zip(qi, m) if a > 0)
        js.append(0.5 * (kl_p + kl_q))
    return 1.0 - np.mean(js)


def _features(seed, shape=(4, 5, 6, 3)):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 2.0 + 0.5).astype("float32")
    mean = rng.normal(size=shape[-1]).astype("float32")
    variance = rng.uniform(0.5, 3.0, size=shape[-1]).astype("float32")
    return x, mean, variance


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(4, 5, 6, 3), (8, 7)])
def test_bn_statistics_matches_reference(seed, shape):
    x, mean, variance = _features(seed, shape)
    out = to_numpy(T.batch_norm_statistics_loss(x, mean, variance))
    np.testing.assert_allclose(
        out, ref_bn_statistics(x, mean, variance), rtol=RTOL, atol=ATOL
    )


def test_bn_statistics_on_a_channels_first_axis():
    x, _, _ = _features(3, (4, 3, 5, 6))
    _, mean, variance = _features(3, (3,))
    out = to_numpy(T.batch_norm_statistics_loss(x, mean, variance, axis=1))
    np.testing.assert_allclose(
        out, ref_bn_statistics(x, mean, variance, axis=1), rtol=RTOL
    )


def test_bn_statistics_gradient_matches_finite_differences():
    x, mean, variance = _features(4, (3, 2, 2, 2))

    def fn(v):
        return T.batch_norm_statistics_loss(v, mean, variance)

    _, (grad,) = value_and_grad(fn, x)
    numeric = ref_numeric_grad(
        lambda v: ref_bn_statistics(v, mean, variance), x
    )
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4)


def test_bn_statistics_is_zero_at_the_moving_statistics():
    x, _, _ = _features(5)
    flat = x.reshape(-1, x.shape[-1]).astype(np.float64)
    out = to_numpy(T.batch_norm_statistics_loss(x, flat.mean(0), flat.var(0)))
    assert abs(float(out)) < 1e-4


@pytest.mark.parametrize("mode", T.TV_MODES)
@pytest.mark.parametrize("seed", [0, 1])
def test_total_variation_matches_reference(mode, seed):
    x = np.random.default_rng(seed).normal(size=(2, 5, 4, 3)).astype("float32")
    out = to_numpy(T.total_variation(x, mode=mode))
    np.testing.assert_allclose(
        out, ref_total_variation(x, mode), rtol=RTOL, atol=ATOL
    )


def test_total_variation_modes_differ_and_unknown_mode_is_refused():
    x = np.random.default_rng(7).normal(size=(1, 4, 4, 1)).astype("float32")
    official = float(to_numpy(T.total_variation(x)))
    paper = float(to_numpy(T.total_variation(x, mode="paper")))
    assert official > paper > 0
    with pytest.raises(ValueError, match="Unknown total-variation mode"):
        T.total_variation(x, mode="diagonal")


def test_image_l2_is_the_norm_of_the_whole_batch():
    x = np.random.default_rng(8).normal(size=(3, 4, 4, 2)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(T.image_l2(x)),
        np.sqrt(np.sum(np.asarray(x, np.float64) ** 2)),
        rtol=RTOL,
    )


@pytest.mark.parametrize("temperature", [1.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_adaptive_term_matches_reference(seed, temperature):
    rng = np.random.default_rng(seed)
    teacher = (rng.normal(size=(6, 10)) * 3).astype("float32")
    student = (rng.normal(size=(6, 10)) * 3).astype("float32")
    out = to_numpy(
        T.adaptive_competition_loss(teacher, student, temperature=temperature)
    )
    np.testing.assert_allclose(
        out, ref_adaptive(teacher, student, temperature), rtol=RTOL, atol=ATOL
    )


def test_adaptive_term_is_bounded_and_symmetric():
    rng = np.random.default_rng(9)
    teacher = (rng.normal(size=(5, 4)) * 20).astype("float32")
    student = (-teacher).astype("float32")
    forward = float(to_numpy(T.adaptive_competition_loss(teacher, student)))
    backward = float(to_numpy(T.adaptive_competition_loss(student, teacher)))
    assert forward == pytest.approx(backward, rel=1e-6)
    assert 1.0 - np.log(2.0) - 1e-6 <= forward < 1.0


def test_adaptive_term_gradient_matches_finite_differences():
    rng = np.random.default_rng(10)
    teacher = rng.normal(size=(3, 4)).astype("float32")
    student = rng.normal(size=(3, 4)).astype("float32")

    def fn(s):
        return T.adaptive_competition_loss(teacher, s, temperature=3.0)

    _, (grad,) = value_and_grad(fn, student)
    numeric = ref_numeric_grad(lambda s: ref_adaptive(teacher, s, 3.0), student)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-5)


def test_terms_compile():
    x, mean, variance = _features(11)

    def all_terms(v):
        return (
            T.batch_norm_statistics_loss(v, mean, variance)
            + T.total_variation(v)
            + T.image_l2(v)
        )

    np.testing.assert_allclose(
        to_numpy(compiled(all_terms)(x)),
        ref_bn_statistics(x, mean, variance)
        + ref_total_variation(x, "official")
        + np.sqrt(np.sum(np.asarray(x, np.float64) ** 2)),
        rtol=RTOL,
    )
