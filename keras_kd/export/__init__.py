"""Shipping the student: SavedModel and TFLite/LiteRT export, parity measured.

`export_student` writes only the student (`distiller.student`): the teacher
and the connectors inside the distillation losses never enter an export. The
model is traced once with `training=False`, so BatchNormalization uses its
moving statistics and the training-only augmentation layers are identities.

Preprocessing layers in front of the student:

- Kept (they compute something at inference): `Rescaling`, `Normalization`,
  `Resizing`, `CenterCrop`, and `RandomCrop`, which at inference resizes and
  center-crops to its target size (a deterministic op, not a random one).
- Dropped (identity at inference; nothing of them reaches the graph):
  `RandomFlip`, `RandomRotation`, `RandomZoom`, `RandomTranslation`,
  `RandomContrast`, `RandomBrightness`, `RandomGrayscale`, `RandomErasing`,
  `RandAugment`, `AugMix`, `MixUp`, `CutMix` (each checked with Keras 3.15).

Note that calling a Keras model *without* `training=` while it contains an
augmentation layer runs the whole model in training mode (augmentations on,
BatchNormalization on batch statistics), and plain `model.export()` traces it
that way; `export_student` always passes `training=False`.

After writing, the artifact is loaded back and run on a check batch (the
user's `check_data`, else a batch of `representative_data` held out from
calibration, else random uniform inputs in `[0, 1)`), and compared with
`student(x, training=False)`. Float formats pass when
`max |export - keras| <= tolerance * max(1, max |keras|)`; quantized formats
report the largest difference and the top-1 agreement.

What `overwrite=True` may replace (the rule is the same for
`keras-kd export --overwrite`): only what an export writes, and only of the
kind being written.

- TFLite formats replace a regular file (not a symbolic link) whose content
  is a TFLite flatbuffer (the identifier `TFL3` at bytes 4..8), with one
  atomic `os.replace`: at every instant `path` holds the old or the new file.
- `"saved_model"` replaces a directory (not a symbolic link) holding
  `saved_model.pb` or `saved_model.pbtxt` and nothing but what a SavedModel
  holds: `variables/` (only `variables.index` and `variables.data-*`),
  `assets/`, `assets.extra/`, `fingerprint.pb`, `keras_metadata.pb`. On
  Linux the two directories are swapped atomically (`renameat2` with
  `RENAME_EXCHANGE`); elsewhere the old one is moved into a hidden sibling
  `.NAME.partial-*` directory, the new one moved to `path`, and the old one
  deleted.
- Anything else is refused with a `ValueError` whatever `overwrite` says: an
  empty path, `/`, the home or the current directory or any directory that
  contains them, a symbolic link, a directory that is not a SavedModel, a
  file that is not a TFLite flatbuffer, or an artifact of the other kind.

A killed export can leave a hidden `.NAME.partial-*` sibling of `path`. The
next export to the same `path` handles it first: when `path` is missing and
the leftover holds the old artifact (`previous`, moved aside by a run killed
between its two renames), that copy is moved back to `path`; the leftover is
then removed, and a warning says what was restored or removed. Leftovers of
exports still running (each holds an `fcntl.flock` on its directory) are
left alone.

TensorFlow is imported only by the functions that need it (export and the
SavedModel check), and the export runs under the TensorFlow backend. A
student trained under JAX or PyTorch is exported through a `.keras` file:
`student.save("student.keras")` in that process, then
`export_student("student.keras", ...)` (or `keras-kd export student.keras
...`) in a process with `KERAS_BACKEND=tensorflow`.

Input-range check: calibration and check data come from the user and nothing
in a Keras model records what it was trained on, except the moving
statistics of BatchNormalization. So before exporting, the inputs that the
first BatchNormalization layer sees on the given data are compared with its
`moving_mean` / `moving_variance`; when their per-channel standard deviation
is more than 10x off (median over channels), or their mean is more than 10
moving standard deviations away, a warning says so (typically raw 0..255
pixels given to a student trained on inputs normalised outside the model, or
the reverse) and `ExportResult.data_warning` holds it. It cannot see a
mismatch in a model without BatchNormalization, in one whose moving
statistics are still at their initial values (skipped), or one that a
BatchNormalization layer does not see (e.g. a wrong channel order of
similarly scaled data), nor one below the 10x threshold: images in [0, 1]
given to a model trained on `(x - mean) / std` inputs are off by about 3x
and pass unnoticed. It is skipped for random check data.
"""

