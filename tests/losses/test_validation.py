"""Loss hyperparameters are checked where they are set.

NaN, Inf, negative values and bools used to pass the constructors and
functions and only show up as NaN gradients or a loss of the wrong sign.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_kd import losses as L  # noqa: E402
from keras_kd.losses.validation import check_pair_weights  # noqa: E402
from keras_kd.losses.validation import check_real  # noqa: E402

NAN, INF = float("nan"), float("inf")

# One two-pair constructor per loss that takes pair_weights.
TWO_PAIR_LOSSES = {
    "ActivationBoundary": lambda **kw: L.ActivationBoundary(
        ["a", "b"], ["c", "d"], **kw
    ),
    "AttentionTransfer": lambda **kw: L.AttentionTransfer(
        ["a", "b"], ["c", "d"], **kw
    ),
    "FitNetsHint": lambda **kw: L.FitNetsHint(["a", "b"], ["c", "d"], **kw),
    "NeuronSelectivityTransfer": lambda **kw: L.NeuronSelectivityTransfer(
        ["a", "b"], ["c", "d"], **kw
    ),
}


@pytest.mark.parametrize("loss", sorted(TWO_PAIR_LOSSES))
@pytest.mark.parametrize(
    "weights,error,pattern",
    [
        ([1.0, -0.5], ValueError, r"pair_weights\[1\]=-0.5.*>= 0"),
        ([NAN, 1.0], ValueError, r"pair_weights\[0\]=nan.*finite"),
        ([1.0, INF], ValueError, r"pair_weights\[1\]=inf.*finite"),
        ([True, 1.0], TypeError, r"pair_weights\[0\]=True.*bool"),
        ([1.0, "2"], TypeError, r"real number.*pair_weights\[1\]='2'"),
        ([1.0, None], TypeError, r"pair_weights\[1\]=None"),
        (2.0, TypeError, "one number per layer pair"),
        ([1.0], ValueError, r"2 layer pair\(s\) but received 1 pair_weights"),
    ],
)
def test_bad_pair_weights_rejected(loss, weights, error, pattern):
    with pytest.raises(error, match=pattern) as info:
        TWO_PAIR_LOSSES[loss](pair_weights=weights)
    assert loss in str(info.value)


@pytest.mark.parametrize("loss", sorted(TWO_PAIR_LOSSES))
def test_good_pair_weights_kept_as_floats(loss):
    made = TWO_PAIR_LOSSES[loss](pair_weights=[0, np.float32(2.5)])
    assert made.pair_weights == [0.0, 2.5]
    assert all(type(w) is float for w in made.pair_weights)
    # The config holds plain floats too (JSON-serialisable, round-trips).
    config = made.get_config()
    assert config["pair_weights"] == [0.0, 2.5]
    assert type(made).from_config(config).pair_weights == [0.0, 2.5]
    made = TWO_PAIR_LOSSES[loss](pair_weights=np.array([1.0, 0.5]))
    assert made.pair_weights == [1.0, 0.5]


BAD_HYPERPARAMETERS = [
    # ActivationBoundary: the margin mu.
    (
        lambda v: L.ActivationBoundary("a", "b", margin=v),
        "margin",
        [
            (-1.0, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            (True, TypeError),
            ("1", TypeError),
        ],
    ),
    (
        lambda v: L.activation_boundary_loss(
            np.ones((2, 3), "float32"), np.ones((2, 3), "float32"), v
        ),
        "margin",
        [
            (-1.0, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            (True, TypeError),
        ],
    ),
    # AttentionTransfer: the exponent p.
    (
        lambda v: L.AttentionTransfer("a", "b", p=v),
        "p",
        [
            (0, ValueError),
            (-2.0, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            (True, TypeError),
            (None, TypeError),
        ],
    ),
    (
        lambda v: L.attention_map(np.ones((1, 2, 2, 3), "float32"), p=v),
        "p",
        [(NAN, ValueError), (INF, ValueError), (True, TypeError)],
    ),
    # NeuronSelectivityTransfer: bandwidth, offset (class and function).
    (
        lambda v: L.NeuronSelectivityTransfer(
            "a", "b", kernel="gaussian", bandwidth=v
        ),
        "bandwidth",
        [
            (0.0, ValueError),
            (-1.0, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            (True, TypeError),
        ],
    ),
    (
        lambda v: L.NeuronSelectivityTransfer("a", "b", offset=v),
        "offset",
        [
            (-0.5, ValueError),
            (NAN, ValueError),
            (INF, ValueError),
            (True, TypeError),
        ],
    ),
    (
        lambda v: L.neuron_selectivity_loss(
            np.ones((1, 2, 2, 3), "float32"),
            np.ones((1, 2, 2, 3), "float32"),
            offset=v,
        ),
        "offset",
        [(-0.5, ValueError), (NAN, ValueError)],
    ),
    (
        lambda v: L.neuron_selectivity_loss(
            np.ones((1, 2, 2, 3), "float32"),
            np.ones((1, 2, 2, 3), "float32"),
            epsilon=v,
        ),
        "epsilon",
        [(NAN, ValueError), (-1e-12, ValueError), (True, TypeError)],
    ),
]


@pytest.mark.parametrize(
    "make,name,value,error",
    [
        (make, name, value, error)
        for make, name, cases in BAD_HYPERPARAMETERS
        for value, error in cases
    ],
)
def test_bad_hyperparameters_rejected_where_set(make, name, value, error):
    with pytest.raises(error) as info:
        make(value)
    assert f"{name}={value!r}" in str(info.value)


def test_why_offset_must_be_non_negative():
    # (x.y + c)^2 = (x.y)^2 + 2c x.y + c^2: for c < 0 the kernel is not
    # positive semi-definite and MMD^2 can go negative. Student = -teacher
    # has the same (x.y)^2 statistics, so MMD^2 = 2c * MMD^2_linear < 0.
    # A tensor offset is not checked (it may be symbolic); a number is.
    from keras import ops

    rng = np.random.default_rng(0)
    t = np.abs(rng.normal(size=(2, 4, 4, 6))).astype("float32")
    unchecked = L.neuron_selectivity_loss(
        t, -t, offset=ops.convert_to_tensor(-0.5), reduction="none"
    )
    assert np.all(ops.convert_to_numpy(unchecked) < 0)
    with pytest.raises(ValueError, match="offset=-0.5"):
        L.neuron_selectivity_loss(t, -t, offset=-0.5)
    for offset in (0.0, 0.5, 2.0):
        values = L.neuron_selectivity_loss(
            t, -t, offset=offset, reduction="none"
        )
        assert np.all(ops.convert_to_numpy(values) >= 0)


def test_nst_class_needs_numbers_for_its_config():
    import keras

    with pytest.raises(TypeError, match="bandwidth"):
        L.NeuronSelectivityTransfer("a", "b", bandwidth=keras.Variable(1.0))


def test_check_real_messages():
    assert check_real(3, "x") == 3.0 and type(check_real(3, "x")) is float
    with pytest.raises(
        ValueError,
        match=r"`x` must be > 0 and <= 2; "
        r"received x=3\. Try x=1\.",
    ):
        check_real(3, "x", minimum=0, strict=True, maximum=2, hint="Try x=1.")
    with pytest.raises(ValueError, match=r"Owner: `x` must be >= 0"):
        check_real(-1, "x", minimum=0, owner="Owner")
    with pytest.raises(TypeError, match="A bool is not accepted"):
        check_real(np.bool_(True), "x")
    assert check_pair_weights((1, 2), 2, "Loss") == [1.0, 2.0]
