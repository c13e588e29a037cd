"""keras_kd.export: SavedModel / TFLite round trips with parity, and bad input.

The student (Rescaling + RandomFlip in front, Conv-BN-ReLU, a residual Add,
16x16x3 inputs) is distilled for 3 steps from a wider teacher with
LogitsDistillation + ActivationBoundary (which builds a connector).

Tolerances: `max |export - keras| <= tol * max(1, max |keras|)` with tol 1e-5
for SavedModel and TFLite float32 (measured ~1e-7 .. 1e-6), 1e-2 for TFLite
float16 (measured ~1e-4). Quantized formats: top-1 agreement in [0, 1] and a
finite max difference; no accuracy thresholds.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import sys  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from builders import brightness_images  # noqa: E402
from builders import export_cnn  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import export as export_lib  # noqa: E402
from keras_kd.export import export_student  # noqa: E402
from keras_kd.export import load_interpreter  # noqa: E402
from keras_kd.export import student as student_module  # noqa: E402
from keras_kd.export import tflite_predict  # noqa: E402

# One pytest-xdist worker runs this module: its fixtures train once.
pytestmark = pytest.mark.xdist_group("export")

TFLITE_FORMATS = (
    "tflite_float32",
    "tflite_float16",
    "tflite_dynamic_int8",
    "tflite_int8",
)


@pytest.fixture(scope="module")
def setup():
    keras.utils.set_random_seed(0)
    teacher = export_cnn(48, "t_", "teacher")
    student = export_cnn(16, "s_", "student")
    distiller = keras_kd.Distiller(
        teacher,
        student,
        [
            keras_kd.losses.LogitsDistillation(temperature=4.0),
            keras_kd.losses.ActivationBoundary("t_relu1", "s_relu1"),
        ],
    )
    distiller.compile(
        optimizer=keras.optimizers.Adam(1e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = brightness_images(96, seed=1)
    distiller.fit(x.astype("float32"), y, batch_size=32, epochs=1, verbose=0)
    assert distiller.distillation_losses[1].connectors  # a connector exists
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    x_check = brightness_images(16, seed=2)[0].astype("float32")
    return distiller, data, x_check


@pytest.fixture(scope="module")
def exports(setup, tmp_path_factory):
    distiller, data, x_check = setup
    root = tmp_path_factory.mktemp("exports")
    results = {}
    for fmt in ("saved_model",) + TFLITE_FORMATS:
        suffix = "" if fmt == "saved_model" else ".tflite"
        results[fmt] = export_student(
            distiller,
            root / f"{fmt}{suffix}",
            format=fmt,
            representative_data=data,
            num_calibration_batches=3,
            check_data=x_check,
        )
    return results


def _keras(student, x):
    return keras.ops.convert_to_numpy(student(x, training=False))


# --- round trips -----------------------------------------------------------


def test_saved_model_round_trip_and_signature(setup, exports):
    distiller, _, x_check = setup
    result = exports["saved_model"]
    assert result.format == "saved_model" and os.path.isdir(result.path)
    assert result.passed and result.tolerance == 1e-5
    assert result.max_abs_diff <= 1e-5 and result.top1_agreement == 1.0
    assert result.num_check_examples == 16 and result.size_bytes > 0
    serve = tf.saved_model.load(result.path).signatures["serving_default"]
    assert list(serve.structured_input_signature[1]) == ["inputs"]
    out = serve(inputs=tf.constant(x_check))["output_0"].numpy()
    np.testing.assert_allclose(
        out, _keras(distiller.student, x_check), atol=1e-5
    )


def test_saved_model_holds_student_variables_only(setup, exports):
    distiller, _, _ = setup
    loaded = tf.saved_model.load(exports["saved_model"].path)

    def shapes(variables):
        return sorted((v.name.split(":")[0], tuple(v.shape)) for v in variables)

    def path(v):
        return getattr(v, "path", v.name)

    assert shapes(loaded.variables) == sorted(
        (path(v), tuple(v.shape)) for v in distiller.student.variables
    )
    names = " ".join(v.name for v in loaded.variables)
    assert "t_" not in names and "connector" not in names
    params = sum(
        int(np.prod(v.shape)) for v in loaded.variables if v.dtype != tf.int64
    )
    assert params == sum(
        int(np.prod(v.shape)) for v in distiller.student.weights
    )


@pytest.mark.parametrize("fmt", ["tflite_float32", "tflite_float16"])
def test_tflite_float_parity(setup, exports, fmt):
    distiller, _, _ = setup
    result = exports[fmt]
    assert result.passed
    assert result.tolerance == export_lib.DEFAULT_TOLERANCES[fmt]
    assert result.max_abs_diff <= result.tolerance
    # Fresh data, straight through the interpreter.
    x = brightness_images(8, seed=3)[0].astype("float32")
    out = tflite_predict(load_interpreter(result.path), x)
    np.testing.assert_allclose(
        out, _keras(distiller.student, x), atol=result.tolerance
    )


@pytest.mark.parametrize("fmt", ["tflite_dynamic_int8", "tflite_int8"])
def test_tflite_int8_holds_int8_tensors(setup, exports, fmt):
    distiller, _, x_check = setup
    result = exports[fmt]
    assert result.passed is None and result.tolerance is None
    assert 0.0 <= result.top1_agreement <= 1.0
    assert np.isfinite(result.max_abs_diff)
    interpreter = load_interpreter(result.path)
    dtypes = {np.dtype(d["dtype"]) for d in interpreter.get_tensor_details()}
    assert np.dtype("int8") in dtypes
    if fmt == "tflite_int8":
        assert np.dtype("float32") not in dtypes
        inp = interpreter.get_input_details()[0]
        out = interpreter.get_output_details()[0]
        assert inp["dtype"] == np.int8 and out["dtype"] == np.int8
        assert result.input_quantization == (
            pytest.approx(inp["quantization"][0]),
            inp["quantization"][1],
        )
        # Manual (de)quantization as documented matches tflite_predict.
        scale, zero_point = result.input_quantization
        q = np.clip(np.round(x_check / scale + zero_point), -128, 127)
        interpreter.resize_tensor_input(inp["index"], list(x_check.shape))
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], q.astype(np.int8))
        interpreter.invoke()
        scale, zero_point = result.output_quantization
        manual = (
            interpreter.get_tensor(out["index"]).astype(np.float32) - zero_point
        ) * scale
        expected = _keras(distiller.student, x_check)
        assert np.max(np.abs(manual - expected)) == pytest.approx(
            result.max_abs_diff, rel=1e-5, abs=1e-6
        )
    else:
        assert result.input_quantization is None


def test_no_teacher_in_tflite(setup, exports):
    distiller, _, _ = setup
    student_bytes = 4 * distiller.student.count_params()
    teacher_bytes = 4 * distiller.teacher.count_params()
    size = exports["tflite_float32"].size_bytes
    assert size < student_bytes + 16_000 < teacher_bytes
    assert exports["tflite_int8"].size_bytes < size


def test_preprocessing_rescaling_kept_random_flip_dropped(setup, exports):
    distiller, _, _ = setup
    interpreter = load_interpreter(exports["tflite_float32"].path)
    x = brightness_images(8, seed=4)[0].astype("float32")
    flipped = x[:, :, ::-1, :]
    for batch in (x, flipped):  # no flip inside: each matches inference mode
        np.testing.assert_allclose(
            tflite_predict(interpreter, batch),
            _keras(distiller.student, batch),
            atol=1e-5,
        )
    # Rescaling is inside the export: [0, 1] inputs give other outputs.
    assert not np.allclose(
        tflite_predict(interpreter, x / 255),
        tflite_predict(interpreter, x),
        atol=1e-3,
    )
    # Deterministic across calls.
    np.testing.assert_array_equal(
        tflite_predict(interpreter, x), tflite_predict(interpreter, x)
    )


@pytest.mark.parametrize(
    "augmentation",
    [
        lambda: keras.layers.RandomRotation(0.2),
        lambda: keras.layers.RandomZoom(0.2),
        lambda: keras.layers.RandomContrast(0.3),
        lambda: keras.layers.RandomCrop(12, 12),
    ],  # inference: resize + center crop
    ids=["RandomRotation", "RandomZoom", "RandomContrast", "RandomCrop"],
)
def test_augmentation_layers_export_as_inference(tmp_path, augmentation):
    inputs = keras.Input((16, 16, 3))
    x = augmentation()(keras.layers.Rescaling(1 / 255)(inputs))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(x))
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    x_check = brightness_images(4, seed=7)[0].astype("float32")
    result = export_student(
        model,
        tmp_path / "m.tflite",
        format="tflite_float32",
        check_data=x_check,
        verbose=False,
    )
    assert result.passed  # builtin ops only, equal to training=False


def test_plain_student_and_random_check_data(setup, tmp_path, capsys):
    distiller, _, _ = setup
    result = export_student(
        distiller.student, tmp_path / "m.tflite", format="tflite_float32"
    )
    assert result.passed and result.check_data_source.startswith("random")
    assert "tflite_float32" in capsys.readouterr().out


def test_held_out_representative_batch(setup, tmp_path):
    distiller, data, _ = setup
    result = export_student(
        distiller,
        tmp_path / "m.tflite",
        format="tflite_int8",
        representative_data=data,
        num_calibration_batches=2,
        verbose=False,
    )
    assert result.check_data_source == "held-out representative batch"
    assert result.num_check_examples == 16


def test_interpreter_fallback_without_litert(setup, exports, monkeypatch):
    path = exports["tflite_float32"].path
    x = brightness_images(4, seed=5)[0].astype("float32")
    default = load_interpreter(path)
    try:
        import ai_edge_litert  # noqa: F401

        assert type(default).__module__.startswith("ai_edge_litert")
    except ImportError:
        assert type(default).__module__.startswith("tensorflow")
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    fallback = load_interpreter(path)
    assert type(fallback).__module__.startswith("tensorflow")
    np.testing.assert_allclose(
        tflite_predict(fallback, x), tflite_predict(default, x), atol=1e-6
    )


# --- bad input ---------------------------------------------------------------


def test_unbuilt_model(tmp_path):
    model = keras.Sequential([keras.layers.Dense(3)], name="unbuilt")
    with pytest.raises(ValueError, match="'unbuilt' is not built"):
        export_student(model, tmp_path / "m")
    with pytest.raises(TypeError, match="received str 'model.h5'"):
        export_student("model.h5", tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="missing.keras"):
        export_student(str(tmp_path / "missing.keras"), tmp_path / "m")


def test_unknown_format(setup, tmp_path):
    with pytest.raises(ValueError, match="Did you mean 'tflite_int8'"):
        export_student(setup[0], tmp_path / "m", format="tflite-int8")


def test_existing_path_refused_unless_overwrite(setup, exports, tmp_path):
    target = tmp_path / "m.tflite"
    old = open(exports["tflite_int8"].path, "rb").read()  # a TFLite file
    target.write_bytes(old)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_student(setup[0], target, format="tflite_float32")
    assert target.read_bytes() == old
    result = export_student(
        setup[0], target, format="tflite_float32", overwrite=True, verbose=False
    )
    assert result.passed and target.read_bytes() != old
    assert sorted(os.listdir(tmp_path)) == ["m.tflite"]


def test_bad_representative_data(setup, tmp_path):
    distiller, data, _ = setup
    target = tmp_path / "m.tflite"
    with pytest.raises(ValueError, match=r"\(None, 16, 16, 3\)"):
        export_student(
            distiller,
            target,
            format="tflite_int8",
            representative_data=np.zeros((8, 8, 8, 3), "float32"),
        )
    with pytest.raises(ValueError, match=r"\.batch\(32\)"):
        export_student(
            distiller,
            target,
            format="tflite_int8",
            representative_data=data.unbatch(),
        )
    with pytest.raises(TypeError, match="dtype"):
        export_student(
            distiller,
            target,
            format="tflite_int8",
            representative_data=[np.full((2, 16, 16, 3), "a")],
        )
    with pytest.raises(ValueError, match="needs `representative_data`"):
        export_student(distiller, target, format="tflite_int8")
    with pytest.raises(ValueError, match="check_data"):
        export_student(
            distiller,
            target,
            format="tflite_float32",
            check_data=np.zeros((2, 3), "float32"),
        )
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("fmt", ["saved_model", "tflite_int8"])
def test_failure_leaves_target_untouched(setup, tmp_path, monkeypatch, fmt):
    distiller, data, _ = setup

    def fail(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(student_module, "check_parity", fail)
    target = tmp_path / "m"
    with pytest.raises(RuntimeError, match="boom"):
        export_student(
            distiller,
            target,
            format=fmt,
            representative_data=data,
            num_calibration_batches=1,
        )
    assert os.listdir(tmp_path) == []  # no target, no temporary sibling
    # An old artifact of the same kind (what overwrite may replace).
    content = b"\x1c\0\0\0TFL3 old"
    if fmt == "saved_model":
        target.mkdir()
        old = target / "saved_model.pb"
    else:
        old = target
    old.write_bytes(content)
    with pytest.raises(RuntimeError, match="boom"):
        export_student(
            distiller,
            target,
            format=fmt,
            overwrite=True,
            representative_data=data,
            num_calibration_batches=1,
        )
    assert old.read_bytes() == content
    assert os.listdir(tmp_path) == ["m"]


# --- command line ----------------------------------------------------------


def test_export_command(setup, tmp_path, capsys):
    distiller, _, _ = setup
    model_path = tmp_path / "distiller.keras"
    distiller.save(model_path)
    x, _ = brightness_images(48, seed=6)
    npz = tmp_path / "data.npz"
    np.savez(npz, x_train=x, x_test=x[:8])
    out = tmp_path / "student.tflite"
    argv = [
        str(model_path),
        str(out),
        "--format",
        "tflite_int8",
        "--representative-data",
        str(npz),
        "--calibration-batches",
        "2",
        "--batch-size",
        "16",
    ]
    assert export_lib.export_command(argv) == 0
    assert out.is_file() and "tflite_int8" in capsys.readouterr().out
    assert export_lib.export_command(argv) == 1  # exists, no --overwrite
    assert "overwrite" in capsys.readouterr().err
    assert export_lib.export_command(argv + ["--overwrite", "--quiet"]) == 0
    assert (
        export_lib.export_command(
            [str(model_path), str(out), "--format", "onnx"]
        )
        == 2
    )
    np.savez(npz, images=x)
    assert export_lib.export_command(argv + ["--overwrite"]) == 1
    assert "x_train" in capsys.readouterr().err
