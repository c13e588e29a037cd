"""activation_boundary_loss / boundary_agreement vs a float64 NumPy reference.

Tolerance: float32 results vs float64 reference, rtol=1e-4, atol=1e-5.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import re  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled_unknown_batch  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from keras import ops  # noqa: E402

from keras_kd.losses.activation_boundary import activation_boundary_loss  # noqa: E402
from keras_kd.losses.activation_boundary import boundary_agreement  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def np_ab_per_example(t, s, margin):
    """Paper formula, loop-wise, float64: sum over non-batch elements."""
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    out = np.zeros(t.shape[0])
    for b in range(t.shape[0]):
        total = 0.0
        for idx in np.ndindex(t.shape[1:]):
            tv, sv = t[b][idx], s[b][idx]
            if tv > 0:
                total += max(margin - sv, 0.0) ** 2
            else:
                total += max(margin + sv, 0.0) ** 2
        out[b] = total
    return out


def np_agreement_per_example(t, s):
    t, s = np.asarray(t, np.float64), np.asarray(s, np.float64)
    out = np.zeros(t.shape[0])
    for b in range(t.shape[0]):
        hits = [(t[b][i] > 0) == (s[b][i] > 0) for i in np.ndindex(t.shape[1:])]
        out[b] = np.mean(hits)
    return out


def random_pair(shape, seed):
    rng = np.random.default_rng(seed)
    t = rng.normal(size=shape).astype("float32")
    t[(rng.random(size=shape) < 0.1)] = 0.0  # exact zeros count as "off"
    s = (1.5 * rng.normal(size=shape)).astype("float32")
    return t, s


def to_np(x):
    return ops.convert_to_numpy(x)


@pytest.mark.parametrize("shape", [(3, 7), (3, 5, 5, 4)])
@pytest.mark.parametrize("margin", [1.0, 0.5, 0.0])
def test_loss_matches_numpy(shape, margin):
    t, s = random_pair(shape, seed=1)
    expected = np_ab_per_example(t, s, margin)
    per_example = activation_boundary_loss(t, s, margin, reduction="none")
    assert tuple(per_example.shape) == (shape[0],)
    assert dtype_name(per_example) == "float32"
    np.testing.assert_allclose(
        to_np(per_example), expected, rtol=RTOL, atol=ATOL
    )
    mean = activation_boundary_loss(t, s, margin=margin)
    assert tuple(mean.shape) == ()
    np.testing.assert_allclose(
        float(mean), expected.mean(), rtol=RTOL, atol=ATOL
    )


def test_margin_semantics():
    mu = 1.0
    # Teacher on, student beyond +margin: zero. Teacher off, student beyond
    # -margin: zero. Teacher on, student inside margin: (mu - s)^2.
    # Teacher off (including t == 0), student positive: (mu + s)^2.
    t = np.array([[2.0, 0.3, -1.0, -0.1, 1.0, 0.0]], "float32")
    s = np.array([[1.5, 1.0, -1.2, -1.0, 0.25, 0.5]], "float32")
    expected_per_neuron = [0.0, 0.0, 0.0, 0.0, 0.75**2, 1.5**2]
    for i, value in enumerate(expected_per_neuron):
        loss = activation_boundary_loss(t[:, i : i + 1], s[:, i : i + 1], mu)
        np.testing.assert_allclose(float(loss), value, atol=1e-7)
    np.testing.assert_allclose(
        float(activation_boundary_loss(t, s, mu)),
        sum(expected_per_neuron),
        rtol=1e-6,
    )
    # A larger margin makes a previously satisfied neuron count again.
    assert float(activation_boundary_loss(t[:, :1], s[:, :1], 2.0)) > 0


def test_sum_over_hwc_mean_over_batch():
    t, s = random_pair((3, 4, 4, 2), seed=2)
    base = float(activation_boundary_loss(t, s))
    tiled_h = float(
        activation_boundary_loss(
            np.concatenate([t, t], axis=1), np.concatenate([s, s], axis=1)
        )
    )
    np.testing.assert_allclose(tiled_h, 2.0 * base, rtol=1e-5)
    tiled_c = float(
        activation_boundary_loss(
            np.concatenate([t, t, t], axis=3), np.concatenate([s, s, s], axis=3)
        )
    )
    np.testing.assert_allclose(tiled_c, 3.0 * base, rtol=1e-5)
    # Repeating the batch does not change the (batch-mean) loss.
    tiled_b = float(
        activation_boundary_loss(
            np.concatenate([t, t], axis=0), np.concatenate([s, s], axis=0)
        )
    )
    np.testing.assert_allclose(tiled_b, base, rtol=1e-5)


def test_margin_as_variable():
    t, s = random_pair((3, 6), seed=3)
    margin = keras.Variable(0.5, trainable=False)
    np.testing.assert_allclose(
        float(activation_boundary_loss(t, s, margin)),
        np_ab_per_example(t, s, 0.5).mean(),
        rtol=RTOL,
        atol=ATOL,
    )
    margin.assign(2.0)
    np.testing.assert_allclose(
        float(activation_boundary_loss(t, s, margin)),
        np_ab_per_example(t, s, 2.0).mean(),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs_compute_in_float32(dtype):
    t, s = random_pair((3, 4, 4, 3), seed=4)
    t_low, s_low = ops.cast(t, dtype), ops.cast(s, dtype)
    for fn in (activation_boundary_loss, boundary_agreement):
        out = fn(t_low, s_low)
        assert dtype_name(out) == "float32"
        reference = fn(ops.cast(t_low, "float32"), ops.cast(s_low, "float32"))
        np.testing.assert_allclose(float(out), float(reference), rtol=1e-6)
    np.testing.assert_allclose(
        float(activation_boundary_loss(t_low, s_low)),
        np_ab_per_example(t, s, 1.0).mean(),
        rtol=2e-2,
    )


def test_gradients():
    t, s = random_pair((3, 3, 3, 4), seed=5)
    mu = 1.0
    _, (t_grad, grad) = value_and_grad(
        lambda a, b: activation_boundary_loss(a, b, mu), t, s
    )
    assert np.all(t_grad == 0)  # teacher is a constant (stop_gradient)
    assert np.all(np.isfinite(grad))
    t64, s64 = t.astype(np.float64), s.astype(np.float64)
    expected = (
        np.where(
            t64 > 0,
            -2.0 * np.maximum(mu - s64, 0.0),
            2.0 * np.maximum(mu + s64, 0.0),
        )
        / t.shape[0]
    )
    np.testing.assert_allclose(grad, expected, rtol=RTOL, atol=1e-6)
    satisfied = ((t > 0) & (s >= mu)) | ((t <= 0) & (s <= -mu))
    assert np.all(grad[satisfied] == 0)
    assert np.all(grad[~satisfied] != 0) and (~satisfied).any()


def test_boundary_agreement_matches_numpy():
    for shape in [(3, 9), (3, 5, 5, 4)]:
        t, s = random_pair(shape, seed=6)
        expected = np_agreement_per_example(t, s)
        per_example = boundary_agreement(t, s, reduction="none")
        assert tuple(per_example.shape) == (shape[0],)
        np.testing.assert_allclose(to_np(per_example), expected, rtol=1e-6)
        np.testing.assert_allclose(
            float(boundary_agreement(t, s)), expected.mean(), rtol=1e-6
        )
        assert float(boundary_agreement(t, t)) == 1.0
        assert float(boundary_agreement(t, np.where(t > 0, -1.0, 1.0))) == 0.0


def test_compiles_with_unknown_batch_and_xla():
    t, s = random_pair((3, 4, 4, 2), seed=7)

    def both(a, b):
        return ops.stack(
            [
                activation_boundary_loss(a, b, reduction="none"),
                boundary_agreement(a, b, reduction="none"),
            ]
        )

    loss, agreement = compiled_unknown_batch(both, t, s)
    np.testing.assert_allclose(
        loss, np_ab_per_example(t, s, 1.0), rtol=RTOL, atol=ATOL
    )
    np.testing.assert_allclose(
        agreement, np_agreement_per_example(t, s), rtol=1e-6
    )


@pytest.mark.parametrize("margin", [-0.5, -1])
def test_negative_margin_raises(margin):
    t, s = random_pair((2, 3), seed=8)
    with pytest.raises(ValueError, match="margin") as info:
        activation_boundary_loss(t, s, margin)
    assert f"margin={margin!r}" in str(info.value)
    assert ">= 0" in str(info.value)


@pytest.mark.parametrize("fn", [activation_boundary_loss, boundary_agreement])
def test_input_errors(fn):
    with pytest.raises(ValueError, match=r"\(2, 3, 4\)"):
        fn(np.ones((2, 3, 4), "float32"), np.ones((2, 3, 4), "float32"))
    with pytest.raises(ValueError, match=r"\(2, 4, 4, 3\).*\(2, 4, 4, 5\)"):
        fn(np.ones((2, 4, 4, 3), "float32"), np.ones((2, 4, 4, 5), "float32"))
    with pytest.raises(ValueError, match="'sum'"):
        fn(
            np.ones((2, 3), "float32"),
            np.ones((2, 3), "float32"),
            reduction="sum",
        )


# --- check_models: warn when the teacher tensor has no boundary at zero ----

import warnings  # noqa: E402

from keras import layers  # noqa: E402

from keras_kd import taps as taps_lib  # noqa: E402
from keras_kd.losses import ActivationBoundary  # noqa: E402
from keras_kd.losses import DistillationLoss  # noqa: E402
from keras_kd.losses import LogitsDistillation  # noqa: E402


def _teacher(softmax_head=False):
    x = inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", name="conv1")(x)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU(name="relu1")(x)
    shortcut = x
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="conv2")(x)
    x = layers.Conv2D(4, 1, name="conv3")(x)
    x = layers.Add(name="add")([x, shortcut])
    x = layers.Activation("relu", name="add_relu")(x)
    x = layers.Conv2D(4, 1, activation="sigmoid", name="gate")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dense(8, name="fc")(x)
    x = layers.Dropout(0.1, name="drop")(x)
    x = layers.ReLU(name="fc_relu")(x)
    x = layers.Dense(
        5, activation="softmax" if softmax_head else None, name="logits"
    )(x)
    return keras.Model(inputs, x, name="teacher")


def _warnings_of(loss, teacher, student=None):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert loss.check_models(teacher, student or teacher) is None
    return [w for w in caught if issubclass(w.category, UserWarning)]


@pytest.mark.parametrize(
    "layer,where",
    [
        ("relu1", "preactivation"),  # input of a ReLU layer
        ("conv2", "preactivation"),  # fused ReLU, split off
        ("bn1", "output"),  # BN right before a ReLU (official tap)
        ("add", "output"),  # Add right before a ReLU (official tap)
        ("relu1", "output"),  # post-ReLU: same sign
        ("conv2", "output"),  # fused ReLU output
        ("fc", "output"),  # Dense -> Dropout -> ReLU
        ("relu1", "input"),  # input of a ReLU = its pre-activation
        ("conv2", "input"),  # the output of relu1
    ],
)
def test_check_models_quiet_on_preactivations_and_relu_outputs(layer, where):
    loss = ActivationBoundary(layer, "s", teacher_tap=where)
    assert _warnings_of(loss, _teacher()) == []


@pytest.mark.parametrize(
    "layer,where,expected",
    [
        (
            "gate",
            "output",
            "sigmoid activation, whose values are always > 0: "
            "every teacher neuron is always on",
        ),
        (
            "gate",
            "preactivation",
            "input of a sigmoid activation, not of a ReLU-like one",
        ),
        ("pool", "output", "is a pooling layer"),
        ("gap", "output", "is a pooling layer"),
        ("pool", "input", "reads the output of 'gate'.*always > 0"),
        ("logits", "output", "final layer with no activation, i.e. its logits"),
        (
            "conv1",
            "output",
            "feeds 'bn1' \\(BatchNormalization\\), not a ReLU-like activation",
        ),
        ("conv3", "output", "feeds 'add' \\(Add\\)"),
    ],
)
def test_check_models_warns_naming_the_layer(layer, where, expected):
    loss = ActivationBoundary(layer, "s", teacher_tap=where)
    caught = _warnings_of(loss, _teacher())
    assert len(caught) == 1
    message = str(caught[0].message)
    assert f"layer '{layer}'" in message and "teacher 'teacher'" in message
    assert re.search(expected, message), message
    # ... and says what to tap instead.
    assert "teacher_tap='preactivation'" in message
    assert "right before a ReLU" in message


def test_check_models_softmax_head():
    teacher = _teacher(softmax_head=True)
    for where, expected in (
        ("output", "softmax activation, whose values are always > 0"),
        ("preactivation", "i.e. the model's logits"),
    ):
        caught = _warnings_of(
            ActivationBoundary("logits", "s", teacher_tap=where), teacher
        )
        assert len(caught) == 1 and expected in str(caught[0].message)


def test_check_models_one_warning_per_bad_pair():
    loss = ActivationBoundary(
        ["bn1", "gate", "logits"], ["a", "b", "c"], teacher_tap="output"
    )
    caught = _warnings_of(loss, _teacher())
    assert [
        ("gate" in str(w.message), "logits" in str(w.message)) for w in caught
    ] == [(True, False), (False, True)]


def test_check_models_nested_and_sequential_models():
    inner_in = keras.Input((6,))
    h = layers.Dense(4, name="dense")(inner_in)
    h = layers.BatchNormalization(name="bn")(h)
    backbone = keras.Model(inner_in, h, name="backbone")
    x = inputs = keras.Input((6,))
    x = backbone(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Dense(3, name="head")(x)
    outer = keras.Model(inputs, x, name="outer")
    # backbone/bn is the nested model's output, consumed by a ReLU outside.
    assert (
        _warnings_of(
            ActivationBoundary("backbone/bn", "s", teacher_tap="output"), outer
        )
        == []
    )
    caught = _warnings_of(
        ActivationBoundary("backbone/dense", "s", teacher_tap="output"), outer
    )
    assert len(caught) == 1 and "feeds 'bn'" in str(caught[0].message)
    # A nested model that ends the outer model: its last Dense is logits.
    y = inputs2 = keras.Input((6,))
    y = layers.Dense(4, activation="relu", name="hidden")(y)
    y = layers.Dense(3, name="out")(y)
    classifier = keras.Model(inputs2, y, name="classifier")
    z = inputs3 = keras.Input((6,))
    wrapped = keras.Model(inputs3, classifier(z), name="wrapped")
    caught = _warnings_of(
        ActivationBoundary("classifier/out", "s", teacher_tap="output"), wrapped
    )
    assert len(caught) == 1 and "its logits" in str(caught[0].message)

    sequential = keras.Sequential(
        [
            keras.Input((6,)),
            layers.Dense(4, name="d1"),
            layers.ReLU(name="r1"),
            layers.Dense(2, activation="sigmoid", name="d2"),
        ],
        name="seq",
    )
    assert (
        _warnings_of(
            ActivationBoundary("d1", "s", teacher_tap="output"), sequential
        )
        == []
    )
    caught = _warnings_of(
        ActivationBoundary("d2", "s", teacher_tap="output"), sequential
    )
    assert len(caught) == 1 and "sigmoid" in str(caught[0].message)


def test_check_models_judges_the_model_not_other_uses_of_its_layers():
    # The Distiller's extractor re-calls the teacher's layers; that must not
    # change what the check sees in the teacher itself.
    teacher = _teacher()
    taps_lib.build_extractor(
        teacher,
        [taps_lib.Tap("bn1", "output"), taps_lib.Tap("relu1", "preactivation")],
    )
    assert (
        _warnings_of(
            ActivationBoundary("bn1", "s", teacher_tap="output"), teacher
        )
        == []
    )
    assert (
        len(
            _warnings_of(
                ActivationBoundary("logits", "s", teacher_tap="output"), teacher
            )
        )
        == 1
    )


def test_check_models_silent_when_it_cannot_judge():
    # Unknown layer (the Distiller reports it) and a subclassed model.
    class Sub(keras.Model):
        def call(self, x):
            return x

    assert _warnings_of(ActivationBoundary("nope", "s"), _teacher()) == []
    assert _warnings_of(ActivationBoundary("relu1", "s"), Sub()) == []


def test_check_models_default_is_a_no_op():
    assert (
        DistillationLoss.check_models(LogitsDistillation(), None, None) is None
    )
    assert _warnings_of(LogitsDistillation(), _teacher()) == []
