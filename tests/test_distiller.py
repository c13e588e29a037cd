"""Distiller behaviour: one pass per network, frozen teacher, gradients,
reductions against NumPy, sample weights, schedules, saving, bad input."""

import keras
import numpy as np
import pytest
from backend_utils import to_numpy
from builders import all_losses
from builders import cnn
from builders import data
from builders import pair
from builders import sparse_ce

from keras_kd import Distiller
from keras_kd import losses as L
from keras_kd.callbacks import ActivationBoundarySchedule
from keras_kd.callbacks import restart_optimizer
from keras_kd.taps import Tap
from keras_kd.taps import build_extractor


def _weights(model):
    return [to_numpy(v) for v in model.weights]


# --- numpy references (float64) -----------------------------------------------


def _np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _np_kd(t, s, temperature):
    lt = _np_log_softmax(t / temperature)
    ls = _np_log_softmax(s / temperature)
    return temperature**2 * (np.exp(lt) * (lt - ls)).sum(axis=-1)


def _np_ce(logits, y):
    return -_np_log_softmax(logits)[np.arange(len(y)), y]


def _np_ab(t, s, margin=1.0):
    on = t > 0
    per = np.where(
        on, np.maximum(margin - s, 0) ** 2, np.maximum(margin + s, 0) ** 2
    )
    return per.reshape(len(t), -1).sum(axis=1)


# --- one pass per network (frozen teacher, gradients, AB stages, non-finite
# terms and saving: test_backend_behaviour.py, on every backend) ---------------


def test_each_network_runs_once_per_step():
    teacher = cnn(8, "teacher", counter=True)
    student = cnn(4, "student", fused=True, counter=True)
    distiller = Distiller(teacher, student, all_losses())
    distiller.compile(optimizer="sgd", loss=sparse_ce(), run_eagerly=True)
    x, y = data(n=12)
    t_counter = teacher.get_layer("counter")
    s_counter = student.get_layer("counter")
    t_counter.count = s_counter.count = 0
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert (t_counter.count, s_counter.count) == (3, 3)
    distiller.evaluate(x, y, batch_size=6, verbose=0)
    assert (t_counter.count, s_counter.count) == (5, 5)
    distiller.predict(x, batch_size=12, verbose=0)
    assert (t_counter.count, s_counter.count) == (5, 6)


def test_connectors_are_not_part_of_the_student():
    teacher, student = pair()
    n_before = len(student.weights)
    Distiller(teacher, student, all_losses())
    assert len(student.weights) == n_before
    names = {v.path for v in student.weights}
    assert not any("connector" in n or "regressor" in n for n in names)


# --- the numbers the step computes --------------------------------------------


@pytest.mark.parametrize("preset", ["library", "paper"])
def test_logged_terms_match_numpy_with_sample_weights(preset):
    teacher, student = pair()
    kd = L.LogitsDistillation(temperature=3.0)
    ab = L.ActivationBoundary(
        ["relu1", "relu2"],
        ["conv1", "relu2"],
        connector="never",
        teacher_tap="preactivation",
        preset=preset,
    )
    teacher = cnn(4, "teacher")
    distiller = Distiller(
        teacher, student, [kd, ab], [0.7, 0.01], student_loss_weight=0.5
    )
    distiller.compile(optimizer="sgd", loss=sparse_ce())
    x, y = data(n=10, seed=3)
    w = np.random.default_rng(4).uniform(0, 2, size=10).astype("float32")
    logs = distiller.evaluate(
        x, y, sample_weight=w, batch_size=10, verbose=0, return_dict=True
    )

    t_ext = build_extractor(
        teacher, [Tap("relu1", "preactivation"), Tap("relu2", "preactivation")]
    )
    s_ext = build_extractor(
        student, [Tap("conv1", "preactivation"), Tap("relu2", "preactivation")]
    )
    t_out = [np.asarray(o, "float64") for o in t_ext(x)]
    s_out = [np.asarray(o, "float64") for o in s_ext(x)]
    ce = (w * _np_ce(s_out[0], y)).sum() / 10
    kd_val = (w * _np_kd(t_out[0], s_out[0], 3.0)).sum() / 10
    # The paper preset sums over elements, as the official code does; the
    # library preset divides that by the pair-weighted element count.
    sizes = [np.prod(t_out[k].shape[1:]) for k in (1, 2)]
    count = 0.5 * sizes[0] + 1.0 * sizes[1] if preset == "library" else 1.0
    ab_per = (
        0.5 * _np_ab(t_out[1], s_out[1]) + 1.0 * _np_ab(t_out[2], s_out[2])
    ) / count
    ab_val = (w * ab_per).sum() / 10
    np.testing.assert_allclose(logs["student_loss"], ce, rtol=1e-4)
    np.testing.assert_allclose(
        logs["logits_distillation_loss"], kd_val, rtol=1e-4
    )
    np.testing.assert_allclose(
        logs["activation_boundary_loss"], ab_val, rtol=1e-4
    )
    total = 0.5 * ce + 0.7 * kd_val + 0.01 * ab_val
    np.testing.assert_allclose(logs["loss"], total, rtol=1e-4)
    agreement = np.mean(
        [((t_out[k] > 0) == (s_out[k] > 0)).mean() for k in (1, 2)]
    )
    np.testing.assert_allclose(logs["boundary_agreement"], agreement, rtol=1e-5)


