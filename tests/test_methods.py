"""Every method of the registry in a Distiller, on the active backend.

Backend-neutral: the main run checks TensorFlow, and tests/test_backends.py
runs this module again under KERAS_BACKEND=jax and KERAS_BACKEND=torch. The
methods come from `keras_kd.losses.registry` with their default layers in
keras_kd's models (`registry.build`), so a method added later is tested here
without editing this file.
"""

import keras
import numpy as np
import pytest
from backend_utils import BACKEND
from backend_utils import to_numpy

from keras_kd import Distiller
from keras_kd.losses import registry
from keras_kd.losses import requirements
from keras_kd.models import conv_net

N = 16
CLASSES = 5
FACTS = {"num_examples": N}
METHODS = registry.names()
BATCH_LEVEL = [
    name for name in METHODS if registry.lookup(name).cls.level == "batch"
]


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 255, size=(N, 8, 8, 3)).astype("float32")
    y = rng.integers(0, CLASSES, size=(N,))
    return x, y


def _models(frozen_batch_norm=False):
    keras.utils.set_random_seed(0)
    stats = dict(mean=[0.5] * 3, std=[0.29] * 3)  # raw pixels in, as users
    teacher = conv_net((8, 8, 3), CLASSES, (8, 16), name="teacher", **stats)
    student = conv_net((8, 8, 3), CLASSES, (4, 8), name="student", **stats)
    if frozen_batch_norm:
        # Inference-mode BatchNorm: no statistics over the batch, so one
        # example cannot reach another through them.
        for layer in student.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.trainable = False
    return teacher, student


def _inputs(loss_list, x, ids=None):
    if "example_ids" in requirements(loss_list):
        ids = np.arange(len(x)) if ids is None else ids
        return {"image": x, "example_id": ids}
    return x


def _distiller(name, student_loss_weight=1.0, frozen_batch_norm=False, **kw):
    teacher, student = _models(frozen_batch_norm)
    loss = registry.build(name, stages=2, facts=FACTS, **kw)
    distiller = Distiller(
        teacher, student, [loss], student_loss_weight=student_loss_weight
    )
    return distiller, loss


def _weights(variables):
    return [to_numpy(v) for v in variables]


@pytest.mark.parametrize("name", METHODS)
def test_method_trains_leaves_the_teacher_and_lowers_its_loss(name):
    """A fixed batch, the method's loss alone: the loss goes down, the
    teacher's weights do not move, the student's do."""
    x, y = _data()
    distiller, loss = _distiller(name, student_loss_weight=0.0)
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    teacher_before = _weights(distiller.teacher.weights)
    student_before = _weights(distiller.student.trainable_weights)
    # A loss whose target moves with training (CRD's memory bank) may rise
    # for a while: compare its first and last epochs of a longer run.
    epochs = 24 if loss.moving_target else 12
    history = distiller.fit(
        _inputs([loss], x), y, batch_size=N, epochs=epochs, verbose=0
    ).history
    values = history[f"{loss.name}_loss"]
    assert np.all(np.isfinite(values)), values
    assert np.mean(values[-3:]) < np.mean(values[:3]), values
    for a, b in zip(teacher_before, _weights(distiller.teacher.weights)):
        np.testing.assert_array_equal(a, b)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(
            student_before, _weights(distiller.student.trainable_weights)
        )
    )


@pytest.mark.tensorflow_only(
    reason="the batch-level losses' weighting is backend-neutral keras.ops "
    "code, checked against float64 references on every backend "
    "(tests/losses); the Distiller's zero-weight rule on every backend: "
    "test_backend_behaviour.py"
)
@pytest.mark.parametrize("name", BATCH_LEVEL)
def test_zero_weight_example_changes_nothing_in_a_batch_level_loss(name):
    """`sample_weight` 0 removes an example from every pair (and, for CRD,
    from the memory bank's update): replacing its image and label changes
    no weight of the student, while the same change with weight 1 does."""
    x, y = _data(seed=3)
    other_x, other_y = x.copy(), y.copy()
    other_x[5] = np.random.default_rng(9).uniform(0, 255, size=x[5].shape)
    other_y[5] = (y[5] + 1) % CLASSES
    w = np.ones(N, "float32")
    w[5] = 0.0

    def train(xs, ys, weights):
        distiller, loss = _distiller(name, frozen_batch_norm=True)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.05),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        distiller.fit(
            _inputs([loss], xs),
            ys,
            sample_weight=weights,
            batch_size=N,
            epochs=1,
            verbose=0,
            shuffle=False,
        )
        return _weights(distiller.trainable_weights)

    for a, b in zip(train(x, y, w), train(other_x, other_y, w)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    ones = np.ones(N, "float32")
    assert any(
        not np.allclose(a, b)
        for a, b in zip(train(x, y, ones), train(other_x, other_y, ones))
    )


# Saving is backend-neutral Keras code: every method on TensorFlow; on JAX
# and PyTorch the methods whose state is more than weights and connectors
# (CRD's memory banks, FSP's connectors per tap).
ROUND_TRIP = (
    METHODS
    if BACKEND == "tensorflow"
    else [m for m in METHODS if m in ("crd", "fsp")]
)


@pytest.mark.parametrize("name", ROUND_TRIP)
def test_keras_file_round_trip(name, tmp_path):
    """A trained distiller saves and loads with every variable (CRD's banks
    and constants, temperatures, connectors) and predicts the same."""
    x, y = _data()
    distiller, loss = _distiller(name)
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    distiller.fit(_inputs([loss], x), y, batch_size=8, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.distillation_losses[0]) is type(loss)
    assert loaded.distillation_losses[0].get_config() == loss.get_config()
    for a, b in zip(
        _weights(distiller.weights), _weights(loaded.weights), strict=True
    ):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(
        distiller.predict(x, verbose=0),
        loaded.predict(x, verbose=0),
        rtol=1e-5,
        atol=1e-6,
    )
