"""`export_student`: checks, builds, compares and moves the artifact into place.

The steps, each in its module: where it may write (`files`: the overwrite
rule, the recovery of killed exports, the locked work directory and the
final atomic move), the calibration and check batches and the build
(`convert`), the input-range check (`input_range`), and the comparison with
the Keras student (`parity`).
"""

import dataclasses
import difflib
import os
import warnings

import keras

from keras_kd.export.base import FORMATS
from keras_kd.export.base import ExportWarning
from keras_kd.export.convert import build
from keras_kd.export.convert import calibration_and_check
from keras_kd.export.convert import input_spec
from keras_kd.export.files import check_replaceable
from keras_kd.export.files import move_into_place
from keras_kd.export.files import protect
from keras_kd.export.files import recover_interrupted
from keras_kd.export.files import target_path
from keras_kd.export.files import work_directory
from keras_kd.export.input_range import input_range_warning
from keras_kd.export.parity import check_parity


def export_student(
    model,
    path,
    *,
    format="saved_model",
    representative_data=None,
    num_calibration_batches=100,
    check_data=None,
    tolerance=None,
    overwrite=False,
    verbose=True,
):
    """Exports a student to a SavedModel or a TFLite/LiteRT flatbuffer.

    Formats: `"saved_model"` (a directory; `serving_default` signature takes
    `inputs`, float32 `(batch, *input_shape)`, and returns `output_0`);
    `"tflite_float32"`; `"tflite_float16"` (float16 weights, float32 I/O);
    `"tflite_dynamic_int8"` (int8 weights of tensors with at least 1024
    elements, float32 I/O); `"tflite_int8"` (full integer: int8 weights,
    activations, input and output, calibrated on `num_calibration_batches`
    batches of `representative_data`; see `ExportResult.input_quantization`).
    TFLite models have the same `serving_default` signature and a dynamic
    batch size. The artifact is built in a temporary sibling of `path`,
    checked, and only then moved to `path`; a failure leaves `path` as it was.

    Overwrite rule: an existing `path` is replaced only when it is what an
    export of this kind writes: a TFLite flatbuffer file (identifier `TFL3`)
    for TFLite formats, a SavedModel directory (`saved_model.pb[txt]` plus
    only `variables/`, `assets/`, `assets.extra/`, `fingerprint.pb`,
    `keras_metadata.pb`) for `"saved_model"`; never a symbolic link. Anything
    else (an empty path, `/`, the home or current directory or a directory
    containing them, any other file or directory) raises `ValueError`
    whatever `overwrite` says. A file is replaced with one atomic rename; a
    SavedModel directory with an atomic swap on Linux, else two renames whose
    interruption the next export to `path` repairs (see the `keras_kd.export`
    docstring).

    Runs under the TensorFlow backend. For a model trained under JAX or
    PyTorch, save it as `.keras` there and pass that path here.

    Args:
        model: a `keras_kd.Distiller` (its `.student` is exported), a built
            single-input, single-output `keras.Model`, or the path of a
            `.keras` file of either (e.g. saved under JAX or PyTorch).
        path: target file (`.tflite`) or directory (SavedModel).
        format: one of `FORMATS`. Defaults to `"saved_model"`.
        representative_data: batches of inputs shaped like the model input: a
            `tf.data.Dataset` (elements `x` or `(x, y, ...)`), an iterable of
            batches or one array of examples (split into batches of 32).
            Required for `"tflite_int8"`. Use the pipeline you train on,
            before augmentation. Defaults to `None`.
        num_calibration_batches: batches of `representative_data` used to
            calibrate `"tflite_int8"`; the next one is held out as check
            data. Defaults to `100`.
        check_data: a batch (array, or `(x, y)`, or a dataset whose first
            batch is used) on which the export is compared with the student.
            Defaults to a held-out batch of `representative_data`, else 8
            random uniform examples in `[0, 1)`.
        tolerance: tolerance of a float format (see the `keras_kd.export`
            docstring).
            Defaults to `DEFAULT_TOLERANCES[format]` (1e-5 for SavedModel
            and TFLite float32, 1e-2 for float16).
        overwrite: replace an existing `path` that the overwrite rule above
            allows. Defaults to `False`.
        verbose: print `ExportResult.summary()`. Defaults to `True`.

    Returns:
        An `ExportResult`. A float format that misses its tolerance emits a
        warning and returns `passed=False`. Data that look unlike the
        model's training inputs emit a warning (`result.data_warning`; see
        `input_range_warning`).

    Raises:
        TypeError: `model` is not a Keras model or a `.keras` path;
            `representative_data` has a non-numeric dtype.
        ValueError: unknown format, unbuilt model, several inputs/outputs,
            missing or wrongly shaped `representative_data`; a `path` that
            the overwrite rule refuses.
        FileExistsError: `path` is a replaceable artifact and
            `overwrite=False`.
        RuntimeError: the Keras backend is not TensorFlow.
        ImportError: TensorFlow is not installed.

    Example:

    ```python
    import keras, numpy as np, tensorflow as tf
    from keras_kd.export import export_student, load_interpreter, tflite_predict

    student = keras.Sequential([keras.Input((16, 16, 3)),
                                keras.layers.Rescaling(1 / 255),
                                keras.layers.Conv2D(8, 3, activation="relu"),
                                keras.layers.GlobalAveragePooling2D(),
                                keras.layers.Dense(10)])
    images = np.random.randint(0, 256, (64, 16, 16, 3)).astype("float32")
    data = tf.data.Dataset.from_tensor_slices(images).batch(16)
    result = export_student(student, "student_int8.tflite",
                            format="tflite_int8", representative_data=data,
                            num_calibration_batches=3, overwrite=True)
    interpreter = load_interpreter(result.path)
    logits = tflite_predict(interpreter, images[:4])  # (4, 10) float32
    ```
    """
    fmt = _check_format(format)
    path = target_path(path)
    _check_backend()
    student = _student_of(model)
    protect(path)
    recover_interrupted(path)
    if os.path.lexists(path):
        check_replaceable(path, fmt)
        if not overwrite:
            raise FileExistsError(
                f"'{path}' already exists. Pass overwrite=True to replace it, "
                "or choose another path."
            )
    spec = input_spec(student)
    _check_options(fmt, representative_data, num_calibration_batches, tolerance)
    calibration, x_check, source = calibration_and_check(
        student.name,
        spec,
        fmt,
        representative_data,
        num_calibration_batches,
        check_data,
    )
    data_warning = None
    if check_data is not None or calibration:
        data_warning = input_range_warning(student, [x_check] + calibration[:4])
        if data_warning:
            warnings.warn(data_warning, ExportWarning, stacklevel=2)

    with work_directory(path) as work:
        artifact = build(student, spec, fmt, calibration, work)
        result = check_parity(
            student, artifact, fmt, x_check, source, tolerance
        )
        move_into_place(artifact, path, work)
    result = dataclasses.replace(result, path=path, data_warning=data_warning)
    if verbose:
        print(result.summary())
    if result.passed is False:
        warnings.warn(
            f"The {fmt} export of '{student.name}' differs from the Keras "
            f"model by {result.max_abs_diff:.3g}, above the tolerance "
            f"{result.tolerance:g} (scaled by max(1, max |output|)).",
            stacklevel=2,
        )
    return result