def test_softmax_outputs_are_distilled_as_logits():
    teacher = cnn(8, "teacher", softmax=True)
    student = cnn(4, "student", softmax=True)
    distiller = Distiller(
        teacher, student, L.LogitsDistillation(temperature=2.0)
    )
    distiller.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    x, y = data(n=6)
    logs = distiller.evaluate(x, y, batch_size=6, verbose=0, return_dict=True)
    tap = [Tap("logits", "preactivation")]
    z_t = np.asarray(build_extractor(teacher, tap)(x)[1], "float64")
    z_s = np.asarray(build_extractor(student, tap)(x)[1], "float64")
    np.testing.assert_allclose(
        logs["logits_distillation_loss"],
        _np_kd(z_t, z_s, 2.0).mean(),
        rtol=1e-4,
    )


def test_temperature_variable_changes_the_compiled_step():
    teacher, student = pair()
    kd = L.LogitsDistillation(temperature=4.0)
    distiller = Distiller(teacher, student, kd)
    distiller.compile(optimizer="sgd", loss=sparse_ce())
    x, y = data(n=6)
    z_t, z_s = (
        np.asarray(teacher(x), "float64"),
        np.asarray(student(x), "float64"),
    )
    for temperature in (4.0, 1.5):
        kd.temperature.assign(temperature)
        logs = distiller.evaluate(
            x, y, batch_size=6, verbose=0, return_dict=True
        )
        np.testing.assert_allclose(
            logs["logits_distillation_loss"],
            _np_kd(z_t, z_s, temperature).mean(),
            rtol=1e-4,
        )


def test_loss_weight_variables_change_the_compiled_step():
    teacher, student = pair()
    distiller = Distiller(teacher, student, all_losses()[:2])
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
    x, y = data(n=8)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)  # trace the step
    distiller.set_loss_weights(
        student=0.0, logits_distillation=0.0, activation_boundary=0.0
    )
    before = _weights(student)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    # Only BatchNorm moving statistics may move when every weight is zero.
    for v, b in zip(student.weights, before):
        if v.trainable:
            np.testing.assert_array_equal(to_numpy(v), b)
    assert distiller.loss_weights["activation_boundary"] == 0.0
    with pytest.raises(ValueError, match="Unknown loss weight 'kd'"):
        distiller.set_loss_weights(kd=1.0)


def test_unlabelled_data_train_on_distillation_alone():
    teacher, student = pair()
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    distiller.compile(optimizer="adam", loss=None)
    x, _ = data(n=8)
    history = distiller.fit(x, batch_size=4, epochs=1, verbose=0)
    assert history.history["student_loss"][-1] == 0.0
    assert history.history["logits_distillation_loss"][-1] > 0.0


@pytest.mark.parametrize("index", range(5), ids=lambda i: all_losses()[i].name)
def test_short_fit_lowers_each_loss(index):
    teacher, student = pair()
    loss = all_losses()[index]
    distiller = Distiller(
        teacher, student, loss, [1.0], student_loss_weight=0.0
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), loss=sparse_ce())
    x, y = data(n=16)
    key = f"{loss.name}_loss"
    # Training-mode values (BatchNorm batch statistics), first vs last step.
    history = distiller.fit(x, y, batch_size=16, epochs=25, verbose=0).history
    start, end = history[key][0], history[key][-1]
    assert end < 0.9 * start, (key, start, end)


