"""Boundary-supporting samples in a Distiller: training, guards, schedule.

Backend-neutral (tests/test_backends.py runs it under JAX and PyTorch too).
The attack, the base-sample choice and the target draw are checked against
float64 NumPy versions of the official code in test_boundary_reference.py.
"""

import os

import keras
import numpy as np
import pytest
from backend_utils import BACKEND
from backend_utils import to_numpy

from keras_kd import Distiller
from keras_kd import callbacks
from keras_kd import losses as L
from keras_kd.procedures import BoundarySupportingSamples
from keras_kd.procedures import BoundarySupportingSchedule
from keras_kd.procedures import boundary_attack
from keras_kd.procedures import input_scale_of
from keras_kd.procedures import sample_target_classes
from keras_kd.procedures import select_base_samples
from keras_kd.step import StepContext


def _cnn(width, name, seed, softmax=False):
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Normalization(mean=120.0, variance=50.0**2)(inputs)
    x = keras.layers.Conv2D(
        width,
        3,
        padding="same",
        kernel_initializer=keras.initializers.GlorotNormal(seed),
    )(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(
        4,
        activation="softmax" if softmax else None,
        kernel_initializer=keras.initializers.GlorotNormal(seed + 1),
        name="logits",
    )(x)
    return keras.Model(inputs, outputs, name=name)


def _setup(softmax=False, **kwargs):
    teacher = _cnn(12, "teacher", 1, softmax)
    student = _cnn(12, "student", 1, softmax)
    # The student starts near the teacher: both classify most examples
    # like the labels (the teacher's own classes), so base samples exist.
    student.set_weights([w + 0.01 * np.sign(w) for w in teacher.get_weights()])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(32, 6, 6, 3)).astype("float32")
    y = np.argmax(to_numpy(teacher(x)), axis=-1)
    procedure = BoundarySupportingSamples(max_samples=8, seed=3, **kwargs)
    distiller = Distiller(
        teacher,
        student,
        L.LogitsDistillation(temperature=3.0),
        procedures=procedure,
    )
    return distiller, procedure, x, y


def test_bss_trains_adds_its_term_and_leaves_the_teacher():
    distiller, procedure, x, y = _setup()
    distiller.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    before = [np.array(w) for w in distiller.teacher.get_weights()]
    history = distiller.fit(
        x,
        y,
        epochs=2,
        batch_size=16,
        verbose=0,
        callbacks=callbacks.for_distiller(distiller),
    )
    bss = history.history["bss_loss"]
    assert np.all(np.isfinite(bss)) and bss[0] > 0
    # Epoch 2 of 2 weighs BSS 0: the step was rebuilt without the attack
    # (as the official code skips it), so the term is exactly 0.
    assert bss[1] == 0.0 and not procedure.attacking
    for a, b in zip(distiller.teacher.get_weights(), before):
        np.testing.assert_array_equal(a, b)
    # The official schedule at epoch 2 of 2: KD 1 / T^2, BSS 0.
    weights = distiller.loss_weights
    assert weights["bss"] == 0.0
    assert weights["logits_distillation"] == pytest.approx(1.0 / 9.0)
    # Evaluation adds no attack (the term is 0).
    logs = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert logs["bss_loss"] == 0.0


def test_bss_term_is_the_kl_on_the_attacked_base_samples():
    # The procedure's term, from a step context built by hand, against the
    # pieces: the mean over base samples of KL(p_T || p_S) at T = 3 (no
    # T^2) on boundary_attack's samples, in float64.
    distiller, procedure, x, y = _setup(schedule=None)
    teacher, student = distiller.teacher, distiller.student
    x, y = x[:16], y[:16].copy()
    y[:10] = (y[:10] + 1) % 4  # wrong labels: at most 6 qualify
    t_logits, s_logits = teacher(x), student(x)
    context = StepContext(
        inputs=x,
        labels=y,
        sample_weight=None,
        side_inputs={},
        teacher=[t_logits],
        student=[s_logits],
        training=True,
        replicas=1,
        logits=(t_logits, s_logits),
    )
    term = float(to_numpy(procedure.terms(context)["bss"]))

    indices, mask = select_base_samples(t_logits, s_logits, y, 8)
    indices, mask = to_numpy(indices), to_numpy(mask)
    assert 1 <= mask.sum() < 8  # some base samples, some padding
    uniform = keras.random.uniform((8,), seed=keras.random.SeedGenerator(3))
    targets = sample_target_classes(to_numpy(t_logits)[indices], uniform)
    adversarial = to_numpy(
        boundary_attack(
            teacher,
            x[indices],
            targets,
            input_scale=input_scale_of(teacher),
            clip=(float(x.min()), float(x.max())),
            active=mask,
        )
    )
    moved = np.abs(adversarial - x[indices]).max(axis=(1, 2, 3))
    assert np.all(moved[mask == 0] == 0)  # padding never moves
    assert np.all(moved[mask == 1] > 0)
    t = to_numpy(teacher(adversarial)).astype("float64") / 3.0
    s = to_numpy(student(adversarial, training=True)).astype("float64") / 3.0
    log_p = t - t.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    log_q = s - s.max(-1, keepdims=True)
    log_q -= np.log(np.exp(log_q).sum(-1, keepdims=True))
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    expected = np.sum(kl * mask) / mask.sum()
    assert expected > 0
    np.testing.assert_allclose(term, expected, rtol=1e-4)


