"""XLA: `compile(jit_compile=True)` gives the losses of the graph step, and
the non-finite check still stops training before a bad update."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from backend_utils import to_numpy
from builders import cnn
from builders import data
from builders import sparse_ce

from keras_kd import Distiller
from keras_kd import NonFiniteLossError
from keras_kd import losses as L

# Measured on CPU (TF 2.21, 3 SGD steps): largest relative loss difference
# 1.0e-5 (the KD term, a difference of near-equal logits), the others <= 7e-7;
# largest student weight difference 1.2e-7.
RTOL = 1e-4


def _every_loss():
    return [
        L.LogitsDistillation(temperature=4.0),
        L.ActivationBoundary(["relu1", "relu2"], ["conv1", "relu2"]),
        L.NeuronSelectivityTransfer(
            "relu2", "relu2", kernel="polynomial", name="nst_polynomial"
        ),
        L.NeuronSelectivityTransfer(
            "relu2", "relu2", kernel="linear", name="nst_linear"
        ),
        L.NeuronSelectivityTransfer(
            "relu2", "relu2", kernel="gaussian", name="nst_gaussian"
        ),
        L.FitNetsHint("bn2", "bn2"),
        L.AttentionTransfer("relu2", "relu2"),
    ]


def _fit(jit_compile, x, y, steps=3):
    keras.utils.set_random_seed(0)
    teacher = cnn(8, "teacher")
    student = cnn(4, "student", fused=True)
    distiller = Distiller(teacher, student, _every_loss())
    # SGD: Adam's first steps are ~lr * sign(gradient), which turns rounding
    # noise in near-zero gradients into lr-sized weight differences.
    distiller.compile(
        optimizer=keras.optimizers.SGD(1e-2),
        loss=sparse_ce(),
        jit_compile=jit_compile,
    )
    # One step per epoch: the history holds every step's losses.
    history = distiller.fit(x, y, batch_size=len(x), epochs=steps, verbose=0)
    return distiller, history.history


def test_jit_compile_gives_the_losses_of_the_graph_step():
    x, y = data(n=16)
    graph, expected = _fit(False, x, y)
    xla, logs = _fit(True, x, y)
    assert xla.jit_compile and not graph.jit_compile
    assert len(xla.distillation_losses) == 7
    for key, values in expected.items():
        np.testing.assert_allclose(
            logs[key], values, rtol=RTOL, atol=1e-7, err_msg=key
        )
        assert np.all(np.isfinite(logs[key])), key
    for a, b in zip(xla.student.weights, graph.student.weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-6)


def test_check_numerics_is_silent_under_xla():
    # Why the Distiller needs its own guard: XLA compiles CheckNumerics to a
    # pass-through, so a NaN goes by without an error.
    @tf.function(jit_compile=True)
    def step(value):
        return tf.debugging.check_numerics(value, "not finite") * 2.0

    out = step(tf.constant([1.0, np.nan]))
    assert np.isnan(out.numpy()[1])


def _trainable(model):
    return [to_numpy(v) for v in model.trainable_weights]


def test_non_finite_term_stops_training_before_the_update_under_xla():
    teacher = cnn(8, "teacher")
    student = cnn(4, "student", fused=True)
    distiller = Distiller(
        teacher,
        student,
        [L.ActivationBoundary("relu1", "conv1"), L.LogitsDistillation()],
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=sparse_ce(),
        jit_compile=True,
    )
    x, y = data(n=8)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)  # a finite step
    # Poison the teacher's second conv: its logits become NaN, relu1 does not.
    conv2 = teacher.get_layer("conv2")
    conv2.kernel.assign(np.full(conv2.kernel.shape, np.nan, "float32"))
    before = _trainable(distiller)
    iterations = int(distiller.optimizer.iterations.numpy())
    with pytest.raises(
        NonFiniteLossError, match="'logits_distillation_loss' is not finite"
    ):
        distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    for a, b in zip(_trainable(distiller), before):
        np.testing.assert_array_equal(a, b)
    assert int(distiller.optimizer.iterations.numpy()) == iterations
    # Once the cause is fixed, training goes on.
    conv2.kernel.assign(np.zeros(conv2.kernel.shape, "float32"))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][-1])
    assert int(distiller.optimizer.iterations.numpy()) == iterations + 1
