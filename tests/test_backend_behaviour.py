"""What the Distiller guarantees, checked on the active Keras backend.

Backend-neutral (keras.ops, NumPy, tests/backend_utils.py): the main run
checks TensorFlow, and tests/test_backends.py runs this module again under
KERAS_BACKEND=jax and KERAS_BACKEND=torch.
"""

import os

import keras
import numpy as np
import pytest
from backend_utils import BACKEND
from backend_utils import to_numpy
from builders import CallCounter
from builders import StepCounter
from builders import all_losses
from builders import cnn
from builders import data
from builders import pair
from builders import sparse_ce

from keras_kd import Distiller
from keras_kd import losses as L
from keras_kd.callbacks import ActivationBoundarySchedule


def _counting_cnn(width, name, counter, fused=False):
    return cnn(width, name, fused=fused, counter=counter)


def _weights(variables):
    return [to_numpy(v) for v in variables]


# --- one pass per network ----------------------------------------------------


def test_each_network_runs_once_per_step_eagerly():
    teacher = _counting_cnn(8, "teacher", CallCounter)
    student = _counting_cnn(4, "student", CallCounter, fused=True)
    # KD + AB on two pairs: several taps per network; fewer losses keep
    # JAX's op-by-op eager mode quick (the compiled test below uses all).
    distiller = Distiller(teacher, student, all_losses()[:2])
    distiller.compile(optimizer="sgd", loss=sparse_ce(), run_eagerly=True)
    x, y = data(n=8)
    # Warm-up: the first fit/evaluate/predict may also run the networks on
    # symbolic inputs to infer shapes (JAX's `jax.eval_shape`, PyTorch's meta
    # tensors), which computes nothing; count from the second call on.
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    distiller.evaluate(x, y, batch_size=4, verbose=0)
    distiller.predict(x, batch_size=4, verbose=0)
    t, s = teacher.get_layer("counter"), student.get_layer("counter")
    t.count = s.count = 0
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 2 steps
    assert (t.count, s.count) == (2, 2)
    distiller.evaluate(x, y, batch_size=4, verbose=0)  # 2 steps
    assert (t.count, s.count) == (4, 4)
    distiller.predict(x, batch_size=4, verbose=0)  # the student alone
    assert (t.count, s.count) == (4, 6)


class _OrderRecorder(keras.layers.Layer):
    """Identity layer appending (name, grad mode) to a shared list."""

    def __init__(self, log, **kwargs):
        super().__init__(**kwargs)
        self.record = log.append  # a list attribute would be copied

    def call(self, x):
        import torch

        self.record((self.name, torch.is_grad_enabled()))
        return x


@pytest.mark.skipif(BACKEND != "torch", reason="PyTorch's eager order")
def test_torch_runs_the_teacher_first_without_autograd():
    # keras_kd/backend/torch.py: the teacher's pass comes before the
    # student's, under no_grad, and is still the only one in the step.
    log = []

    def tagged(width, name):
        inputs = keras.Input((8, 8, 3))
        x = _OrderRecorder(log, name=f"{name}_mark")(inputs)
        x = keras.layers.Conv2D(width, 3, padding="same", name="conv")(x)
        x = keras.layers.ReLU(name="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(5)(x), name=name)

    teacher, student = tagged(8, "teacher"), tagged(4, "student")
    distiller = Distiller(
        teacher,
        student,
        [L.LogitsDistillation(), L.ActivationBoundary("relu", "relu")],
    )
    distiller.compile(optimizer="sgd", loss=sparse_ce())
    x, y = data(n=8)
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)  # builds
    del log[:]
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)  # 2 steps
    step = [("teacher_mark", False), ("student_mark", True)]
    assert log == step * 2
    assert distiller._teacher_stash.outputs is None  # nothing kept


def test_each_network_runs_once_per_compiled_step():
    teacher = _counting_cnn(8, "teacher", StepCounter)
    student = _counting_cnn(4, "student", StepCounter, fused=True)
    distiller = Distiller(teacher, student, all_losses())
    distiller.compile(optimizer="sgd", loss=sparse_ce())
    x, y = data(n=12)
    t = teacher.get_layer("counter").runs
    s = student.get_layer("counter").runs

    def counts():
        return float(to_numpy(t)), float(to_numpy(s))

    base = counts()
    distiller.fit(x, y, batch_size=4, epochs=2, verbose=0)  # 6 steps
    assert counts() == (base[0] + 6, base[1] + 6)
    distiller.evaluate(x, y, batch_size=6, verbose=0)  # 2 steps
    assert counts() == (base[0] + 8, base[1] + 8)


