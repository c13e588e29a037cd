"""Joint distillation and domain adaptation (DomainAdaptiveDistiller).

Backend-neutral (tests/test_backends.py runs it under JAX and PyTorch too).
The loss equals the formula in float64 on the networks' own outputs; the
student's updates never reach the teacher (with the adaptation weight at 0
the teacher's weights stay as they were, while the student trains); the
teacher adapts otherwise; each network runs once per step on both domains;
bad input fails before training.

This procedure relaxes the frozen-teacher invariant of `Distiller` (the
teacher is trained by its adaptation term); the test that replaces it here
is `test_the_students_loss_never_reaches_the_teacher`.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from builders import cnn  # noqa: E402
from domain_references import ref_mmd  # noqa: E402

from keras_kd.procedures.domain_adaptation import DomainAdaptiveDistiller  # noqa: E402
from keras_kd.procedures.domain_adaptation import paired_domains  # noqa: E402
from keras_kd.procedures.domain_adaptation import trainable_copy  # noqa: E402


def _domains(n=8, seed=0):
    rng = np.random.default_rng(seed)
    source = rng.normal(size=(n, 8, 8, 3)).astype("float32")
    target = (rng.normal(size=(n + 3, 8, 8, 3)) + 1.0).astype("float32")
    labels = rng.integers(0, 5, n)
    return source, labels, target


def _trainable(model):
    return [to_numpy(v).copy() for v in model.trainable_variables]


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _kd(t, s, temperature):
    p = _softmax(t / temperature)
    return temperature**2 * np.sum(
        p * (np.log(p) - np.log(_softmax(s / temperature))), -1
    )


def test_loss_equals_the_formula_in_float64():
    keras.utils.set_random_seed(0)
    teacher, student = cnn(6, "teacher"), cnn(3, "student")
    model = DomainAdaptiveDistiller(
        teacher, student, temperature=4.0, alpha=0.3, beta_range=(0.25, 0.25)
    )
    model.compile(optimizer="sgd")
    source, labels, target = _domains()
    x = {"source": source[:4], "target": target[:4]}
    y_pred = model(x, training=False)
    total = float(
        to_numpy(model.compute_loss(x, labels[:4], y_pred, training=False))
    )
    t = np.asarray(to_numpy(y_pred["teacher"]), np.float64)
    s = np.asarray(to_numpy(y_pred["student"]), np.float64)
    f = np.asarray(to_numpy(y_pred["features"]), np.float64)
    both = np.concatenate([x["source"], x["target"]])
    np.testing.assert_allclose(t, to_numpy(teacher(both)), rtol=1e-5)
    np.testing.assert_allclose(s, to_numpy(student(both)), rtol=1e-5)

    def ce(z):
        return np.mean(-np.log(_softmax(z)[np.arange(4), labels[:4]]))

    gamma = 1.0  # evaluation: the ramp's end
    adaptation = 0.75 * (ce(t[:4]) + gamma * ref_mmd(f[:4], f[4:]))
    distillation = 0.25 * (
        0.3 * np.mean(_kd(t[:4], s[:4], 4.0))
        + 0.7 * ce(s[:4])
        + np.mean(_kd(t[4:], s[4:], 4.0))
    )
    assert total == pytest.approx(adaptation + distillation, rel=1e-4)


def test_the_students_loss_never_reaches_the_teacher():
    keras.utils.set_random_seed(1)
    teacher, student = cnn(6, "teacher", bn=False), cnn(3, "student")
    model = DomainAdaptiveDistiller(teacher, student, beta_range=(1.0, 1.0))
    model.compile(optimizer=keras.optimizers.Adam(0.05))
    x, y = paired_domains(*_domains())
    before_teacher, before_student = _trainable(teacher), _trainable(student)
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    for old, new in zip(before_teacher, _trainable(teacher)):
        np.testing.assert_array_equal(old, new)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(before_student, _trainable(student))
    )


def test_the_teacher_adapts_and_the_weights_follow_their_schedules():
    keras.utils.set_random_seed(2)
    teacher, student = cnn(6, "teacher"), cnn(3, "student")
    model = DomainAdaptiveDistiller(teacher, student)
    model.compile(optimizer=keras.optimizers.Adam(0.01), metrics=["accuracy"])
    x, y = paired_domains(*_domains(n=8))
    before = _trainable(teacher)
    history = model.fit(x, y, batch_size=4, epochs=2, verbose=0).history
    assert any(
        not np.array_equal(a, b) for a, b in zip(before, _trainable(teacher))
    )
    np.testing.assert_allclose(history["beta"], [0.1, 0.3], rtol=1e-5)
    # gamma averaged over each epoch's steps (2 of 4 in all): rising.
    assert 0.0 < history["gamma"][0] < history["gamma"][1] < 1.0
    for key in ("mmd", "kd_source", "kd_target", "accuracy"):
        assert np.all(np.isfinite(history[key])), key
    evaluation = model.evaluate(x["target"], y, verbose=0, return_dict=True)
    assert np.isfinite(evaluation["loss"])
    # Plain images score the student; the training terms are not reported.
    assert set(evaluation) == {"loss", "accuracy"}
    predictions = model.predict(x["target"], verbose=0)
    np.testing.assert_allclose(
        predictions, to_numpy(student(x["target"])), rtol=1e-5, atol=1e-6
    )


def test_each_network_runs_once_per_step_on_both_domains():
    keras.utils.set_random_seed(3)
    teacher = cnn(6, "teacher", counter=True)
    student = cnn(3, "student", counter=True)
    model = DomainAdaptiveDistiller(teacher, student)
    model.compile(optimizer="sgd", run_eagerly=True)
    x, y = paired_domains(*_domains(n=8))
    t_counter = teacher.get_layer("counter")
    s_counter = student.get_layer("counter")
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)  # builds (JAX: +1)
    t_counter.count = s_counter.count = 0
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert (t_counter.count, s_counter.count) == (2, 2)  # 2 steps


def test_paired_domains_resample_the_target_to_the_source_size():
    source, labels, target = _domains(n=8)
    x, y = paired_domains(source, labels, target, seed=0)
    assert x["source"] is source and y is labels
    assert x["target"].shape == (8, 8, 8, 3)
    rows = {arr.tobytes() for arr in target}
    assert all(arr.tobytes() in rows for arr in x["target"])


def test_bad_input_fails_before_training():
    teacher, student = cnn(6, "teacher"), cnn(3, "student")
    with pytest.raises(ValueError, match="same model"):
        DomainAdaptiveDistiller(teacher, teacher)
    with pytest.raises(ValueError, match="alpha"):
        DomainAdaptiveDistiller(teacher, student, alpha=1.5)
    with pytest.raises(ValueError, match="beta_range"):
        DomainAdaptiveDistiller(teacher, student, beta_range=(0.0, 0.9))
    teacher.trainable = False
    with pytest.raises(ValueError, match="no trainable weights"):
        DomainAdaptiveDistiller(teacher, student)
    # trainable_copy trains, and leaves the original frozen.
    copy = trainable_copy(teacher, name="adapted")
    assert copy.name == "adapted" and not teacher.trainable_weights
    assert copy.trainable_weights and all(x.trainable for x in copy.layers)
    for a, b in zip(teacher.get_weights(), copy.get_weights()):
        np.testing.assert_array_equal(a, b)
    DomainAdaptiveDistiller(copy, student)
    teacher.trainable = True
    model = DomainAdaptiveDistiller(teacher, student)
    with pytest.raises(ValueError, match="missing"):
        model({"source": np.zeros((2, 8, 8, 3), "float32")})
