"""A procedure adds inputs, variables, terms and an optimizer of its own.

Backend-neutral (tests/test_backends.py runs it under JAX and PyTorch too).
The procedure here is a toy; the point is what the Distiller lets a
procedure do without any change to `keras_kd/distiller.py`.
"""

import warnings

import keras
import numpy as np
import pytest
from backend_utils import to_numpy

from keras_kd import Distiller
from keras_kd import callbacks
from keras_kd import losses as L
from keras_kd.models import conv_net
from keras_kd.procedures import Procedure


class _StepAuxiliary(keras.callbacks.Callback):
    """Steps the procedure's own model, with its own optimizer."""

    def __init__(self, procedure):
        super().__init__()
        self.procedure = procedure

    def on_train_batch_end(self, batch, logs=None):
        x = np.ones((4, 3), "float32")
        self.procedure.auxiliary.train_on_batch(x, np.zeros((4, 1)))


@keras.saving.register_keras_serializable(package="keras_kd_tests")
class OffsetMatching(Procedure):
    """Toy: the student's mean logit, scaled by a trained variable, should
    match a per-example offset given as a side input."""

    side_inputs = ("offset",)
    term_names = ("offset_matching",)

    def configure(self, distiller):
        self.scale = self.add_weight(
            name="scale", shape=(), initializer="ones", trainable=True
        )
        self.seen = self.add_weight(
            name="seen", shape=(), initializer="zeros", trainable=False
        )
        self.auxiliary = keras.Sequential(
            [keras.Input((3,)), keras.layers.Dense(1)], name="auxiliary"
        )
        self.auxiliary.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")

    def default_term_weights(self):
        return {"offset_matching": 0.5}

    def terms(self, context):
        ops = keras.ops
        offset = ops.cast(context.side_inputs["offset"], "float32")
        logits = ops.mean(context.student[0], axis=-1)
        per_example = ops.square(self.scale * logits - offset)
        if context.training:
            self.seen.assign(
                self.seen + ops.cast(context.batch_size, "float32")
            )
        return {
            "offset_matching": ops.sum(per_example) / context.global_batch_size
        }

    def callbacks(self):
        return [_StepAuxiliary(self)]

    def separately_trained(self):
        return [self.auxiliary]


def _data(n=16):
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, size=(n, 8, 8, 3)).astype("float32")
    return x, rng.integers(0, 5, size=(n,)), rng.normal(size=(n,)) + 3.0


def _distiller():
    keras.utils.set_random_seed(0)
    teacher = conv_net((8, 8, 3), 5, (8, 16), name="teacher")
    student = conv_net((8, 8, 3), 5, (4, 8), name="student")
    distiller = Distiller(
        teacher,
        student,
        [L.LogitsDistillation()],
        procedures=[OffsetMatching(name="offset")],
    )
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return distiller


def test_a_procedure_reads_its_input_trains_its_variables_and_its_model():
    distiller = _distiller()
    procedure = distiller.procedures[0]
    x, y, offset = _data()
    auxiliary_before = [to_numpy(w) for w in procedure.auxiliary.weights]
    # The Distiller's optimizer does not see the auxiliary model (Keras
    # would warn that it gets no gradient).
    assert not {id(v) for v in procedure.auxiliary.weights} & {
        id(v)
        for v in distiller.trainable_variables
        + distiller.non_trainable_variables
    }
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        history = distiller.fit(
            {"image": x, "offset": offset},
            y,
            batch_size=8,
            epochs=2,
            verbose=0,
            callbacks=callbacks.for_distiller(distiller),
        ).history
    # The term is weighted, logged and in the total.
    assert distiller.loss_weights["offset_matching"] == 0.5
    assert np.all(np.isfinite(history["offset_matching_loss"]))
    assert (
        history["offset_matching_loss"][1] < history["offset_matching_loss"][0]
    )
    # Its trainable variable trains through the Distiller's optimizer, its
    # other variable counts the examples it saw.
    assert float(to_numpy(procedure.scale)) != 1.0
    assert float(to_numpy(procedure.seen)) == 32.0
    assert int(to_numpy(distiller.optimizer.iterations)) == 4
    # Its own model trains with its own optimizer, once per batch.
    assert int(to_numpy(procedure.auxiliary.optimizer.iterations)) == 4
    assert any(
        not np.array_equal(a, to_numpy(b))
        for a, b in zip(auxiliary_before, procedure.auxiliary.weights)
    )
    # The networks never see the side input: prediction takes the images.
    assert distiller.predict(x, verbose=0).shape == (16, 5)


def test_a_procedure_is_saved_with_the_distiller(tmp_path):
    distiller = _distiller()
    x, y, offset = _data()
    distiller.fit(
        {"image": x, "offset": offset}, y, batch_size=8, epochs=1, verbose=0
    )
    path = str(tmp_path / "d.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.procedures[0]) is OffsetMatching
    np.testing.assert_array_equal(
        to_numpy(loaded.procedures[0].scale),
        to_numpy(distiller.procedures[0].scale),
    )
    assert loaded.loss_weights == distiller.loss_weights


def test_term_names_may_not_collide():
    class Clash(Procedure):
        term_names = ("logits_distillation",)

    teacher = conv_net((8, 8, 3), 5, (8, 16), name="teacher")
    student = conv_net((8, 8, 3), 5, (4, 8), name="student")
    with pytest.raises(ValueError, match="'logits_distillation'.*Rename"):
        Distiller(
            teacher, student, [L.LogitsDistillation()], procedures=[Clash()]
        )
    with pytest.raises(TypeError, match="keras_kd.procedures.Procedure"):
        Distiller(teacher, student, [L.LogitsDistillation()], procedures=[1])