# --- frozen teacher, gradients -----------------------------------------------


def test_teacher_bit_identical_gradients_reach_student_and_connectors_only():
    teacher, student = pair()
    losses = all_losses()
    distiller = Distiller(teacher, student, losses)
    connectors = [c for loss in losses for c in loss.connectors]
    assert len(connectors) == 3  # AB conv1 (4->8), AB relu2 (4->8), hint
    expected = {id(v) for v in student.trainable_variables}
    expected |= {id(v) for c in connectors for v in c.trainable_variables}
    assert {id(v) for v in distiller.trainable_variables} == expected
    assert not {id(v) for v in teacher.weights} & expected
    assert not teacher.trainable

    distiller.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce())
    x, y = data(n=16)
    teacher_before = _weights(teacher.weights)
    trained_before = _weights(distiller.trainable_variables)
    distiller.fit(x, y, batch_size=8, epochs=2, verbose=0)
    for v, b in zip(teacher.weights, teacher_before):
        np.testing.assert_array_equal(to_numpy(v), b, err_msg=v.path)
    for v, b in zip(distiller.trainable_variables, trained_before):
        assert not np.array_equal(to_numpy(v), b), f"{v.path} did not train"


# --- sample weights, logs ----------------------------------------------------


def _no_batch_statisticspair():
    # Without BatchNormalization in training mode and without connectors
    # (equal widths), an example can reach the update only through the loss.
    teacher = cnn(4, "teacher", bn=False)
    student = cnn(4, "student", bn=False)
    losses = [
        L.LogitsDistillation(temperature=2.0),
        L.ActivationBoundary(["relu1", "relu2"], ["relu1", "relu2"]),
        L.NeuronSelectivityTransfer("relu2", "relu2"),
        L.AttentionTransfer("relu2", "relu2"),
    ]
    distiller = Distiller(teacher, student, losses)
    assert not [c for loss in losses for c in loss.connectors]
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
    return distiller


def test_zero_sample_weight_example_changes_nothing():
    x, y = data(n=8, seed=5)
    w = np.ones(8, "float32")
    w[3] = 0.0
    other_x, other_y = x.copy(), y.copy()
    other_x[3] = 10.0 * np.random.default_rng(9).normal(size=x[3].shape)
    other_y[3] = (y[3] + 1) % 5
    results = []
    for xs, ys in ((x, y), (other_x, other_y)):
        keras.utils.set_random_seed(0)
        distiller = _no_batch_statisticspair()
        distiller.fit(
            xs, ys, sample_weight=w, batch_size=8, epochs=2, verbose=0
        )
        results.append(_weights(distiller.student.weights))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # ... while the same change with a weight of 1 does change the update.
    finals = []
    for xs, ys in ((x, y), (other_x, other_y)):
        keras.utils.set_random_seed(0)
        distiller = _no_batch_statisticspair()
        distiller.fit(xs, ys, batch_size=8, epochs=1, verbose=0)
        finals.append(_weights(distiller.student.weights))
    assert any(not np.allclose(a, b) for a, b in zip(*finals))


def test_every_term_and_boundary_agreement_is_logged():
    teacher, student = pair()
    distiller = Distiller(teacher, student, all_losses())
    distiller.compile(optimizer="adam", loss=sparse_ce(), metrics=["accuracy"])
    x, y = data(n=8)
    history = distiller.fit(
        x, y, batch_size=8, epochs=2, verbose=0, validation_data=(x, y)
    ).history
    expected = {
        "loss",
        "student_loss",
        "accuracy",
        "boundary_agreement",
        "activation_boundary_conv1",
        "activation_boundary_relu2",
    }
    expected |= {f"{loss.name}_loss" for loss in distiller.distillation_losses}
    for key in sorted(expected):
        for prefix in ("", "val_"):
            assert prefix + key in history, (prefix + key, sorted(history))
            assert np.all(np.isfinite(history[prefix + key])), prefix + key
    assert all(0.0 <= v <= 1.0 for v in history["boundary_agreement"])


# --- callbacks ---------------------------------------------------------------


def _dense_pair(teacher_regularizer, student_regularizer):
    def net(width, name, regularizer):
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(
            width,
            activation="relu",
            name="hidden",
            activity_regularizer=regularizer,
            kernel_regularizer=regularizer,
        )(inputs)
        return keras.Model(inputs, keras.layers.Dense(3)(hidden), name=name)

    keras.utils.set_random_seed(0)
    teacher = net(12, "teacher", teacher_regularizer)
    keras.utils.set_random_seed(1)
    student = net(4, "student", student_regularizer)
    return teacher, student