import argparse
import ctypes
import dataclasses
import difflib
import fnmatch
import itertools
import os
import re
import shutil
import sys
import tempfile
import warnings

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

import keras
import numpy as np

FORMATS = (
    "saved_model",
    "tflite_float32",
    "tflite_float16",
    "tflite_dynamic_int8",
    "tflite_int8",
)
# Float formats: pass when max |diff| <= tolerance * max(1, max |keras|).
DEFAULT_TOLERANCES = {
    "saved_model": 1e-5,
    "tflite_float32": 1e-5,
    "tflite_float16": 1e-2,
}
SERVING_INPUT = "inputs"  # key of the input in the `serving_default` signature
SERVING_OUTPUT = (
    "output_0"  # key of the output in the `serving_default` signature
)
TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8
_SAVED_MODEL_ENTRIES = frozenset(
    {
        "saved_model.pb",
        "saved_model.pbtxt",
        "variables",
        "assets",
        "assets.extra",
        "fingerprint.pb",
        "keras_metadata.pb",
    }
)
_VARIABLE_FILE = re.compile(r"variables\.(index|data-\d+-of-\d+)\Z")
_PREVIOUS = "previous"  # the old artifact, inside a `.NAME.partial-*` dir


class ExportWarning(UserWarning):
    """Input data unlike the training inputs; a killed export repaired."""


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What `export_student` wrote and how closely it matches the Keras student.

    Attributes:
        path: where the artifact was written.
        format: one of `keras_kd.export.FORMATS`.
        size_bytes: size of the file (or of the SavedModel directory).
        max_abs_diff: largest `|export - keras|` on the check batch
            (quantized outputs are dequantized first).
        top1_agreement: fraction of check examples whose argmax matches the
            Keras student's (`None` for a single-output-unit model).
        tolerance: tolerance of a float format, `None` for quantized ones.
        passed: `max_abs_diff <= tolerance * max(1, max |keras|)` for float
            formats, `None` for quantized ones.
        num_check_examples: number of examples compared.
        check_data_source: where the check batch came from.
        input_quantization: `(scale, zero_point)` of the int8 input of a
            `"tflite_int8"` model: `q = clip(round(x / scale + zero_point),
            -128, 127)`. `None` for the other formats.
        output_quantization: `(scale, zero_point)` of its int8 output:
            `y = (q - zero_point) * scale`. `None` for the other formats.
        data_warning: the text of the input-range warning (see
            `input_range_warning`) when the given data look unlike what the
            model was trained on, else `None`.
    """

    path: str
    format: str
    size_bytes: int
    max_abs_diff: float
    top1_agreement: object
    tolerance: object
    passed: object
    num_check_examples: int
    check_data_source: str
    input_quantization: object = None
    output_quantization: object = None
    data_warning: object = None

    def to_dict(self):
        return dataclasses.asdict(self)

    def summary(self):
        """A one-line summary (what `verbose=True` prints)."""
        text = (
            f"keras_kd export: {self.format} -> {self.path} "
            f"({self.size_bytes / 1024:.1f} KiB); {self.num_check_examples} "
            f"examples ({self.check_data_source}): max |diff| "
            f"{self.max_abs_diff:.2e}"
        )
        if self.top1_agreement is not None:
            text += f", top-1 agreement {100 * self.top1_agreement:.1f}%"
        if self.passed is not None:
            text += (
                f", tolerance {self.tolerance:.0e}: "
                f"{'ok' if self.passed else 'FAILED'}"
            )
        return text


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
    interruption the next export to `path` repairs (see the module
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
        tolerance: tolerance of a float format (see the module docstring).
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
    path = _target_path(path)
    _check_backend()
    student = _student_of(model)
    _protect(path)
    _recover_interrupted(path)
    if os.path.lexists(path):
        _check_replaceable(path, fmt)
        if not overwrite:
            raise FileExistsError(
                f"'{path}' already exists. Pass overwrite=True to replace it, "
                "or choose another path."
            )
    spec = _input_spec(student)
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
    calibration, held_out = [], None
    if representative_data is not None:
        wanted = num_calibration_batches + 1 if fmt == "tflite_int8" else 1
        batches = _take_batches(representative_data, wanted, spec, student.name)
        calibration = batches[:num_calibration_batches]
        if len(batches) > num_calibration_batches:
            held_out = batches[-1]
    if check_data is not None:
        x_check = _take_batches(
            check_data, 1, spec, student.name, "check_data"
        )[0]
        source = "check_data"
    elif held_out is not None:
        x_check, source = held_out, "held-out representative batch"
    elif calibration:
        x_check = calibration[0]
        source = "representative batch" + (
            " (also calibrated on)" if fmt == "tflite_int8" else ""
        )
    else:
        shape = [8] + [d or 1 for d in spec.shape[1:]]
        x_check = (
            np.random.default_rng(0).uniform(size=shape).astype(spec.dtype)
        )
        source = "random uniform [0, 1)"
    data_warning = None
    if check_data is not None or calibration:
        data_warning = input_range_warning(student, [x_check] + calibration[:4])
        if data_warning:
            warnings.warn(data_warning, ExportWarning, stacklevel=2)

    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=_partial_prefix(path), dir=parent)
    lock = _lock_directory(work)
    try:
        artifact = os.path.join(work, "artifact")
        saved_model = (
            artifact if fmt == "saved_model" else os.path.join(work, "sm")
        )
        _write_saved_model(student, spec, saved_model)
        if fmt != "saved_model":
            with open(artifact, "wb") as f:
                f.write(_convert_tflite(saved_model, fmt, calibration))
        result = _check_parity(
            student, artifact, fmt, x_check, source, tolerance
        )
        _move_into_place(artifact, path, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            os.close(lock)
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


def load_interpreter(path, num_threads=None):
    """A TFLite/LiteRT interpreter with allocated tensors for `path`.

    Uses `ai_edge_litert.interpreter.Interpreter` (`pip install
    ai-edge-litert`, or `keras-kd[litert]`) when installed, else the
    deprecated `tf.lite.Interpreter` (whose deprecation warning is silenced).

    Example: see `tflite_predict`, which exports a model, loads it with this
    function and runs it.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        tf = _tf()
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter")
            interpreter = tf.lite.Interpreter(
                model_path=os.fspath(path), num_threads=num_threads
            )
    else:
        interpreter = Interpreter(
            model_path=os.fspath(path), num_threads=num_threads
        )
    interpreter.allocate_tensors()
    return interpreter