# --- the activation boundary schedule -----------------------------------------


def _fit_dense(model, optimizer, x, y):
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)
    return [to_numpy(w) for w in model.weights]


def test_restart_optimizer_is_a_fresh_optimizer():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(12, 5)).astype("float32")
    y = rng.normal(size=(12, 3)).astype("float32")

    def make_optimizer():
        schedule = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=9)
        return keras.optimizers.Adam(schedule)

    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    optimizer = make_optimizer()
    _fit_dense(model, optimizer, x, y)  # 3 steps: moments and step count move
    start = [to_numpy(w) for w in model.weights]
    restart_optimizer(optimizer)
    assert int(to_numpy(optimizer.iterations)) == 0
    restarted = _fit_dense(model, optimizer, x, y)

    fresh_model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    fresh_model.set_weights(start)
    fresh = _fit_dense(fresh_model, make_optimizer(), x, y)
    for a, b in zip(restarted, fresh):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Without the restart the same epoch moves the weights differently.
    keras.utils.set_random_seed(3)
    other = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3)])
    other_optimizer = make_optimizer()
    _fit_dense(other, other_optimizer, x, y)
    kept = _fit_dense(other, other_optimizer, x, y)
    assert not np.allclose(kept[0], fresh[0], rtol=1e-4)


def test_restart_optimizer_keeps_loss_scale_and_learning_rate():
    optimizer = keras.optimizers.LossScaleOptimizer(
        keras.optimizers.SGD(0.1, momentum=0.9), initial_scale=64.0
    )
    variable = keras.Variable(np.ones(3, "float32"))
    optimizer.apply([keras.ops.ones(3)], [variable])
    optimizer.inner_optimizer.learning_rate.assign(0.02)
    restart_optimizer(optimizer)
    assert int(to_numpy(optimizer.iterations)) == 0
    assert float(to_numpy(optimizer.dynamic_scale)) == 64.0
    assert float(
        to_numpy(optimizer.inner_optimizer.learning_rate)
    ) == pytest.approx(0.02)
    for momentum in optimizer.inner_optimizer.momentums:
        np.testing.assert_array_equal(to_numpy(momentum), 0.0)
    with pytest.raises(TypeError, match="keras.optimizers.Optimizer"):
        restart_optimizer("adam")


@pytest.mark.parametrize("restart", [True, False])
def test_activation_boundary_schedule_restarts_the_optimizer(restart):
    teacher, student = pair()
    ab = L.ActivationBoundary(["relu1", "relu2"], ["conv1", "relu2"])
    distiller = Distiller(teacher, student, [L.LogitsDistillation(), ab])
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), loss=sparse_ce())
    x, y = data(n=8)
    steps = []
    callbacks = [
        ActivationBoundarySchedule(init_epochs=1, restart_optimizer=restart),
        keras.callbacks.LambdaCallback(
            on_epoch_end=lambda e, logs: steps.append(
                int(to_numpy(distiller.optimizer.iterations))
            )
        ),
    ]
    distiller.fit(x, y, batch_size=4, epochs=3, verbose=0, callbacks=callbacks)
    # 2 steps per epoch; the restart at the start of epoch 2 resets the count.
    assert steps == ([2, 2, 4] if restart else [2, 4, 6])
    with pytest.raises(TypeError, match="restart_optimizer"):
        ActivationBoundarySchedule(1, restart_optimizer="yes")


def test_activation_boundary_schedule_needs_an_ab_loss():
    teacher, student = pair()
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    distiller.compile(optimizer="sgd", loss=sparse_ce())
    x, y = data(n=4)
    with pytest.raises(ValueError, match="needs an ActivationBoundary"):
        distiller.fit(
            x, y, epochs=1, verbose=0, callbacks=[ActivationBoundarySchedule(1)]
        )


# --- bad input ----------------------------------------------------------------


def _spatial_student(name="student", valid=False):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(
        4, 3, padding="valid" if valid else "same", name="conv1"
    )(inputs)
    x = keras.layers.ReLU(name="relu1")(x)
    if not valid:
        x = keras.layers.MaxPooling2D(name="down")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    return keras.Model(
        inputs, keras.layers.Dense(5, name="logits")(x), name=name
    )


