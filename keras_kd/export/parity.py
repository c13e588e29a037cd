"""The parity check: the exported artifact against the Keras student.

`check_parity` runs the written SavedModel (its `serving_default`
signature) or TFLite flatbuffer on the check batch and compares it with
`student(x, training=False)`; `load_interpreter` and `tflite_predict` load
and run a TFLite/LiteRT model, for the check and for users.
"""

import os
import warnings

import keras
import numpy as np

from keras_kd.export.base import DEFAULT_TOLERANCES
from keras_kd.export.base import SERVING_INPUT
from keras_kd.export.base import SERVING_OUTPUT
from keras_kd.export.base import ExportResult
from keras_kd.export.base import import_tensorflow
from keras_kd.export.files import artifact_size


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
        tf = import_tensorflow()
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
    >>> from keras_kd.export import export_student
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


def check_parity(student, artifact, fmt, x, source, tolerance):
    """Runs the artifact on `x` and compares it with the Keras student.

    Returns an `ExportResult` for `artifact` (the caller sets its final
    path): the largest difference, the top-1 agreement, and for float
    formats whether the difference is within `tolerance` (default
    `DEFAULT_TOLERANCES[fmt]`) times `max(1, max |keras|)`.
    """
    expected = keras.ops.convert_to_numpy(student(x, training=False))
    expected = np.asarray(expected, np.float32)
    result = {}
    if fmt == "saved_model":
        tf = import_tensorflow()
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
        size_bytes=artifact_size(artifact),
        max_abs_diff=max_diff,
        top1_agreement=top1,
        tolerance=tolerance,
        passed=passed,
        num_check_examples=int(x.shape[0]),
        check_data_source=source,
        **result,
    )