def tflite_predict(interpreter, x):
    """Runs a single-input, single-output TFLite model on the batch `x`.

    Quantizes float inputs of an int8 model (`q = clip(round(x / scale +
    zero_point), -128, 127)`) and dequantizes its int8 output (`y = (q -
    zero_point) * scale`), so the result is float32 whatever the format.

    Example:

    >>> import os, tempfile
    >>> import keras, numpy as np
    >>> keras.utils.set_random_seed(0)
    >>> student = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    >>> path = os.path.join(tempfile.mkdtemp(), "student.tflite")
    >>> result = export_student(student, path, format="tflite_float32",
    ...                         verbose=False)
    >>> interpreter = load_interpreter(path)
    >>> interpreter.get_input_details()[0]["dtype"]
    <class 'numpy.float32'>
    >>> x = np.random.default_rng(0).uniform(size=(2, 4)).astype("float32")
    >>> logits = tflite_predict(interpreter, x)
    >>> logits.shape, bool(np.allclose(logits, student(x), atol=1e-5))
    ((2, 3), True)
    """
    x = np.asarray(x)
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    if tuple(inp["shape"]) != x.shape:
        interpreter.resize_tensor_input(inp["index"], list(x.shape))
        interpreter.allocate_tensors()
    if np.issubdtype(inp["dtype"], np.integer):
        scale, zero_point = inp["quantization"]
        info = np.iinfo(inp["dtype"])
        q = np.round(x.astype(np.float64) / scale + zero_point)
        x = np.clip(q, info.min, info.max)
    interpreter.set_tensor(inp["index"], x.astype(inp["dtype"]))
    interpreter.invoke()
    y = interpreter.get_tensor(out["index"])
    if np.issubdtype(out["dtype"], np.integer):
        scale, zero_point = out["quantization"]
        y = (y.astype(np.float32) - zero_point) * scale
    return np.asarray(y, np.float32)