@pytest.mark.parametrize("student_regularized", [False, True])
def test_logged_total_holds_the_students_regularisation_not_the_teachers(
    student_regularized,
):
    # The teacher's activity regulariser (its weights' are frozen) has no
    # gradient: it must not enter the total. The student's must.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 6)).astype("float32")
    y = np.arange(8) % 3
    student_reg = keras.regularizers.L2(0.5) if student_regularized else None
    teacher, student = _dense_pair(keras.regularizers.L2(10.0), student_reg)
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    # Learning rate 0: the logged values are those of these weights.
    distiller.compile(optimizer=keras.optimizers.SGD(0.0), loss=sparse_ce())
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    terms = logs["student_loss"][0] + logs["logits_distillation_loss"][0]
    # What the student's regularisers add for this batch, computed by Keras
    # on the student alone.
    student(x, training=True)
    expected = sum(float(to_numpy(v)) for v in student.losses)
    if not student_regularized:
        assert expected == 0.0
    else:
        assert expected > 0.1
    np.testing.assert_allclose(logs["loss"][0], terms + expected, rtol=1e-5)


def test_activation_boundary_schedule_two_stages():
    teacher, student = pair()
    ab = L.ActivationBoundary(["relu1", "relu2"], ["conv1", "relu2"])
    distiller = Distiller(teacher, student, [L.LogitsDistillation(), ab])
    distiller.compile(optimizer=keras.optimizers.SGD(0.05), loss=sparse_ce())
    x, y = data(n=8)
    seen, snapshots = [], []

    def record(epoch, logs=None):
        seen.append(distiller.loss_weights)
        snapshots.append(
            (
                to_numpy(student.get_layer("logits").kernel),
                to_numpy(ab.connectors[0].projection.kernel),
            )
        )

    callbacks = [
        ActivationBoundarySchedule(init_epochs=2),
        keras.callbacks.LambdaCallback(
            on_epoch_begin=record, on_train_end=lambda logs: record(-1)
        ),
    ]
    distiller.fit(x, y, batch_size=4, epochs=4, verbose=0, callbacks=callbacks)
    stage1 = {
        "student": 0.0,
        "logits_distillation": 0.0,
        "activation_boundary": 1.0,
    }
    stage2 = {
        "student": 1.0,
        "logits_distillation": 1.0,
        "activation_boundary": 0.0,
    }
    assert seen[:4] == [stage1, stage1, stage2, stage2]
    np.testing.assert_array_equal(
        snapshots[0][0], snapshots[2][0]
    )  # head frozen
    assert not np.array_equal(
        snapshots[0][1], snapshots[2][1]
    )  # connector trains
    np.testing.assert_array_equal(
        snapshots[2][1], snapshots[4][1]
    )  # connector idle
    assert not np.array_equal(snapshots[2][0], snapshots[4][0])  # head trains


# --- compilation, precision --------------------------------------------------


def _fit_history(
    jit_compile=None, policy="float32", steps=3, losses=all_losses
):
    keras.utils.set_random_seed(0)
    keras.config.set_dtype_policy("float32")
    teacher = cnn(8, "teacher")
    student_f32 = cnn(4, "student", fused=True)
    keras.config.set_dtype_policy(policy)
    try:
        keras.utils.set_random_seed(1)
        student = cnn(4, "student", fused=True)
        student.set_weights(student_f32.get_weights())
        keras.utils.set_random_seed(2)
        distiller = Distiller(teacher, student, losses())
        kwargs = {} if jit_compile is None else {"jit_compile": jit_compile}
        distiller.compile(
            optimizer=keras.optimizers.SGD(1e-2), loss=sparse_ce(), **kwargs
        )
    finally:
        keras.config.set_dtype_policy("float32")
    if isinstance(distiller.optimizer, keras.optimizers.LossScaleOptimizer):
        distiller.optimizer.initial_scale = 2.0**7  # see test_mixed_precision
    x, y = data(n=16)
    history = distiller.fit(
        x, y, batch_size=16, epochs=steps, verbose=0
    ).history
    return distiller, history


@pytest.fixture(scope="module")  # one eager float32 run for the module
def float32_run():
    return _fit_history(jit_compile=False)[1]


