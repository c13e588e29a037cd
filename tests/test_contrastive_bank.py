"""CRD in a Distiller: example ids, the memory bank, the negatives.

Backend-neutral (tests/test_backends.py runs it under JAX and PyTorch too).
"""

import keras
import numpy as np
import pytest
from backend_utils import to_numpy
from test_methods import N
from test_methods import _data
from test_methods import _distiller
from test_methods import _weights

from keras_kd import losses as L


def _crd(**kw):
    return _distiller("crd", **kw)


def test_crd_without_example_ids_fails_before_training_and_says_how():
    x, y = _data()
    distiller, _ = _crd()
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    before = _weights(distiller.student.weights)
    with pytest.raises(ValueError, match="example_id") as error:
        distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert "np.arange(len(x))" in str(error.value)
    assert "with_example_ids" in str(error.value)
    for a, b in zip(before, _weights(distiller.student.weights)):
        np.testing.assert_array_equal(a, b)


def test_crd_updates_the_rows_of_the_batch_only_and_evaluates_without_ids():
    x, y = _data()
    distiller, loss = _crd()
    distiller.compile(
        optimizer="sgd",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    banks = [to_numpy(loss.student_bank), to_numpy(loss.teacher_bank)]
    ids = np.arange(N)[::-1]  # example i is row N - 1 - i
    distiller.fit(
        {"image": x[:4], "example_id": ids[:4]},
        y[:4],
        batch_size=4,
        epochs=1,
        verbose=0,
    )
    for before, bank in zip(banks, (loss.student_bank, loss.teacher_bank)):
        after = to_numpy(bank)
        changed = np.flatnonzero(np.any(after != before, axis=1))
        assert sorted(changed) == sorted(ids[:4])
        np.testing.assert_allclose(
            np.linalg.norm(after[changed], axis=1), 1.0, rtol=1e-5
        )
    assert np.all(to_numpy(loss.normalizers) > 0)
    banks = [to_numpy(loss.student_bank), to_numpy(loss.teacher_bank)]
    logs = distiller.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert logs["contrastive_representation_loss"] == 0.0
    np.testing.assert_array_equal(banks[0], to_numpy(loss.student_bank))
    np.testing.assert_array_equal(banks[1], to_numpy(loss.teacher_bank))


def test_crd_other_class_negatives_come_from_other_classes():
    _, y = _data()
    distiller, loss = _crd(negatives="other_class", example_labels=y)
    assert loss.num_negatives == N - np.bincount(y).max()
    ids = keras.ops.convert_to_tensor(np.arange(N, dtype="int32"))
    negatives = to_numpy(loss._negative_ids(ids))
    assert negatives.shape == (N, loss.num_negatives)
    assert np.all(y[negatives] != y[:, None])
    # Every example of another class is drawn (uniform over them).
    many = np.concatenate(
        [to_numpy(loss._negative_ids(ids))[0] for _ in range(20)]
    )
    assert set(many) == set(np.flatnonzero(y != y[0]))


def test_crd_default_negatives_are_what_the_data_set_can_give():
    assert (
        L.ContrastiveRepresentation(
            "pool", "pool", num_examples=5000
        ).num_negatives
        == 4999
    )
    assert (
        L.ContrastiveRepresentation(
            "pool", "pool", num_examples=50000
        ).num_negatives
        == L.contrastive.OFFICIAL_NEGATIVES
    )