def input_range_warning(model, batches, ratio=10.0):
    """Why `batches` look unlike `model`'s training inputs, or `None`.

    Runs `model(x, training=False)` on each batch and records what its first
    BatchNormalization layer (the first one called, nested models included)
    receives. Per channel, the data's standard deviation is compared with
    `sqrt(moving_variance)` and its mean with `moving_mean` (in moving
    standard deviations). The text is returned when, as a median over
    channels, the standard deviation is more than `ratio` times too large or
    too small, or the mean more than `ratio` moving standard deviations off.

    `None` also when nothing can be said: no BatchNormalization layer is
    called, or its moving statistics are still at their initial values
    (mean 0, variance 1: never trained).

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((4,))
    >>> norm = keras.layers.BatchNormalization()
    >>> model = keras.Model(inputs, norm(inputs), name="student")
    >>> # As if trained on inputs in [0, 1): mean 0.5, variance 1/12.
    >>> _ = norm.moving_mean.assign(np.full(4, 0.5))
    >>> _ = norm.moving_variance.assign(np.full(4, 1 / 12))
    >>> rng = np.random.default_rng(0)
    >>> pixels = rng.uniform(0, 255, (8, 4)).astype("float32")  # raw 0..255
    >>> print(input_range_warning(model, [pixels]).split(":")[0])
    The calibration/check data look unlike what 'student' was trained on
    >>> input_range_warning(model, [pixels / 255]) is None
    True
    """
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not layers:
        return None
    seen = []

    def recorder(layer):
        original = layer.call

        def call(inputs, *args, **kwargs):
            if not seen or seen[0][0] is layer:
                seen.append((layer, keras.ops.convert_to_numpy(inputs)))
            return original(inputs, *args, **kwargs)

        return call

    own = [vars(layer).get("call") for layer in layers]  # usually None
    for layer in layers:
        object.__setattr__(layer, "call", recorder(layer))
    try:
        for x in batches:
            model(x, training=False)
    finally:
        for layer, call in zip(layers, own):
            if call is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", call)
    if not seen:
        return None
    layer = seen[0][0]
    moving_mean = np.float64(keras.ops.convert_to_numpy(layer.moving_mean))
    moving_var = np.float64(keras.ops.convert_to_numpy(layer.moving_variance))
    if np.all(moving_mean == 0) and np.all(moving_var == 1):
        return None  # never updated: says nothing about the training data
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    values = [np.moveaxis(v.astype(np.float64), axis, -1) for _, v in seen]
    values = np.concatenate([v.reshape(-1, v.shape[-1]) for v in values])
    # A floor relative to the training variance (not BatchNormalization's
    # epsilon, which would hide data scaled down by 255 in small layers).
    floor = 1e-6 * float(np.median(moving_var)) + 1e-12
    moving_std = np.sqrt(moving_var + floor)
    scale = np.median(np.sqrt(values.var(0) + floor) / moving_std)
    shift = np.median(np.abs(values.mean(0) - moving_mean) / moving_std)
    if 1 / ratio <= scale <= ratio and shift <= ratio:
        return None
    return (
        f"The calibration/check data look unlike what '{model.name}' was "
        f"trained on: at its first BatchNormalization layer '{layer.name}' "
        f"their standard deviation is {scale:.3g}x the one it saw in "
        f"training and their mean {shift:.3g} training standard deviations "
        "away (medians over channels). Typical cause: raw 0..255 pixels "
        "given to a model trained on inputs scaled or normalised outside it, "
        "or the reverse. Pass the data preprocessed as in training (the "
        "quantization and the parity check are only meaningful then), or "
        "put the preprocessing (`keras.layers.Rescaling`, `Normalization`) "
        "inside the model."
    )