def _torch_compile_without_codegen(monkeypatch):
    """Makes Keras's `torch.compile` use "aot_eager"; returns its calls.

    Keras compiles the PyTorch step with `torch.compile` (TorchDynamo). Its
    default inductor backend spends ~8 minutes generating C++ for the
    five-loss step on 2 CPU cores; "aot_eager" runs the same Dynamo capture
    and AOTAutograd graphs without the code generation.
    """
    import torch

    calls = []
    compile_ = torch.compile

    def aot_eager(*args, **kwargs):
        calls.append(kwargs.get("backend"))
        kwargs["backend"] = "aot_eager"
        return compile_(*args, **kwargs)

    monkeypatch.setattr(torch, "compile", aot_eager)
    return calls


def test_jit_compile_true_gives_the_same_losses(float32_run, monkeypatch):
    if BACKEND == "torch" and not os.environ.get("KERAS_KD_TEST_TORCH_COMPILE"):
        pytest.skip(
            "torch.compile of the five-loss step takes 3.5 min (aot_eager) "
            "to 8 min (inductor) on 2 CPU cores; passed when run with "
            "KERAS_KD_TEST_TORCH_COMPILE=1. CI compiles KD + AB instead "
            "(test_torch_compile_of_kd_and_ab_gives_the_same_losses)"
        )
    if BACKEND == "torch":
        _torch_compile_without_codegen(monkeypatch)
    distiller, logs = _fit_history(jit_compile=True)
    assert distiller.jit_compile
    for key, values in float32_run.items():
        np.testing.assert_allclose(
            logs[key], values, rtol=1e-4, atol=1e-6, err_msg=key
        )


@pytest.mark.skipif(BACKEND != "torch", reason="torch.compile (PyTorch)")
def test_torch_compile_of_kd_and_ab_gives_the_same_losses(monkeypatch):
    # The compiled PyTorch step in CI (~50 s on 2 cores): KD and AB on two
    # pairs, one with a connector, the teacher-first train step and the
    # non-finite guard (a graph break at its `int()`), through Dynamo.
    def kd_and_ab():
        return all_losses()[:2]

    eager = _fit_history(jit_compile=False, losses=kd_and_ab)[1]
    calls = _torch_compile_without_codegen(monkeypatch)
    distiller, logs = _fit_history(jit_compile=True, losses=kd_and_ab)
    assert distiller.jit_compile and calls  # the step went through Dynamo
    assert "boundary_agreement" in logs
    for key, values in eager.items():
        np.testing.assert_allclose(
            logs[key], values, rtol=1e-4, atol=1e-6, err_msg=key
        )


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mixed_precision_student_trains_like_float32(policy, float32_run):
    distiller, logs = _fit_history(policy=policy)
    assert distiller.student.compute_dtype == policy[len("mixed_") :]
    float16 = policy == "mixed_float16"
    optimizer = distiller.optimizer
    assert isinstance(optimizer, keras.optimizers.LossScaleOptimizer) == float16
    assert int(to_numpy(optimizer.iterations)) == 3  # no step skipped
    rtol = 2e-2 if policy == "mixed_bfloat16" else 5e-3
    for key, values in float32_run.items():
        assert np.all(np.isfinite(logs[key])), key
        np.testing.assert_allclose(
            logs[key], values, rtol=rtol, atol=1e-5, err_msg=key
        )


def test_unlabelled_batches_with_compiled_metrics_fail_before_training():
    # A synthesised pool has no labels; accuracy cannot be computed on it.
    teacher, student = pair()
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    distiller.compile("sgd", sparse_ce(), metrics=["accuracy"])
    x, _ = data()
    before = [to_numpy(w) for w in student.weights]
    with pytest.raises(ValueError, match="compiled with metrics, and this"):
        distiller.fit(x, epochs=1, batch_size=8, verbose=0)
    for a, b in zip(before, student.weights):
        np.testing.assert_array_equal(a, to_numpy(b))
    distiller.compile("sgd", sparse_ce())  # without metrics: it trains
    distiller.fit(x, epochs=1, batch_size=8, verbose=0)
    distiller.compile("sgd", sparse_ce(), metrics=[])  # names none: trains
    distiller.fit(x, epochs=1, batch_size=8, verbose=0)
    assert any(
        not np.array_equal(a, to_numpy(b))
        for a, b in zip(before, student.weights)
    )


# --- the non-finite guard ----------------------------------------------------


