"""FSP matrices and loss vs the float64 loop references in references.py.

The reference pools with PyTorch's `adaptive_avg_pool2d` windows written
out as loops and builds every FSP entry as an explicit mean over (h, w).
Tolerance: rtol=1e-5, atol=1e-6 (float32 vs float64; every entry is a
mean of at most 64 products of unit-scale values).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from references import ref_adaptive_avg_pool  # noqa: E402
from references import ref_fsp_loss  # noqa: E402
from references import ref_fsp_matrix  # noqa: E402
from references import ref_numeric_grad  # noqa: E402

from keras_kd.losses.flow_of_solution import flow_of_solution_loss  # noqa: E402
from keras_kd.losses.flow_of_solution import flow_of_solution_matrix  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6


def random_pair(batch, bottom_hw, top_hw, c1, c2, rng):
    bottom = rng.normal(size=(batch, *bottom_hw, c1)).astype("float32")
    top = rng.normal(size=(batch, *top_hw, c2)).astype("float32")
    return bottom, top


def random_case(seed, teacher_hw=((8, 8), (4, 4)), student_hw=None):
    """(teacher_bottom, teacher_top, student_bottom, student_top)."""
    rng = np.random.default_rng(seed)
    student_hw = student_hw or teacher_hw
    t_bottom, t_top = random_pair(5, *teacher_hw, 3, 4, rng)
    s_bottom, s_top = random_pair(5, *student_hw, 3, 4, rng)
    return t_bottom, t_top, s_bottom, s_top


def test_reference_pooling_windows():
    """The reference's adaptive pooling: 6 -> 4 windows overlap."""
    x = np.arange(36, dtype=np.float64).reshape(6, 6, 1)
    pooled = ref_adaptive_avg_pool(x, 4, 4)[:, :, 0]
    # Rows and columns {0,1}, {1,2}, {3,4}, {4,5}.
    windows = [(0, 2), (1, 3), (3, 5), (4, 6)]
    for i, (r0, r1) in enumerate(windows):
        for j, (c0, c1) in enumerate(windows):
            assert pooled[i, j] == x[r0:r1, c0:c1, 0].mean()