# --- building --------------------------------------------------------------


def _write_saved_model(student, spec, directory):
    tf = _tf()
    archive = keras.export.ExportArchive()
    archive.track(student)
    archive.add_endpoint(
        "serve",
        lambda inputs: student(inputs, training=False),
        input_signature=[
            tf.TensorSpec(spec.shape, spec.dtype, name=SERVING_INPUT)
        ],
    )
    archive.write_out(directory, verbose=False)


def _convert_tflite(saved_model, fmt, calibration):
    tf = _tf()
    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
    if fmt != "tflite_float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if fmt == "tflite_float16":
        converter.target_spec.supported_types = [tf.float16]
    if fmt == "tflite_int8":

        def representative_dataset():
            for batch in calibration:
                yield [batch]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.TFLITE_BUILTINS_INT8
        ]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def _check_parity(student, artifact, fmt, x, source, tolerance):
    expected = keras.ops.convert_to_numpy(student(x, training=False))
    expected = np.asarray(expected, np.float32)
    result = {}
    if fmt == "saved_model":
        tf = _tf()
        serve = tf.saved_model.load(artifact).signatures["serving_default"]
        actual = serve(**{SERVING_INPUT: tf.constant(x)})[
            SERVING_OUTPUT
        ].numpy()
    else:
        interpreter = load_interpreter(artifact)
        actual = tflite_predict(interpreter, x)
        if fmt == "tflite_int8":
            for key, details in (
                ("input_quantization", interpreter.get_input_details()[0]),
                ("output_quantization", interpreter.get_output_details()[0]),
            ):
                scale, zero_point = details["quantization"]
                result[key] = (float(scale), int(zero_point))
    if actual.shape != expected.shape:
        raise ValueError(
            f"The {fmt} export returned shape {actual.shape}; the Keras "
            f"student '{student.name}' returns {expected.shape}."
        )
    max_diff = float(np.max(np.abs(actual - expected))) if actual.size else 0.0
    top1 = None
    if expected.ndim >= 2 and expected.shape[-1] > 1:
        top1 = float(np.mean(actual.argmax(-1) == expected.argmax(-1)))
    passed = None
    if fmt in DEFAULT_TOLERANCES:
        tolerance = (
            DEFAULT_TOLERANCES[fmt] if tolerance is None else float(tolerance)
        )
        scale = max(
            1.0, float(np.max(np.abs(expected))) if expected.size else 1.0
        )
        passed = bool(max_diff <= tolerance * scale)
    else:
        tolerance = None
    return ExportResult(
        path=artifact,
        format=fmt,
        size_bytes=_size(artifact),
        max_abs_diff=max_diff,
        top1_agreement=top1,
        tolerance=tolerance,
        passed=passed,
        num_check_examples=int(x.shape[0]),
        check_data_source=source,
        **result,
    )


def _move_into_place(artifact, path, work):
    """Moves `artifact` to `path`; the old `path` is never lost.

    A file, or a directory onto a missing path: one `os.replace`. A directory
    onto an old one: an atomic swap where the OS has one (the old one then
    lies in `work`, deleted with it); else old -> `work/previous`, new ->
    `path`. A run killed between those two renames leaves the old copy in
    `work/previous`, which the next export to `path` moves back
    (`_recover_interrupted`).
    """
    if not os.path.isdir(artifact) or not os.path.lexists(path):
        os.replace(artifact, path)
        return
    if _exchange(artifact, path):
        return
    previous = os.path.join(work, _PREVIOUS)
    os.replace(path, previous)
    try:
        os.replace(artifact, path)
    except BaseException:
        os.replace(previous, path)
        raise