def test_non_finite_term_stops_before_the_update_and_names_it():
    from keras_kd import NonFiniteLossError

    teacher, student = pair()
    distiller = Distiller(
        teacher,
        student,
        [L.ActivationBoundary("relu1", "conv1"), L.LogitsDistillation()],
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), loss=sparse_ce())
    x, y = data(n=8)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)  # a finite step
    # Poison the teacher's logits bias: its logits become NaN, relu1 does
    # not. (Not a conv kernel: ReLU maps NaN to 0 on some backends.)
    head = teacher.get_layer("logits")
    head.bias.assign(np.full(head.bias.shape, np.nan, "float32"))
    before = _weights(distiller.trainable_variables)
    optimizer_before = _weights(distiller.optimizer.variables)
    with pytest.raises(
        NonFiniteLossError, match="'logits_distillation_loss' is not finite"
    ) as info:
        distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert info.value.term == "logits_distillation_loss"
    for v, b in zip(distiller.trainable_variables, before):
        np.testing.assert_array_equal(to_numpy(v), b, err_msg=v.path)
    for a, b in zip(_weights(distiller.optimizer.variables), optimizer_before):
        np.testing.assert_array_equal(a, b)  # Adam's moments and iterations too
    # Once the cause is fixed, training goes on.
    head.bias.assign(np.zeros(head.bias.shape, "float32"))
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert np.isfinite(logs["loss"][-1])


def test_non_finite_last_step_of_an_epoch_is_caught():
    # JAX reads the guard's flag one step late; the last step's is read
    # when Keras syncs the state at the end of the epoch.
    from keras_kd import NonFiniteLossError

    x, y = data(n=12)
    x_bad = x.copy()
    x_bad[8:] = np.nan  # the third and last batch of 4

    def linear_teacher():
        # NaN images must reach a loss term: a ReLU maps NaN to 0 on some
        # CPUs (TensorFlow's oneDNN kernels here), so the teacher has none.
        inputs = keras.Input((8, 8, 3))
        pooled = keras.layers.GlobalAveragePooling2D()(inputs)
        logits = keras.layers.Dense(5, name="logits")(pooled)
        return keras.Model(inputs, logits, name="teacher")

    def fit(images, expect_error):
        keras.utils.set_random_seed(0)
        teacher, student = linear_teacher(), pair()[1]
        distiller = Distiller(teacher, student, L.LogitsDistillation())
        distiller.compile(
            optimizer=keras.optimizers.SGD(1e-2), loss=sparse_ce()
        )
        labels = y[: len(images)]
        options = dict(batch_size=4, epochs=1, shuffle=False, verbose=0)
        if expect_error:
            with pytest.raises(NonFiniteLossError, match="is not finite"):
                distiller.fit(images, labels, **options)
        else:
            distiller.fit(images, labels, **options)
        return _weights(distiller.trainable_variables), distiller

    finite, _ = fit(x[:8], expect_error=False)  # the two finite batches
    stopped, distiller = fit(x_bad, expect_error=True)
    for a, b in zip(stopped, finite):
        np.testing.assert_array_equal(a, b)
    # The guard is reset: the next fit on finite data trains.
    logs = distiller.fit(x[:8], y[:8], batch_size=4, verbose=0).history
    assert np.isfinite(logs["loss"][-1])


# --- saving ------------------------------------------------------------------


def test_keras_file_round_trip(tmp_path):
    teacher, student = pair()
    losses = all_losses()
    distiller = Distiller(teacher, student, losses)
    distiller.compile(optimizer="adam", loss=sparse_ce(), metrics=["accuracy"])
    x, y = data(n=8)
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    losses[0].temperature.assign(2.5)
    distiller.set_loss_weights(activation_boundary=0.5)
    path = tmp_path / "distiller.keras"
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Distiller)
    np.testing.assert_array_equal(
        loaded.predict(x, verbose=0), distiller.predict(x, verbose=0)
    )
    for a, b in zip(loaded.weights, distiller.weights):
        np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    assert (
        float(to_numpy(loaded.get_loss("logits_distillation").temperature))
        == 2.5
    )
    assert loaded.loss_weights["activation_boundary"] == 0.5
    assert len(loaded.get_loss("activation_boundary").connectors) == 2
    # The loaded distiller trains on, from the saved optimizer state.
    assert int(to_numpy(loaded.optimizer.iterations)) == 2
    loaded.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert int(to_numpy(loaded.optimizer.iterations)) == 4
    # And its config round-trips on its own.
    rebuilt = Distiller.from_config(distiller.get_config())
    assert [loss.name for loss in rebuilt.distillation_losses] == [
        loss.name for loss in losses
    ]
    assert (
        rebuilt.get_config()["distillation_losses"]
        == distiller.get_config()["distillation_losses"]
    )


def test_backend_is_the_one_requested():
    assert BACKEND == os.environ.get("KERAS_BACKEND", "tensorflow")