def _check_options(
    fmt, representative_data, num_calibration_batches, tolerance
):
    """Raises ValueError for a bad count, tolerance or missing int8 data."""
    if (
        not isinstance(num_calibration_batches, int)
        or num_calibration_batches < 1
    ):
        raise ValueError(
            "`num_calibration_batches` must be an int >= 1; received "
            f"{num_calibration_batches!r}."
        )
    if tolerance is not None and not (
        isinstance(tolerance, (int, float)) and tolerance >= 0
    ):
        raise ValueError(
            f"`tolerance` must be a number >= 0; received {tolerance!r}."
        )
    if fmt == "tflite_int8" and representative_data is None:
        raise ValueError(
            "format='tflite_int8' needs `representative_data` to calibrate "
            "activation ranges: pass your input pipeline, e.g. "
            "`tf.data.Dataset.from_tensor_slices(x_train).batch(32)`."
        )


def _check_backend():
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise RuntimeError(
            "export_student traces the model with TensorFlow and runs under "
            f"the TensorFlow backend; this process uses '{backend}'. Save the "
            "model trained here (`model.save('student.keras')`), then export "
            "it in a process started with KERAS_BACKEND=tensorflow: "
            "`export_student('student.keras', ...)` or `keras-kd export "
            "student.keras student.tflite --format tflite_float32`."
        )


def _student_of(model):
    from keras_kd.distiller import Distiller

    if isinstance(model, (str, os.PathLike)):
        name = os.fspath(model)
        if not name.endswith(".keras"):
            raise TypeError(
                "export_student exports a `keras_kd.Distiller` (its student), "
                "a `keras.Model`, or the path of a `.keras` file; received "
                f"{type(model).__name__} {name!r}."
            )
        if not os.path.isfile(name):
            raise FileNotFoundError(f"No .keras file at '{name}'.")
        model = keras.saving.load_model(name, compile=False)
    if isinstance(model, Distiller):
        return model.student
    if not isinstance(model, keras.Model):
        raise TypeError(
            "export_student exports a `keras_kd.Distiller` (its student), a "
            "`keras.Model`, or the path of a `.keras` file; received "
            f"{type(model).__name__}."
        )
    return model


def _check_format(fmt):
    if fmt in FORMATS:
        return fmt
    close = difflib.get_close_matches(str(fmt), FORMATS, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ValueError(
        f"Unknown export format {fmt!r}; expected one of {list(FORMATS)}.{hint}"
    )