def test_input_scale_is_read_from_the_model_front():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Rescaling(1.0 / 255.0)(inputs)
    x = keras.layers.Normalization(
        mean=[0.5, 0.4, 0.3], variance=[0.04, 0.09, 0.01]
    )(x)
    model = keras.Model(inputs, keras.layers.Dense(2)(x))
    np.testing.assert_allclose(
        input_scale_of(model), 255.0 * np.array([0.2, 0.3, 0.1]), rtol=1e-5
    )
    plain = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    assert input_scale_of(plain) == 1.0


def test_zero_gradient_samples_do_not_move_instead_of_nan():
    # A teacher whose logits do not depend on the input (a dead ReLU): the
    # official step divides by ||g|| = 0 and feeds NaN to both networks.
    inputs = keras.Input((5,))
    hidden = keras.layers.Dense(
        3,
        activation="relu",
        kernel_initializer="zeros",
        bias_initializer=keras.initializers.Constant(-1.0),
    )(inputs)
    teacher = keras.Model(
        inputs,
        keras.layers.Dense(
            3, bias_initializer=keras.initializers.Constant([2.0, 1.0, 0.0])
        )(hidden),
    )
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    adversarial = to_numpy(
        boundary_attack(teacher, x, np.array([1, 2, 1, 2], "int32"))
    )
    np.testing.assert_array_equal(adversarial, x)
    with np.errstate(invalid="ignore"):
        official = x + 0.3 * (1.0 + 1e-4) * np.zeros_like(x) / 0.0
    assert np.isnan(official).all()


def test_official_schedule_values():
    weights = [
        BoundarySupportingSchedule.weights_at(e, 80)
        for e in (1, 40, 60, 61, 80)
    ]
    np.testing.assert_allclose(
        weights,
        [
            (3 * (1 - 1 / 80) + 1, 2 * (1 - 4 / 240)),
            (2.5, 2 * (1 - 160 / 240)),
            (1.75, 0.0),
            (3 * (1 - 61 / 80) + 1, 0.0),
            (1.0, 0.0),
        ],
    )


def test_bss_needs_labels_and_fails_before_any_update():
    distiller, _, x, _ = _setup()
    distiller.compile("adam", loss=None)
    before = [np.array(w) for w in distiller.student.get_weights()]
    with pytest.raises(ValueError, match="reads the labels"):
        distiller.fit(x, epochs=1, batch_size=16, verbose=0)
    for a, b in zip(distiller.student.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_bss_bad_arguments():
    with pytest.raises(ValueError, match="max_samples"):
        BoundarySupportingSamples(max_samples=0)
    with pytest.raises(ValueError, match="input_range"):
        BoundarySupportingSamples(input_range=(1.0, 0.0))
    with pytest.raises(ValueError, match="schedule"):
        BoundarySupportingSamples(schedule="paper")
    teacher, student = _cnn(4, "teacher", 1), _cnn(4, "student", 2)
    with pytest.raises(ValueError, match="weighs the KD loss"):
        Distiller(
            teacher,
            student,
            L.LogitsDistillation(name="kd"),
            procedures=BoundarySupportingSamples(),
        )


@pytest.mark.tensorflow_only(
    reason="which layer holds the logits is backend-neutral graph walking"
)
def test_bss_with_a_softmax_head_reads_logits():
    distiller, _, x, y = _setup(softmax=True, schedule=None)
    distiller.compile("adam", "sparse_categorical_crossentropy")
    history = distiller.fit(x, y[:, None], epochs=1, batch_size=16, verbose=0)
    assert history.history["bss_loss"][0] > 0


def _compiled_bss_loss():
    """The BSS term of one epoch with `jit_compile=True` (XLA on TensorFlow
    and JAX, `torch.compile` on PyTorch)."""
    distiller, _, x, y = _setup()
    distiller.compile(
        "adam",
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )
    history = distiller.fit(x, y, epochs=1, batch_size=16, verbose=0)
    return history.history["bss_loss"][0]


@pytest.mark.skipif(
    BACKEND == "torch",
    reason="XLA: TensorFlow and JAX (torch.compile: the opt-in test below)",
)
def test_bss_runs_in_an_xla_compiled_step():
    bss = _compiled_bss_loss()
    assert np.isfinite(bss)
    assert bss > 0


@pytest.mark.skipif(
    BACKEND != "torch" or not os.environ.get("KERAS_KD_TORCH_COMPILE"),
    reason="opt-in: KERAS_KD_TORCH_COMPILE=1 under the PyTorch backend",
)
def test_bss_under_torch_compile():
    assert np.isfinite(_compiled_bss_loss())


@pytest.mark.tensorflow_only(
    reason="TensorFlow traces the batch size as unknown; JAX and PyTorch "
    "see each batch's static size"
)
def test_bss_with_a_short_last_batch():
    # 20 examples in batches of 16: the last batch has 4 (TensorFlow traces
    # the batch size as unknown; the base samples are then padded).
    distiller, _, x, y = _setup(schedule=None)
    distiller.compile(
        "adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    )
    history = distiller.fit(x[:20], y[:20], epochs=1, batch_size=16, verbose=0)
    assert np.isfinite(history.history["bss_loss"][0])
    assert history.history["bss_loss"][0] > 0
