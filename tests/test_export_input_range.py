"""export warns when calibration/check data look unlike the training inputs.

The case to catch: a student trained on inputs normalised outside the model,
exported with raw 0..255 pixels as calibration and check data. The only
record of the training inputs in the model is BatchNormalization's moving
statistics, which `input_range_warning` compares with what its first
BatchNormalization layer sees on the given data.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import warnings  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_kd import export as export_lib  # noqa: E402
from keras_kd.export import ExportWarning  # noqa: E402
from keras_kd.export import export_student  # noqa: E402
from keras_kd.export import input_range_warning  # noqa: E402

# One pytest-xdist worker runs this module: its fixture trains once.
pytestmark = pytest.mark.xdist_group("export_input_range")


def _pixels(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(120, 50, size=(n, 8, 8, 3))
    return np.clip(x, 0, 255).astype("uint8").astype("float32")


MEAN, STD = 120 / 255, 50 / 255


def _normalised(x):
    return (x / 255 - MEAN) / STD


def _student(rescale=False, nested=False):
    keras.utils.set_random_seed(0)
    body = [
        keras.layers.Conv2D(8, 3),
        keras.layers.BatchNormalization(momentum=0.5),
        keras.layers.ReLU(),
    ]
    if nested:
        body = [keras.Sequential(body, name="block")]
    front = [keras.layers.Rescaling(1 / 255)] if rescale else []
    return keras.Sequential(
        [keras.Input((8, 8, 3))]
        + front
        + body
        + [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(4)],
        name="student",
    )


def _trained(x, **kwargs):
    model = _student(**kwargs)
    model.compile(optimizer="sgd", loss="mse")
    model.fit(
        x, np.zeros((len(x), 4), "float32"), batch_size=16, epochs=2, verbose=0
    )  # 16 steps: the moving statistics have converged
    return model


@pytest.fixture(scope="module")
def normalised_student():
    """Trained on inputs normalised outside the model (keras-kd's main job)."""
    return _trained(_normalised(_pixels(128, 0)))


def test_raw_pixels_for_a_normalised_student_warn(normalised_student, tmp_path):
    raw = _pixels(64, 1)
    with pytest.warns(ExportWarning, match="unlike what 'student' was trained"):
        result = export_student(
            normalised_student,
            tmp_path / "m.tflite",
            format="tflite_float32",
            representative_data=raw,
            verbose=False,
        )
    assert "raw 0..255 pixels" in result.data_warning
    # The parity check passes all the same: it cannot see this by itself.
    assert result.passed


def test_data_preprocessed_as_in_training_do_not_warn(
    normalised_student, tmp_path
):
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        result = export_student(
            normalised_student,
            tmp_path / "m.tflite",
            format="tflite_float32",
            representative_data=_normalised(_pixels(64, 1)),
            verbose=False,
        )
    assert result.data_warning is None


def test_prescaled_data_for_a_model_that_rescales_warn():
    model = _trained(_pixels(128, 0), rescale=True)  # Rescaling inside
    assert input_range_warning(model, [_pixels(32, 1)]) is None
    text = input_range_warning(model, [_pixels(32, 1) / 255])
    assert text and "standard deviation is 0.00" in text


def test_nested_batch_normalization_is_found():
    model = _trained(_normalised(_pixels(128, 0)), nested=True)
    assert input_range_warning(model, [_normalised(_pixels(32, 1))]) is None
    assert input_range_warning(model, [_pixels(32, 1)]) is not None
    # The layers' own `call` is back in place afterwards.
    assert "call" not in vars(model.get_layer("block").layers[1])


def test_nothing_to_compare_with_gives_no_warning():
    untrained = _student()  # moving statistics at their initial values
    assert input_range_warning(untrained, [_pixels(8, 1)]) is None
    no_bn = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    assert input_range_warning(no_bn, [np.full((4, 4), 1e4, "float32")]) is None


def test_command_line_prints_the_warning(normalised_student, tmp_path, capsys):
    model_path = tmp_path / "student.keras"
    normalised_student.save(model_path)
    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=_pixels(64, 2).astype("uint8"))
    argv = [
        str(model_path),
        str(tmp_path / "m.tflite"),
        "--format",
        "tflite_float32",
        "--representative-data",
        str(npz),
    ]
    assert export_lib.export_command(argv) == 0
    err = capsys.readouterr().err
    assert "keras-kd export: warning:" in err and "raw 0..255 pixels" in err
