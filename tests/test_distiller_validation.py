"""Values that slip through: loss weights, non-finite totals,
sample weights, labels, empty data, and the losses' own model checks."""

import math

import keras
import numpy as np
import pytest
from backend_utils import to_numpy
from builders import cnn
from builders import data
from builders import pair
from builders import sparse_ce

import keras_kd
from keras_kd import Distiller
from keras_kd import losses as L


def _trainable(model):
    return [to_numpy(v) for v in model.trainable_weights]


def _assert_unchanged(model, before):
    for a, b in zip(_trainable(model), before):
        np.testing.assert_array_equal(a, b)


# --- loss weights ------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, pattern",
    [
        (
            {"student_loss_weight": math.nan},
            ValueError,
            "student_loss_weight must be a finite number >= 0; received nan",
        ),
        ({"student_loss_weight": math.inf}, ValueError, "received inf"),
        ({"student_loss_weight": -1}, ValueError, "received -1.0"),
        (
            {"student_loss_weight": True},
            TypeError,
            "student_loss_weight must be a number.*True of type bool",
        ),
        ({"student_loss_weight": "1"}, TypeError, "of type str"),
        (
            {"distillation_loss_weights": [math.nan]},
            ValueError,
            r"distillation_loss_weights\[0\] \(logits_distillation\).*nan",
        ),
        ({"distillation_loss_weights": math.inf}, ValueError, "received inf"),
        ({"distillation_loss_weights": [True]}, TypeError, "of type bool"),
        ({"distillation_loss_weights": [-5.0]}, ValueError, "received -5.0"),
    ],
)
def test_constructor_rejects_bad_loss_weights(kwargs, error, pattern):
    teacher, student = pair()
    with pytest.raises(error, match=pattern):
        Distiller(teacher, student, L.LogitsDistillation(), **kwargs)


@pytest.mark.parametrize(
    "value, error, pattern",
    [
        (
            -5,
            ValueError,
            "loss weight 'logits_distillation' must be a finite "
            "number >= 0; received -5.0",
        ),
        (math.nan, ValueError, "received nan"),
        (math.inf, ValueError, "received inf"),
        (True, TypeError, "of type bool"),
        (None, TypeError, "of type NoneType"),
    ],
)
def test_set_loss_weights_rejects_bad_values(value, error, pattern):
    teacher, student = pair()
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    with pytest.raises(error, match=pattern):
        distiller.set_loss_weights(student=0.5, logits_distillation=value)
    # Nothing is set when one value is bad.
    assert distiller.loss_weights == {
        "student": 1.0,
        "logits_distillation": 1.0,
    }
    distiller.set_loss_weights(logits_distillation=np.float32(0.25))
    assert distiller.loss_weights["logits_distillation"] == 0.25


# --- the non-finite guard -----------------------------------------------------


