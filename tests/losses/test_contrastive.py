"""CRD's pure functions vs float64 loop references.

`contrastive_nce_loss` against RepDistiller's ContrastLoss written as a loop
over examples and bank rows (references.py `ref_nce_loss`), and
`contrastive_normalizer` against ContrastMemory's first-step Z
(`ref_nce_normalizer`). Tolerance: rtol=1e-5, atol=1e-5 on the per-example
losses (sums of K+1 logs of O(1-10) magnitude); rtol=1e-5 on Z (a mean of
exponentials times num_examples, so only a relative tolerance is
meaningful).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from keras import ops  # noqa: E402
from references import ref_nce_loss  # noqa: E402
from references import ref_nce_normalizer  # noqa: E402
from references import ref_numeric_grad  # noqa: E402

from keras_kd.losses.contrastive import contrastive_nce_loss  # noqa: E402
from keras_kd.losses.contrastive import contrastive_normalizer  # noqa: E402

RTOL, ATOL = 1e-5, 1e-5


def unit(x, axis=-1):
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def random_inputs(seed, batch=6, negatives=9, dim=8):
    """L2-normalised anchors (B, D) and bank rows (B, K + 1, D)."""
    rng = np.random.default_rng(seed)
    anchor = unit(rng.normal(size=(batch, dim))).astype("float32")
    bank = unit(rng.normal(size=(batch, negatives + 1, dim)))
    # Make the positive correlate with its anchor, as after training.
    bank[:, 0] = unit(bank[:, 0] + 2.0 * anchor)
    return anchor, bank.astype("float32")


def normalizer(anchor, bank, **kwargs):
    return float(to_numpy(contrastive_normalizer(anchor, bank, **kwargs)))


@pytest.mark.parametrize(
    "temperature,num_examples",
    [(0.07, 1000), (0.1, 50000), (0.5, 200), (1.0, 16)],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_nce_loss_matches_reference(temperature, num_examples, seed):
    anchor, bank = random_inputs(seed)
    z = ref_nce_normalizer(anchor, bank, temperature, num_examples)
    out = contrastive_nce_loss(
        anchor,
        bank,
        temperature=temperature,
        num_examples=num_examples,
        normalizer=z,
    )
    assert tuple(out.shape) == (6,)
    assert dtype_name(out) == "float32"
    np.testing.assert_allclose(
        to_numpy(out),
        ref_nce_loss(anchor, bank, temperature, num_examples, z),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("z", [1.0, 37.5, 2.0e4])
def test_nce_loss_other_normalizers(z):
    """Any Z (later steps keep the first step's Z)."""
    anchor, bank = random_inputs(2, negatives=4)
    np.testing.assert_allclose(
        to_numpy(
            contrastive_nce_loss(
                anchor, bank, temperature=0.2, num_examples=500, normalizer=z
            )
        ),
        ref_nce_loss(anchor, bank, 0.2, 500, z),
        rtol=RTOL,
        atol=ATOL,
    )


def test_nce_loss_gradient_wrt_anchor():
    anchor, bank = random_inputs(3, batch=4, negatives=5, dim=6)
    temperature, num_examples = 0.5, 300
    z = ref_nce_normalizer(anchor, bank, temperature, num_examples)

    def fn(a):
        return ops.mean(
            contrastive_nce_loss(
                a,
                bank,
                temperature=temperature,
                num_examples=num_examples,
                normalizer=z,
            )
        )

    value, (a_grad,) = value_and_grad(fn, anchor)
    assert np.isfinite(value)
    assert np.all(np.isfinite(a_grad))
    numeric = ref_numeric_grad(
        lambda a: ref_nce_loss(a, bank, temperature, num_examples, z).mean(),
        anchor,
    )
    np.testing.assert_allclose(
        a_grad, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max()
    )


@pytest.mark.parametrize(
    "temperature,num_examples", [(0.07, 1000), (0.5, 200), (1.0, 16)]
)
@pytest.mark.parametrize("seed", [4, 5])
def test_normalizer_matches_reference(temperature, num_examples, seed):
    anchor, bank = random_inputs(seed)
    out = contrastive_normalizer(
        anchor, bank, temperature=temperature, num_examples=num_examples
    )
    assert tuple(out.shape) == ()
    assert dtype_name(out) == "float32"
    np.testing.assert_allclose(
        float(to_numpy(out)),
        ref_nce_normalizer(anchor, bank, temperature, num_examples),
        rtol=RTOL,
    )


def test_normalizer_weighted_matches_reference():
    anchor, bank = random_inputs(6)
    w = np.random.default_rng(7).uniform(0.0, 2.0, size=6).astype("float32")
    np.testing.assert_allclose(
        normalizer(
            anchor, bank, temperature=0.1, num_examples=800, sample_weight=w
        ),
        ref_nce_normalizer(anchor, bank, 0.1, 800, sample_weight=w),
        rtol=RTOL,
    )


def test_normalizer_unit_weights_equal_no_weights():
    anchor, bank = random_inputs(8)
    options = {"temperature": 0.1, "num_examples": 800}
    np.testing.assert_allclose(
        normalizer(
            anchor, bank, sample_weight=np.ones(6, "float32"), **options
        ),
        normalizer(anchor, bank, **options),
        rtol=1e-6,
    )


def test_normalizer_zero_weight_removes_the_example():
    anchor, bank = random_inputs(9)
    options = {"temperature": 0.1, "num_examples": 800}
    w = np.ones(6, "float32")
    w[3] = 0.0
    base = normalizer(anchor, bank, sample_weight=w, **options)
    other_anchor, other_bank = random_inputs(10)
    anchor2, bank2 = anchor.copy(), bank.copy()
    anchor2[3], bank2[3] = other_anchor[3], other_bank[3]
    np.testing.assert_allclose(
        normalizer(anchor2, bank2, sample_weight=w, **options),
        base,
        rtol=1e-6,
    )
    keep = [0, 1, 2, 4, 5]
    np.testing.assert_allclose(
        normalizer(anchor[keep], bank[keep], **options), base, rtol=1e-6
    )


def test_normalizer_weight_two_equals_duplicate():
    anchor, bank = random_inputs(11)
    options = {"temperature": 0.1, "num_examples": 800}
    w = np.ones(6, "float32")
    w[0] = 2.0
    np.testing.assert_allclose(
        normalizer(anchor, bank, sample_weight=w, **options),
        normalizer(
            np.concatenate([anchor, anchor[:1]]),
            np.concatenate([bank, bank[:1]]),
            **options,
        ),
        rtol=1e-6,
    )


def test_compiled_matches_eager():
    anchor, bank = random_inputs(12)
    options = {"temperature": 0.07, "num_examples": 1000}

    def fn(a, b):
        z = contrastive_normalizer(a, b, **options)
        return contrastive_nce_loss(a, b, normalizer=z, **options), z

    eager_loss, eager_z = fn(anchor, bank)
    graph_loss, graph_z = compiled(fn)(anchor, bank)
    np.testing.assert_allclose(to_numpy(graph_z), to_numpy(eager_z), rtol=1e-5)
    np.testing.assert_allclose(
        to_numpy(graph_loss), to_numpy(eager_loss), rtol=1e-5, atol=1e-6
    )
    z = ref_nce_normalizer(anchor, bank, 0.07, 1000)
    np.testing.assert_allclose(to_numpy(graph_z), z, rtol=RTOL)
    np.testing.assert_allclose(
        to_numpy(graph_loss),
        ref_nce_loss(anchor, bank, 0.07, 1000, z),
        rtol=RTOL,
        atol=ATOL,
    )