def _exchange(a, b):
    """Swaps the paths `a` and `b` atomically; `False` where unsupported.

    Linux `renameat2(..., RENAME_EXCHANGE)` (kernel 3.15, glibc 2.28).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    # Any failure (EINVAL, ENOSYS: this file system or kernel cannot swap)
    # changed nothing, so the caller can take the two-rename route.
    return (
        renameat2(
            at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange
        )
        == 0
    )


# --- what an export may replace ----------------------------------------------


def _target_path(path):
    if path is None or not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(
            "`path` must be a file or directory path (str or os.PathLike); "
            f"received {type(path).__name__}."
        )
    raw = os.fsdecode(os.fspath(path))
    if not raw.strip():
        raise ValueError(
            f"`path` is empty ({raw!r}), which would mean the current "
            "directory. Pass the file (`student.tflite`) or directory "
            "(`student_savedmodel`) to write."
        )
    return os.path.abspath(raw)


def _protect(path):
    """Refuses `/`, home, the current directory and directories holding them."""
    real = os.path.realpath(path)
    for what, place in (
        ("the current directory", os.getcwd()),
        ("your home directory", os.path.expanduser("~")),
    ):
        place = os.path.realpath(place)
        if real == place or place.startswith(real.rstrip(os.sep) + os.sep):
            raise ValueError(
                f"Refusing to write the export to '{path}': it is {what}"
                + ("" if real == place else f" ('{place}') or contains it")
                + ", which an export never replaces, whatever `overwrite` "
                "says. Pass a new file (`student.tflite`) or directory "
                "(`student_savedmodel`) inside it."
            )


def _is_tflite_file(path):
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == TFLITE_IDENTIFIER


def _saved_model_problems(path):
    """Why the directory `path` is not a SavedModel (empty list if it is)."""
    entries = sorted(os.listdir(path))
    problems = [e for e in entries if e not in _SAVED_MODEL_ENTRIES]
    if "saved_model.pb" not in entries and "saved_model.pbtxt" not in entries:
        problems.insert(0, "no saved_model.pb")
    variables = os.path.join(path, "variables")
    if os.path.islink(variables) or (
        os.path.lexists(variables) and not os.path.isdir(variables)
    ):
        problems.append("variables (not a directory)")
    elif os.path.isdir(variables):
        problems += [
            f"variables/{e}"
            for e in sorted(os.listdir(variables))
            if not _VARIABLE_FILE.match(e)
        ]
    return problems


def _check_replaceable(path, fmt):
    """Raises ValueError unless `path` is an artifact `fmt` may replace."""
    wanted = (
        "a SavedModel directory"
        if fmt == "saved_model"
        else "a TFLite file (a flatbuffer with identifier TFL3)"
    )
    if os.path.islink(path):
        found = "a symbolic link"
    elif fmt == "saved_model":
        if not os.path.isdir(path):
            found = (
                "a TFLite file"
                if _is_tflite_file(path)
                else "a file, not a directory"
            )
        else:
            problems = _saved_model_problems(path)
            if not problems:
                return
            shown = ", ".join(problems[:5]) + (
                f" and {len(problems) - 5} more" if len(problems) > 5 else ""
            )
            found = f"a directory that is not a SavedModel ({shown})"
    elif os.path.isdir(path):
        found = "a directory"
    elif os.path.isfile(path) and _is_tflite_file(path):
        return
    else:
        found = "a file that is not a TFLite flatbuffer"
    raise ValueError(
        f"'{path}' exists and is {found}. An export replaces only {wanted} "
        f"for format '{fmt}', whatever `overwrite` says, so that nothing "
        "else is ever deleted. Move it away or choose another path."
    )


def _partial_prefix(path):
    return f".{os.path.basename(path)}.partial-"


def _lock_directory(directory):
    """An exclusive `flock` on `directory` (its fd); `None` without fcntl."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


