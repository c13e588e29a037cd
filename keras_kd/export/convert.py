"""Building the artifact: the model's input, the calibration and check
batches, the SavedModel trace and the TFLite conversion.

`calibration_and_check` turns the user's `representative_data` and
`check_data` into batches of the model's input dtype; `build` traces the
student once with `training=False` into a SavedModel (its `serving_default`
signature takes `inputs`) and converts that to TFLite when asked.
"""

import itertools
import os

import keras
import numpy as np

from keras_kd.export.base import SERVING_INPUT
from keras_kd.export.base import import_tensorflow


def input_spec(student):
    """The `keras.InputSpec` of a built single-input, single-output model."""
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


def calibration_and_check(
    name, spec, fmt, representative_data, num_calibration_batches, check_data
):
    """The calibration batches, the check batch and where it came from.

    Returns `(calibration, x_check, source)`. `calibration` holds the first
    `num_calibration_batches` batches of `representative_data` (only the
    first one outside `"tflite_int8"`, to check on). The check batch is
    `check_data`, else the batch of `representative_data` after the
    calibration ones, else the first calibration batch, else 8 random
    uniform examples in `[0, 1)`.
    """
    calibration, held_out = [], None
    if representative_data is not None:
        wanted = num_calibration_batches + 1 if fmt == "tflite_int8" else 1
        batches = _take_batches(representative_data, wanted, spec, name)
        calibration = batches[:num_calibration_batches]
        if len(batches) > num_calibration_batches:
            held_out = batches[-1]
    if check_data is not None:
        x_check = _take_batches(check_data, 1, spec, name, "check_data")[0]
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
    return calibration, x_check, source


def build(student, spec, fmt, calibration, work):
    """Writes the `fmt` artifact of `student` in the directory `work`.

    The SavedModel is traced with `training=False`; a TFLite format is
    converted from it (calibrated on `calibration` for `"tflite_int8"`).
    Returns the artifact's path, `work/artifact`.
    """
    artifact = os.path.join(work, "artifact")
    saved_model = artifact if fmt == "saved_model" else os.path.join(work, "sm")
    _write_saved_model(student, spec, saved_model)
    if fmt != "saved_model":
        with open(artifact, "wb") as f:
            f.write(_convert_tflite(saved_model, fmt, calibration))
    return artifact


def _write_saved_model(student, spec, directory):
    tf = import_tensorflow()
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
    tf = import_tensorflow()
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