def _regularized_student(regularizer):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(
        4,
        3,
        padding="same",
        activation="relu",
        kernel_regularizer=regularizer,
        name="conv1",
    )(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(
        inputs, keras.layers.Dense(5, name="logits")(x), name="student"
    )


def test_non_finite_total_is_caught_and_named():
    # Every weighted term is finite; the student's regularisation loss is
    # Inf (with a zero gradient, so an update would go through unnoticed).
    def infinite(weights):
        return keras.ops.sum(weights) * 0.0 + np.inf

    teacher = cnn(8, "teacher")
    student = _regularized_student(infinite)
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
    x, y = data(n=8)
    before = _trainable(student)
    with pytest.raises(keras_kd.NonFiniteLossError) as info:
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert info.value.term == "loss"
    assert "weighted total loss 'loss' is not finite" in str(info.value)
    _assert_unchanged(student, before)


def test_non_finite_term_raises_one_clear_exception():
    teacher, student = pair()
    # Poison the teacher's logits (NaN bias): KD becomes NaN, AB does not.
    # (A NaN conv kernel is not enough: ReLU maps NaN to 0 on some backends.)
    logits = teacher.get_layer("logits")
    logits.bias.assign(np.full(logits.bias.shape, np.nan, "float32"))
    distiller = Distiller(
        teacher,
        student,
        [L.ActivationBoundary("relu1", "conv1"), L.LogitsDistillation()],
    )
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
    x, y = data(n=8)
    with pytest.raises(keras_kd.NonFiniteLossError) as info:
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    error = info.value
    assert isinstance(error, FloatingPointError)
    assert error.term == "logits_distillation_loss"
    message = str(error)
    assert message.startswith(
        "keras_kd: the loss term 'logits_distillation_loss' is not finite"
    )
    assert "Lower the learning rate" in message  # what to try
    assert "Graph execution error" not in message
    assert error.__cause__ is None and error.__suppress_context__


# --- sample weights and labels ------------------------------------------------


@pytest.mark.parametrize("bad", [-1.0, np.nan])
def test_bad_sample_weight_stops_before_the_update(bad):
    teacher, student = pair()
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
    x, y = data(n=8)
    weights = np.ones(8, "float32")
    weights[3] = bad
    before = _trainable(student)
    with pytest.raises(
        ValueError, match="negative or non-finite `sample_weight`"
    ):
        distiller.fit(
            x, y, sample_weight=weights, batch_size=8, epochs=1, verbose=0
        )
    _assert_unchanged(student, before)


def test_non_finite_float_labels_are_named():
    teacher, student = pair()
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    distiller.compile(optimizer=keras.optimizers.SGD(0.1), loss=sparse_ce())
    x, y = data(n=8)
    y = y.astype("float32")
    y[2] = np.nan
    before = _trainable(student)
    with pytest.raises(
        ValueError, match="labels of this batch contain NaN or Inf"
    ):
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    _assert_unchanged(student, before)


@pytest.mark.parametrize(
    "loss",
    [sparse_ce(), "sparse_categorical_crossentropy"],
    ids=["instance", "string"],
)
def test_one_hot_labels_with_a_sparse_loss_fail_clearly(loss):
    teacher, student = pair()
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    distiller.compile(optimizer="sgd", loss=loss)
    x, y = data(n=8)
    one_hot = np.eye(5, dtype="float32")[y]
    before = _trainable(student)
    with pytest.raises(
        ValueError,
        match=r"labels have shape \(.*8?, 5\).*look "
        r"one-hot.*CategoricalCrossentropy",
    ):
        distiller.fit(x, one_hot, batch_size=8, epochs=1, verbose=0)
    _assert_unchanged(student, before)
    # Class ids of shape (B, 1) are not one-hot.
    distiller.fit(x, y[:, None], batch_size=8, epochs=1, verbose=0)


def test_empty_training_data_raise():
    # An over-filtered tf.data pipeline: its length is unknown, so Keras
    # runs the epoch, finds no batch and used to return an empty history.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.data input: TensorFlow backend only")
    import tensorflow as tf

    teacher, student = pair()
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    distiller.compile(optimizer="sgd", loss=sparse_ce())
    x, y = data(n=8)
    empty = (
        tf.data.Dataset.from_tensor_slices((x, y))
        .filter(lambda image, label: label > 100)
        .batch(4)
    )
    with pytest.raises(ValueError, match="`fit` received no batches"):
        distiller.fit(empty, epochs=2, verbose=0)


# --- the losses' own checks of the models -------------------------------------


def test_losses_check_the_models_at_construction():
    seen = []

    class Checked(L.LogitsDistillation):
        def check_models(self, teacher, student):
            seen.append((teacher.name, student.name))
            raise ValueError("checked: this pair is not supported")

    teacher, student = pair()
    with pytest.raises(ValueError, match="checked: this pair"):
        Distiller(teacher, student, [L.FitNetsHint("bn2", "bn2"), Checked()])
    assert seen == [("teacher", "student")]


# --- a distiller saved under another backend ----------------------------------


@pytest.mark.parametrize("saved_under", ["torch", "tensorflow", "jax"])
def test_compile_config_from_another_backend_trains(saved_under):
    # Keras records the backend's own optimizer class (e.g.
    # keras.src.backend.torch.optimizers.torch_adam.Adam); the Distiller
    # loads it as `keras.optimizers.Adam` of the active backend.
    modules = {
        "torch": "keras.src.backend.torch.optimizers.torch_adam",
        "tensorflow": "keras.src.backend.tensorflow.optimizer",
        "jax": "keras.optimizers",
    }
    pytest.importorskip(saved_under)
    optimizer = keras.saving.serialize_keras_object(keras.optimizers.Adam(0.01))
    optimizer["module"] = modules[saved_under]
    config = {
        "optimizer": {
            "module": "keras.optimizers",
            "class_name": "LossScaleOptimizer",
            "config": {
                "name": "lso",
                "inner_optimizer": optimizer,
                "initial_scale": 2.0,
            },
            "registered_name": "LossScaleOptimizer",
        },
        "loss": None,
    }
    teacher, student = pair()
    distiller = Distiller(teacher, student, L.LogitsDistillation())
    distiller.compile_from_config(config)
    inner = distiller.optimizer.inner_optimizer
    assert isinstance(inner, keras.optimizers.Adam)
    others = {"torch", "tensorflow", "jax"} - {keras.backend.backend()}
    module = type(inner).__module__
    assert not any(f"backend.{other}." in module for other in others), module
    x, _ = data(n=4)
    before = _trainable(student)
    distiller.fit(x, batch_size=4, epochs=1, verbose=0)
    assert any(
        not np.array_equal(a, b) for a, b in zip(_trainable(student), before)
    )