@pytest.mark.parametrize(
    "make, error, pattern",
    [
        (
            lambda t, s: Distiller(t, t, L.LogitsDistillation()),
            ValueError,
            "same model object \\('teacher'\\)",
        ),
        (
            lambda t, s: Distiller(t, s, [L.LogitsDistillation()], [1.0, 2.0]),
            ValueError,
            "2 distillation_loss_weights.*1 distillation losses",
        ),
        (
            lambda t, s: Distiller(t, s, [L.LogitsDistillation()], [-1.0]),
            ValueError,
            ">= 0",
        ),
        (
            lambda t, s: Distiller(t, s, "kl_divergence"),
            TypeError,
            "DistillationLoss.*'kl_divergence'",
        ),
        (
            lambda t, s: Distiller(
                t, s, [L.LogitsDistillation(), L.LogitsDistillation()]
            ),
            ValueError,
            "share the name",
        ),
        (
            lambda t, s: Distiller(
                t, s, L.ActivationBoundary("relu2", "rleu2")
            ),
            ValueError,
            "student model 'student' has no layer 'rleu2'.*relu2",
        ),
        (
            lambda t, s: Distiller(
                t, _spatial_student(), L.ActivationBoundary("relu2", "relu2")
            ),
            ValueError,
            "ActivationBoundary cannot pair.*\\(None, 8, 8, 8\\).*"
            "\\(None, 4, 4, 4\\)",
        ),
        (
            lambda t, s: Distiller(
                t,
                _spatial_student(valid=True),
                L.NeuronSelectivityTransfer("relu2", "relu2"),
            ),
            ValueError,
            "cannot reconcile the spatial sizes.*\\(8, 8\\) vs \\(6, 6\\)",
        ),
        (
            lambda t, s: Distiller(
                t, s, L.NeuronSelectivityTransfer("pool", "pool")
            ),
            ValueError,
            "needs spatial feature maps.*\\(None, 8\\)",
        ),
        (
            lambda t, s: Distiller(t, s, L.AttentionTransfer("pool", "relu2")),
            ValueError,
            "AttentionTransfer needs spatial",
        ),
        (
            lambda t, s: L.LogitsDistillation(temperature=0),
            ValueError,
            "temperature=0",
        ),
        (
            lambda t, s: L.ActivationBoundary("a", "b", margin=-1.0),
            ValueError,
            "margin=-1.0",
        ),
        (
            lambda t, s: L.ActivationBoundary(["a", "b"], ["c"]),
            ValueError,
            "2 teacher layer",
        ),
        (
            lambda t, s: L.ActivationBoundary(
                ["a", "b"], ["c", "d"], pair_weights=[1.0]
            ),
            ValueError,
            "2 layer pair\\(s\\) but received 1 pair_weights",
        ),
        (
            lambda t, s: L.NeuronSelectivityTransfer("a", "b", kernel="rbf"),
            ValueError,
            "rbf",
        ),
        (
            lambda t, s: Distiller(
                t, cnn(4, "small", size=16), L.LogitsDistillation()
            ),
            ValueError,
            "same inputs",
        ),
    ],
)
def test_bad_input_fails_before_training(make, error, pattern):
    teacher, student = pair()
    with pytest.raises(error, match=pattern):
        make(teacher, student)


def test_subclassed_teacher_works_for_logits_but_not_features():
    class Net(keras.Model):
        def __init__(self):
            super().__init__(name="subnet")
            self.flat = keras.layers.Flatten()
            self.dense = keras.layers.Dense(5)

        def call(self, x):
            return self.dense(self.flat(x))

    teacher = Net()
    teacher(np.zeros((1, 8, 8, 3), "float32"))
    student = cnn(4, "student")
    with pytest.raises(ValueError, match="'subnet' is a subclassed model"):
        Distiller(teacher, student, L.ActivationBoundary("dense", "relu2"))
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    distiller.compile(optimizer="sgd", loss=sparse_ce())
    x, y = data(n=4)
    logs = distiller.fit(x, y, epochs=1, verbose=0).history
    assert np.isfinite(logs["logits_distillation_loss"][-1])