def _recover_interrupted(path):
    """Restores or removes what killed exports to `path` left behind."""
    parent = os.path.dirname(path)
    prefix = _partial_prefix(path)
    try:
        names = sorted(
            (
                e
                for e in os.listdir(parent)
                if e.startswith(prefix) and fnmatch.fnmatch(e, prefix + "*")
            ),
            key=lambda e: -os.path.getmtime(os.path.join(parent, e)),
        )
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        leftover = os.path.join(parent, name)
        if os.path.islink(leftover) or not os.path.isdir(leftover):
            continue
        if fcntl is None:  # pragma: no cover - Windows
            warnings.warn(
                f"'{leftover}' is left from an interrupted export; it may "
                f"hold the previous '{path}' in '{_PREVIOUS}'. Check and "
                "remove it.",
                ExportWarning,
                stacklevel=3,
            )
            continue
        try:
            lock = _lock_directory(leftover)
        except OSError:
            continue  # an export to this path is running now
        try:
            previous = os.path.join(leftover, _PREVIOUS)
            if os.path.lexists(previous) and not os.path.lexists(path):
                os.replace(previous, path)
                warnings.warn(
                    f"Restored '{path}' from '{previous}': an export killed "
                    "while replacing it had moved it aside.",
                    ExportWarning,
                    stacklevel=3,
                )
            shutil.rmtree(leftover)
            warnings.warn(
                f"Removed '{leftover}', left by an interrupted export.",
                ExportWarning,
                stacklevel=3,
            )
        finally:
            os.close(lock)


def _size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


# --- validation ------------------------------------------------------------


def _tf():
    """`tensorflow`, or an ImportError saying how to install it."""
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            "Exporting to SavedModel or TFLite needs TensorFlow, which is not "
            f"installed ({error}). Install it with `pip install "
            '"keras-kd[cpu]"` (or `pip install tensorflow-cpu`), then run the '
            "export with KERAS_BACKEND=tensorflow."
        ) from error
    return tf


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


def _input_spec(student):
    if not student.built:
        raise ValueError(
            f"The model '{student.name}' is not built, so its input shape is "
            "unknown. Call it on a batch, call `model.build(input_shape)`, or "
            "start it with `keras.Input(shape)` before exporting."
        )
    try:
        from keras.src.export.export_utils import get_input_signature

        specs = get_input_signature(student)
    except ImportError:  # pragma: no cover - older/newer Keras layouts
        specs = [
            keras.InputSpec(shape=t.shape, dtype=t.dtype)
            for t in student.inputs
        ]
    specs = keras.tree.flatten(specs)
    outputs = getattr(student, "outputs", None)
    if len(specs) != 1 or (outputs is not None and len(outputs) != 1):
        raise ValueError(
            f"export_student handles single-input, single-output models; "
            f"'{student.name}' has {len(specs)} inputs and "
            f"{len(outputs) if outputs is not None else '?'} outputs. Export "
            "it with `keras.export.ExportArchive` instead."
        )
    dtype = specs[0].dtype or "float32"
    return keras.InputSpec(shape=tuple(specs[0].shape), dtype=dtype)


def _features(element):
    if isinstance(element, dict):
        if len(element) != 1:
            raise TypeError(
                "Batches given as dicts must have a single entry (the model "
                f"input); received keys {sorted(element)}."
            )
        element = next(iter(element.values()))
    if isinstance(element, (tuple, list)):
        element = element[0]  # (x, y) or (x, y, sample_weight)
    return np.asarray(element)


def _take_batches(data, n, spec, name, what="representative_data"):
    """The first `n` batches of `data` as arrays of the model's input dtype."""
    if (
        isinstance(data, np.ndarray)
        or hasattr(data, "__array__")
        and not hasattr(data, "element_spec")
    ):
        array = np.asarray(data)
        if what == "check_data":
            batches = [array]
        else:
            batches = [array[i : i + 32] for i in range(0, len(array), 32)][:n]
    elif isinstance(data, (tuple, list, dict)) and what == "check_data":
        batches = [_features(data)]
    else:
        batches = [_features(b) for b in itertools.islice(iter(data), n)]
    if not batches:
        raise ValueError(f"`{what}` is empty; pass at least one batch.")
    expected = tuple(spec.shape)
    for i, batch in enumerate(batches):
        if (
            not (
                np.issubdtype(batch.dtype, np.integer)
                or np.issubdtype(batch.dtype, np.floating)
            )
            or batch.dtype == np.bool_
        ):
            raise TypeError(
                f"`{what}` batch {i} has dtype {batch.dtype}; the model "
                f"'{name}' takes {spec.dtype}. Pass integer or float images "
                "(uint8 images are cast), e.g. before any string decoding."
            )
        rank_ok = batch.ndim == len(expected)
        if not rank_ok or any(
            e is not None and e != s
            for e, s in zip(expected[1:], batch.shape[1:])
        ):
            hint = (
                " It looks unbatched: call `.batch(32)` on the dataset."
                if batch.ndim == len(expected) - 1
                else ""
            )
            raise ValueError(
                f"`{what}` batch {i} has shape {tuple(batch.shape)}; the model "
                f"'{name}' takes {expected} (batch axis first).{hint}"
            )
    return [b.astype(spec.dtype) for b in batches]


