"""Initialisation stages (AB, FSP) and the linear warm-up, on any backend."""

import keras
import numpy as np
import pytest

from keras_kd import Distiller
from keras_kd import callbacks
from keras_kd import losses as L
from keras_kd.models import conv_net


def _distiller(loss_list):
    keras.utils.set_random_seed(0)
    teacher = conv_net((8, 8, 3), 5, (8, 16), name="teacher")
    student = conv_net((8, 8, 3), 5, (4, 8), name="student")
    distiller = Distiller(teacher, student, loss_list)
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return distiller


def _data(n=16):
    rng = np.random.default_rng(0)
    return (
        rng.uniform(0, 255, size=(n, 8, 8, 3)).astype("float32"),
        rng.integers(0, 5, size=(n,)),
    )


class WeightLog(keras.callbacks.Callback):
    """Records the loss weights each batch trains with."""

    def __init__(self):
        super().__init__()
        self.batches = []

    def on_train_batch_begin(self, batch, logs=None):
        self.batches.append(self.model.loss_weights)


def _fsp():
    return L.FlowOfSolution(
        ["stage1_relu", "stage2_relu"],
        ["stage1_relu", "stage2_relu"],
        connector="auto",
    )


def test_flow_of_solution_schedule_trains_fsp_alone_then_the_rest():
    distiller = _distiller([_fsp(), L.LogitsDistillation()])
    log = WeightLog()
    x, y = _data()
    distiller.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        verbose=0,
        callbacks=[callbacks.FlowOfSolutionSchedule(1), log],
    )
    first, later = log.batches[0], log.batches[-1]
    assert first == {
        "student": 0.0,
        "flow_of_solution": 1.0,
        "logits_distillation": 0.0,
    }
    assert later == {
        "student": 1.0,
        "flow_of_solution": 0.0,
        "logits_distillation": 1.0,
    }
    # The optimizer restarted at stage 2: 2 steps of stage 2 counted.
    assert int(distiller.optimizer.iterations.numpy()) == 4


def test_initialization_schedule_finds_every_initialisation_loss():
    ab = L.ActivationBoundary(["stage2_relu"], ["stage2_relu"])
    distiller = _distiller([_fsp(), ab, L.LogitsDistillation()])
    log = WeightLog()
    x, y = _data()
    distiller.fit(
        x,
        y,
        batch_size=16,
        epochs=2,
        verbose=0,
        callbacks=[callbacks.InitializationSchedule(1), log],
    )
    assert log.batches[0] == {
        "student": 0.0,
        "flow_of_solution": 1.0,
        "activation_boundary": 1.0,
        "logits_distillation": 0.0,
    }
    assert log.batches[1]["flow_of_solution"] == 0.0
    assert log.batches[1]["activation_boundary"] == 0.0


def test_initialization_schedule_without_such_a_loss_says_so():
    distiller = _distiller([L.LogitsDistillation()])
    x, y = _data()
    with pytest.raises(ValueError, match="FlowOfSolution loss"):
        distiller.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[callbacks.FlowOfSolutionSchedule(1)],
        )


def test_linear_warmup_ramps_over_a_fraction_of_all_steps():
    distiller = _distiller([L.LogitsDistillation()])
    distiller.set_loss_weights(logits_distillation=2.0)  # not configured
    log = WeightLog()
    x, y = _data()
    warmup = callbacks.LinearWarmup({"logits_distillation": 0.25})
    # 2 steps per epoch, 4 epochs: 8 steps, a ramp of 2.
    distiller.fit(
        x, y, batch_size=8, epochs=4, verbose=0, callbacks=[warmup, log]
    )
    ramp = [w["logits_distillation"] for w in log.batches]
    assert ramp == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert all(w["student"] == 1.0 for w in log.batches)


def test_linear_warmup_resumes_on_its_ramp():
    distiller = _distiller([L.LogitsDistillation()])
    log = WeightLog()
    x, y = _data(32)
    warmup = callbacks.LinearWarmup({"logits_distillation": 0.75})
    # 4 steps per epoch, 3 epochs (12 steps, a ramp of 9), resumed at the
    # second epoch: steps 5..12.
    distiller.fit(
        x,
        y,
        batch_size=8,
        epochs=3,
        initial_epoch=1,
        verbose=0,
        callbacks=[warmup, log],
    )
    ramp = [w["logits_distillation"] for w in log.batches]
    np.testing.assert_allclose(
        ramp, [5 / 9, 6 / 9, 7 / 9, 8 / 9] + [1.0] * 4, rtol=1e-6
    )


def test_linear_warmup_checks_names_and_fractions():
    with pytest.raises(ValueError, match="in \\[0, 1\\)"):
        callbacks.LinearWarmup({"logits_distillation": 1.5})
    distiller = _distiller([L.LogitsDistillation()])
    x, y = _data()
    with pytest.raises(ValueError, match="no loss named \\['kd'\\]"):
        distiller.fit(
            x,
            y,
            epochs=1,
            verbose=0,
            callbacks=[callbacks.LinearWarmup({"kd": 0.1})],
        )


def test_for_losses_gives_what_the_losses_ask_for():
    ab = L.ActivationBoundary(["stage2_relu"], ["stage2_relu"])
    assert callbacks.for_losses([L.LogitsDistillation()], init_epochs=2) == []
    (schedule,) = callbacks.for_losses([ab, L.LogitsDistillation()], 2)
    assert isinstance(schedule, callbacks.InitializationSchedule)
    assert schedule.init_epochs == 2
    assert callbacks.for_losses([ab], init_epochs=0) == []
