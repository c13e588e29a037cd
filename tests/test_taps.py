"""Taps: one multi-output model per network, pre-activations, clear errors."""

import keras
import numpy as np
import pytest
from backend_utils import to_numpy
from builders import cnn

from keras_kd.taps import Tap
from keras_kd.taps import build_extractor
from keras_kd.taps import logits_tap


def _conv_same(x, kernel, bias):
    """3x3 'same' convolution in float64 NumPy (NHWC, HWIO kernel)."""
    b, h, w, _ = x.shape
    pad = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[-1]))
    for i in range(h):
        for j in range(w):
            patch = pad[:, i : i + 3, j : j + 3, :]
            out[:, i, j, :] = np.einsum("bhwc,hwco->bo", patch, kernel)
    return out + bias


def test_fused_preactivation_is_the_conv_before_relu():
    model = cnn(4, "m", fused=True)
    extractor = build_extractor(
        model, [Tap("conv1", "preactivation"), Tap("conv1", "output")]
    )
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    logits, pre, post = [to_numpy(t) for t in extractor(x)]
    kernel, bias = [
        to_numpy(v).astype("float64") for v in model.get_layer("conv1").weights
    ]
    expected = _conv_same(x.astype("float64"), kernel, bias)
    np.testing.assert_allclose(pre, expected, rtol=1e-4, atol=1e-5)
    assert (pre < 0).any(), "a pre-activation tap must keep negative values"
    np.testing.assert_allclose(
        post, np.maximum(expected, 0), rtol=1e-4, atol=1e-5
    )
    # Splitting the activation does not change what the model computes.
    np.testing.assert_allclose(logits, to_numpy(model(x)), rtol=1e-5, atol=1e-6)
    # The extractor shares the model's weights; it adds none.
    assert len(extractor.weights) == len(model.weights)
    assert {id(v) for v in extractor.weights} == {id(v) for v in model.weights}
    # The wrapped layer's activation is left as it was.
    assert model.get_layer("conv1").activation is keras.activations.relu


def test_activation_layer_preactivation_is_its_input():
    model = cnn(4, "m")
    extractor = build_extractor(
        model, [Tap("relu2", "preactivation"), Tap("bn2", "output")]
    )
    x = np.random.default_rng(2).normal(size=(3, 8, 8, 3)).astype("float32")
    _, pre, bn_out = [to_numpy(t) for t in extractor(x)]
    np.testing.assert_array_equal(pre, bn_out)


def test_sequential_and_nested_models_can_be_tapped():
    inner = cnn(4, "backbone")
    seq = keras.Sequential(
        [
            keras.Input((8, 8, 3)),
            keras.layers.Conv2D(2, 3, activation="relu", name="c"),
        ],
        name="seq",
    )
    inputs = keras.Input((8, 8, 3))
    outer = keras.Model(inputs, inner(inputs), name="outer")
    extractor = build_extractor(outer, [Tap("backbone/relu2", "preactivation")])
    x = np.random.default_rng(3).normal(size=(2, 8, 8, 3)).astype("float32")
    logits, feat = extractor(x)
    direct = build_extractor(inner, [Tap("bn2")])(x)
    np.testing.assert_allclose(to_numpy(feat), to_numpy(direct[1]), atol=1e-6)
    np.testing.assert_allclose(to_numpy(logits), to_numpy(outer(x)), atol=1e-6)
    seq_ext = build_extractor(seq, [Tap("c", "preactivation")])
    _, pre = seq_ext(x)
    assert to_numpy(pre).min() < 0


def test_unknown_layer_lists_closest_names():
    model = cnn(4, "student_net")
    with pytest.raises(ValueError) as info:
        build_extractor(model, [Tap("rleu2")], role="student")
    message = str(info.value)
    assert "student_net" in message and "'rleu2'" in message
    assert "relu2" in message and "Closest" in message


def test_preactivation_of_layer_without_activation_is_refused():
    model = cnn(4, "m")
    with pytest.raises(ValueError, match="no activation.*where='output'"):
        build_extractor(model, [Tap("bn2", "preactivation")])


def test_subclassed_model_cannot_be_tapped():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="subnet")
            self.conv = keras.layers.Conv2D(2, 3)

        def call(self, x):
            return self.conv(x)

    with pytest.raises(ValueError, match="subclassed model.*functional"):
        build_extractor(Net(), [Tap("conv")], role="teacher")


def test_shared_layer_is_ambiguous():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(4, name="shared")
    out = keras.layers.Dense(2, name="head")(dense(dense(inputs)))
    model = keras.Model(inputs, out)
    with pytest.raises(ValueError, match="called more than once"):
        build_extractor(model, [Tap("shared")])


def test_bad_tap_position():
    with pytest.raises(ValueError, match="where='middle'"):
        Tap("conv1", "middle")


def test_logits_tap_finds_the_tensor_before_softmax():
    assert logits_tap(cnn(4, "m")) is None
    assert logits_tap(cnn(4, "m", softmax=True)) == Tap(
        "logits", "preactivation"
    )
    inputs = keras.Input((3,))
    out = keras.layers.Softmax(name="probs")(keras.layers.Dense(3)(inputs))
    assert logits_tap(keras.Model(inputs, out)) == Tap("probs", "preactivation")
