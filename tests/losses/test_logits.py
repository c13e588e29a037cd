"""logits_distillation_loss vs a float64 NumPy reference, loop over classes.

Tolerance: rtol=1e-4, atol=1e-5 (float32 vs float64).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import doctest  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from keras_kd.losses import logits as logits_module  # noqa: E402
from keras_kd.losses.logits import logits_distillation_loss  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def np_kd_per_example(z_t, z_s, temperature):
    out = []
    for zt, zs in zip(z_t, z_s):
        p_t = np_softmax(zt / temperature)
        p_s = np_softmax(zs / temperature)
        kl = 0.0
        for k in range(len(p_t)):
            kl += p_t[k] * (np.log(p_t[k]) - np.log(p_s[k]))
        out.append(temperature ** 2 * kl)
    return np.array(out)


def random_logits(shape=(3, 10), scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    return ((scale * rng.normal(size=shape)).astype("float32"),
            (scale * rng.normal(size=shape)).astype("float32"))


@pytest.mark.parametrize("temperature", [1.0, 2.5, 4.0, 4])
def test_matches_numpy(temperature):
    z_t, z_s = random_logits(seed=1)
    expected = np_kd_per_example(z_t, z_s, float(temperature))
    per_example = logits_distillation_loss(z_t, z_s, temperature,
                                           reduction="none")
    assert tuple(per_example.shape) == (3,)
    assert per_example.dtype == "float32"
    np.testing.assert_allclose(ops.convert_to_numpy(per_example), expected,
                               rtol=RTOL, atol=ATOL)
    mean = logits_distillation_loss(z_t, z_s, temperature)
    assert tuple(mean.shape) == ()
    np.testing.assert_allclose(float(mean), expected.mean(), rtol=RTOL,
                               atol=ATOL)


def test_default_temperature_is_4():
    z_t, z_s = random_logits(seed=2)
    np.testing.assert_allclose(float(logits_distillation_loss(z_t, z_s)),
                               np_kd_per_example(z_t, z_s, 4.0).mean(),
                               rtol=RTOL, atol=ATOL)


def test_large_logits_are_stable():
    z_t, z_s = random_logits(scale=60.0, seed=3)
    out = ops.convert_to_numpy(
        logits_distillation_loss(z_t, z_s, 1.0, reduction="none"))
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out, np_kd_per_example(z_t, z_s, 1.0),
                               rtol=RTOL, atol=1e-3)


def test_identical_logits_give_zero():
    z_t, _ = random_logits(seed=4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(
            logits_distillation_loss(z_t, z_t, reduction="none")),
        0.0, atol=1e-5)


def test_temperature_as_variable():
    z_t, z_s = random_logits(seed=5)
    temperature = keras.Variable(2.0, trainable=False)
    np.testing.assert_allclose(
        float(logits_distillation_loss(z_t, z_s, temperature)),
        np_kd_per_example(z_t, z_s, 2.0).mean(), rtol=RTOL, atol=ATOL)
    temperature.assign(5.0)
    np.testing.assert_allclose(
        float(logits_distillation_loss(z_t, z_s, temperature)),
        np_kd_per_example(z_t, z_s, 5.0).mean(), rtol=RTOL, atol=ATOL)
    # Tensors are not validated (their value may be unknown when traced).
    logits_distillation_loss(z_t, z_s, tf.constant(3.0))


@pytest.mark.parametrize("dtype", [tf.float16, tf.bfloat16])
def test_low_precision_inputs(dtype):
    z_t, z_s = random_logits(seed=6)
    t_low, s_low = tf.cast(z_t, dtype), tf.cast(z_s, dtype)
    out = logits_distillation_loss(t_low, s_low)
    assert out.dtype == "float32"
    reference = logits_distillation_loss(tf.cast(t_low, tf.float32),
                                         tf.cast(s_low, tf.float32))
    np.testing.assert_allclose(float(out), float(reference), rtol=1e-6)
    np.testing.assert_allclose(float(out),
                               np_kd_per_example(z_t, z_s, 4.0).mean(),
                               rtol=5e-2)


def test_gradients():
    z_t, z_s = random_logits(seed=7)
    temperature = 4.0
    t_tensor, s_tensor = tf.constant(z_t), tf.constant(z_s)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([t_tensor, s_tensor])
        loss = logits_distillation_loss(t_tensor, s_tensor, temperature)
    grad = tape.gradient(loss, s_tensor).numpy()
    assert tape.gradient(loss, t_tensor) is None  # teacher is a constant
    assert np.all(np.isfinite(grad)) and np.all(grad != 0)
    # d/dz_s [T^2 KL(p_t || p_s)] = T * (p_s - p_t); mean over B examples.
    expected = np.stack([
        temperature * (np_softmax(zs / temperature)
                       - np_softmax(zt / temperature))
        for zt, zs in zip(z_t, z_s)
    ]) / z_t.shape[0]
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-6)


def test_compiles_with_unknown_batch_and_xla():
    z_t, z_s = random_logits(seed=8)
    spec = tf.TensorSpec((None, 10))

    @tf.function(input_signature=[spec, spec], jit_compile=True)
    def fn(a, b):
        return logits_distillation_loss(a, b, reduction="none")

    np.testing.assert_allclose(fn(tf.constant(z_t), tf.constant(z_s)).numpy(),
                               np_kd_per_example(z_t, z_s, 4.0),
                               rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0])
def test_bad_temperature(temperature):
    z_t, z_s = random_logits()
    with pytest.raises(ValueError) as info:
        logits_distillation_loss(z_t, z_s, temperature)
    assert f"temperature={temperature!r}" in str(info.value)
    assert "> 0" in str(info.value)


def test_shape_and_rank_errors():
    with pytest.raises(ValueError, match=r"\(3, 10\).*\(3, 5\)"):
        logits_distillation_loss(np.zeros((3, 10)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"\(3, 2, 10\)"):
        logits_distillation_loss(np.zeros((3, 2, 10)), np.zeros((3, 2, 10)))
    with pytest.raises(ValueError, match=r"received shape \(10,\)"):
        logits_distillation_loss(np.zeros((10,)), np.zeros((10,)))


def test_bad_reduction():
    z_t, z_s = random_logits()
    with pytest.raises(ValueError, match="reduction='batch'"):
        logits_distillation_loss(z_t, z_s, reduction="batch")


def test_docstring_examples_run():
    runner = doctest.DocTestRunner()
    for test in doctest.DocTestFinder().find(
            logits_distillation_loss, "logits_distillation_loss",
            globs=dict(vars(logits_module))):
        runner.run(test)
    assert runner.failures == 0 and runner.tries > 0