# --- command line ----------------------------------------------------------


def export_command(argv=None):
    """`keras-kd export MODEL.keras OUTPUT [--format ...]`; returns exit code.

    0: written and (float formats) within tolerance; 1: written but outside
    the tolerance, or an error (nothing written); 2: bad arguments.

    Example:

    ```
    keras-kd export distiller.keras student_int8.tflite --format tflite_int8 \\
        --representative-data cifar_subset.npz --calibration-batches 20
    ```
    """
    parser = argparse.ArgumentParser(
        prog="keras-kd export",
        description="Export the student of a saved Distiller (or a student "
        "model) to a SavedModel or a TFLite/LiteRT flatbuffer, then check "
        "it against the Keras model.",
    )
    from keras_kd.cli import _integer  # one parser for counts, as the CLI

    parser.add_argument("model", help="a .keras file of a Distiller or student")
    parser.add_argument("output", help="target file (.tflite) or directory")
    parser.add_argument(
        "--format",
        default="saved_model",
        choices=FORMATS,
        help="what to write (default: saved_model); tflite_int8 needs "
        "--representative-data",
    )
    parser.add_argument(
        "--representative-data",
        metavar="NPZ",
        help="an .npz with `x_train` (or `x`) images; `x_test`, if present, "
        "is the check batch. Required for tflite_int8.",
    )
    parser.add_argument(
        "--calibration-batches",
        type=_integer(1),
        default=100,
        help="batches of --representative-data used to calibrate "
        "quantization (default: 100)",
    )
    parser.add_argument(
        "--batch-size",
        type=_integer(1),
        default=32,
        help="examples per calibration / check batch (default: 32)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace OUTPUT if it is a TFLite file (TFLite formats) or a "
        "SavedModel directory (saved_model); anything else is refused",
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="print nothing but warnings and errors",
    )
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    caught = None
    try:
        import keras_kd  # noqa: F401  (registers the Distiller and losses)

        model = keras.saving.load_model(args.model, compile=False)
        representative, check = None, None
        if args.representative_data:
            with np.load(args.representative_data) as npz:
                key = "x_train" if "x_train" in npz else "x"
                if key not in npz:
                    raise ValueError(
                        f"'{args.representative_data}' has arrays "
                        f"{sorted(npz.files)}; expected `x_train` or `x`."
                    )
                x = npz[key]
                if "x_test" in npz:
                    check = npz["x_test"][: args.batch_size]
            representative = [
                x[i : i + args.batch_size]
                for i in range(0, len(x), args.batch_size)
            ]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("always", ExportWarning)
            result = export_student(
                model,
                args.output,
                format=args.format,
                representative_data=representative,
                num_calibration_batches=args.calibration_batches,
                check_data=check,
                overwrite=args.overwrite,
                verbose=not args.quiet,
            )
    except (ValueError, TypeError, OSError, RuntimeError, ImportError) as error:
        _print_export_warnings(caught)
        print(f"keras-kd export: error: {error}", file=sys.stderr)
        return 1
    _print_export_warnings(caught)
    if result.passed is False:
        print(
            f"keras-kd export: parity check failed: max |diff| "
            f"{result.max_abs_diff:.3g} > tolerance {result.tolerance:g}",
            file=sys.stderr,
        )
        return 1
    return 0


def _print_export_warnings(caught):
    for warning in caught or ():
        if issubclass(warning.category, ExportWarning):
            print(
                f"keras-kd export: warning: {warning.message}", file=sys.stderr
            )
