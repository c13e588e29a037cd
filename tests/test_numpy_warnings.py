"""NumPy 2's `copy` keyword warning is an error in keras_kd's code and tests.

Keras 3.15's `Variable.__array__` lacks NumPy 2's `copy` argument, so
`np.array(variable)` warns on every call. The suite once printed 600+ of
these, part from its own tests. `tests/conftest.py` now makes the warning an
error wherever this project's code or tests raise it and ignores it only
where Keras raises it (saving reads each variable that way): these tests
check both halves of that rule.
"""

import warnings

import keras
import numpy as np
import pytest
from backend_utils import to_numpy

pytestmark = pytest.mark.skipif(
    np.lib.NumpyVersion(np.__version__) < "2.0.0",
    reason="the warning is NumPy 2's",
)


def test_np_array_of_a_variable_in_project_code_is_an_error():
    variable = keras.Variable(np.ones(3, "float32"))
    with pytest.raises(DeprecationWarning, match="copy keyword"):
        np.array(variable)


def test_to_numpy_reads_a_variable_without_the_warning():
    variable = keras.Variable(np.arange(3, dtype="float32"))
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        value = to_numpy(variable)
    np.testing.assert_array_equal(value, [0.0, 1.0, 2.0])


def test_the_warning_from_keras_itself_is_ignored(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.save(tmp_path / "plain.keras")
    # `pytest.warns` re-emits the warnings it does not expect, naming
    # Keras's module by its file path: still ignored.
    with pytest.warns(UserWarning, match="expected"):
        warnings.warn("expected", UserWarning)
        model.save(tmp_path / "inside_warns.keras")
    reloaded = keras.saving.load_model(tmp_path / "inside_warns.keras")
    np.testing.assert_array_equal(
        to_numpy(reloaded.weights[0]), to_numpy(model.weights[0])
    )