@pytest.mark.parametrize(
    "bottom_hw,top_hw",
    [
        ((4, 4), (4, 4)),  # same size: no pooling
        ((8, 8), (4, 4)),  # bottom larger, integer ratio
        ((4, 4), (8, 8)),  # top larger
        ((6, 6), (4, 4)),  # non-integer ratio: overlapping windows
        ((4, 4), (6, 6)),
        ((5, 5), (3, 3)),
        ((8, 6), (4, 3)),  # non-square: pooled to the smaller's H x W
    ],
)
def test_matrix_matches_reference(bottom_hw, top_hw):
    rng = np.random.default_rng(sum(bottom_hw) + 10 * sum(top_hw))
    bottom, top = random_pair(4, bottom_hw, top_hw, 3, 5, rng)
    out = flow_of_solution_matrix(bottom, top)
    assert tuple(out.shape) == (4, 3, 5)
    assert dtype_name(out) == "float32"
    np.testing.assert_allclose(
        to_numpy(out), ref_fsp_matrix(bottom, top), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("mode", ["code", "paper"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_matches_reference(mode, seed):
    t_bottom, t_top, s_bottom, s_top = random_case(seed)
    expected = ref_fsp_loss(t_bottom, t_top, s_bottom, s_top, mode)
    per_example = flow_of_solution_loss(
        t_bottom, t_top, s_bottom, s_top, mode=mode, reduction="none"
    )
    assert tuple(per_example.shape) == (5,)
    assert dtype_name(per_example) == "float32"
    np.testing.assert_allclose(
        to_numpy(per_example), expected, rtol=RTOL, atol=ATOL
    )
    mean = flow_of_solution_loss(t_bottom, t_top, s_bottom, s_top, mode=mode)
    assert tuple(mean.shape) == ()
    assert dtype_name(mean) == "float32"
    np.testing.assert_allclose(
        float(to_numpy(mean)), expected.mean(), rtol=RTOL, atol=ATOL
    )
    # The batch mean of the per-example values is the scalar.
    np.testing.assert_allclose(
        float(to_numpy(mean)), to_numpy(per_example).mean(), rtol=1e-6
    )


def test_paper_is_code_times_channel_pairs():
    t_bottom, t_top, s_bottom, s_top = random_case(3)
    code = to_numpy(
        flow_of_solution_loss(
            t_bottom, t_top, s_bottom, s_top, mode="code", reduction="none"
        )
    )
    paper = to_numpy(
        flow_of_solution_loss(
            t_bottom, t_top, s_bottom, s_top, mode="paper", reduction="none"
        )
    )
    np.testing.assert_allclose(paper, 3 * 4 * code, rtol=1e-5)


def test_defaults_are_code_and_mean():
    t_bottom, t_top, s_bottom, s_top = random_case(4)
    np.testing.assert_allclose(
        float(
            to_numpy(flow_of_solution_loss(t_bottom, t_top, s_bottom, s_top))
        ),
        ref_fsp_loss(t_bottom, t_top, s_bottom, s_top, "code").mean(),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize(
    "teacher_hw,student_hw",
    [
        (((6, 6), (4, 4)), ((6, 6), (4, 4))),  # 6x6 -> 4x4 on both sides
        (((4, 4), (6, 6)), ((8, 8), (4, 4))),  # different sizes per network
    ],
)
def test_non_integer_pooling_loss(teacher_hw, student_hw):
    t_bottom, t_top, s_bottom, s_top = random_case(5, teacher_hw, student_hw)
    for mode in ("code", "paper"):
        np.testing.assert_allclose(
            to_numpy(
                flow_of_solution_loss(
                    t_bottom,
                    t_top,
                    s_bottom,
                    s_top,
                    mode=mode,
                    reduction="none",
                )
            ),
            ref_fsp_loss(t_bottom, t_top, s_bottom, s_top, mode),
            rtol=RTOL,
            atol=ATOL,
        )


def test_identical_features_give_zero():
    t_bottom, t_top, _, _ = random_case(6)
    np.testing.assert_allclose(
        to_numpy(
            flow_of_solution_loss(
                t_bottom, t_top, t_bottom, t_top, reduction="none"
            )
        ),
        0.0,
        atol=1e-7,
    )


@pytest.mark.parametrize("mode", ["code", "paper"])
def test_gradients(mode):
    rng = np.random.default_rng(7)
    t_bottom, t_top = random_pair(3, (6, 6), (4, 4), 2, 3, rng)
    s_bottom, s_top = random_pair(3, (6, 6), (4, 4), 2, 3, rng)

    def fn(a, b, c, d):
        return flow_of_solution_loss(a, b, c, d, mode=mode)

    _, grads = value_and_grad(fn, t_bottom, t_top, s_bottom, s_top)
    # The teacher is a constant (stop_gradient).
    assert np.all(grads[0] == 0) and np.all(grads[1] == 0)
    for g in grads[2:]:
        assert np.all(np.isfinite(g))
    # The student's gradients against float64 central differences.
    numeric_bottom = ref_numeric_grad(
        lambda x: ref_fsp_loss(t_bottom, t_top, x, s_top, mode).mean(),
        s_bottom,
    )
    numeric_top = ref_numeric_grad(
        lambda x: ref_fsp_loss(t_bottom, t_top, s_bottom, x, mode).mean(),
        s_top,
    )
    for got, want in ((grads[2], numeric_bottom), (grads[3], numeric_top)):
        np.testing.assert_allclose(
            got, want, rtol=1e-3, atol=1e-5 * np.abs(want).max()
        )


def test_compiled_matches_eager():
    t_bottom, t_top, s_bottom, s_top = random_case(8, ((6, 6), (4, 4)))

    def fn(a, b, c, d):
        return flow_of_solution_loss(a, b, c, d, mode="paper")

    eager = to_numpy(fn(t_bottom, t_top, s_bottom, s_top))
    graph = to_numpy(compiled(fn)(t_bottom, t_top, s_bottom, s_top))
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(
        graph,
        ref_fsp_loss(t_bottom, t_top, s_bottom, s_top, "paper").mean(),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("which", ["bottom", "top"])
def test_mismatched_channels(which):
    rng = np.random.default_rng(9)
    t_bottom, t_top = random_pair(2, (4, 4), (4, 4), 3, 4, rng)
    if which == "bottom":
        s_bottom, s_top = random_pair(2, (4, 4), (4, 4), 2, 4, rng)
    else:
        s_bottom, s_top = random_pair(2, (4, 4), (4, 4), 3, 5, rng)
    with pytest.raises(ValueError):
        flow_of_solution_loss(t_bottom, t_top, s_bottom, s_top)
