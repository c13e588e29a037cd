"""What the export modules share: the formats and their tolerances, the keys
of the `serving_default` signature, what an export returns (`ExportResult`)
and warns (`ExportWarning`), and TensorFlow's import.

TensorFlow is imported only by the functions that need it
(`import_tensorflow`), so `keras_kd.export` imports without it.
"""

import dataclasses

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


def import_tensorflow():
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
