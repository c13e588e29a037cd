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

The package's modules: `student` (`export_student`), `convert` (the
calibration and check batches, the SavedModel trace, the TFLite
conversion), `parity` (the comparison with Keras; `load_interpreter`,
`tflite_predict`), `files` (the overwrite rule, atomic moves, recovery of
killed exports), `input_range` (`input_range_warning`) and `command`
(`keras-kd export`).
"""

from keras_kd.export.base import DEFAULT_TOLERANCES
from keras_kd.export.base import FORMATS
from keras_kd.export.base import SERVING_INPUT
from keras_kd.export.base import SERVING_OUTPUT
from keras_kd.export.base import ExportResult
from keras_kd.export.base import ExportWarning
from keras_kd.export.command import export_command
from keras_kd.export.command import keras_file_problem
from keras_kd.export.files import TFLITE_IDENTIFIER
from keras_kd.export.input_range import input_range_warning
from keras_kd.export.parity import load_interpreter
from keras_kd.export.parity import tflite_predict
from keras_kd.export.student import export_student

__all__ = [
    "DEFAULT_TOLERANCES",
    "FORMATS",
    "SERVING_INPUT",
    "SERVING_OUTPUT",
    "TFLITE_IDENTIFIER",
    "ExportResult",
    "ExportWarning",
    "export_command",
    "export_student",
    "input_range_warning",
    "keras_file_problem",
    "load_interpreter",
    "tflite_predict",
]
