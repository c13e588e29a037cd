"""`keras-kd export MODEL.keras OUTPUT [--format ...]`: the export command.

`export_command(argv)` parses its own arguments, checks that a `.keras`
MODEL reads (`keras_file_problem`: Keras reports a truncated file as "File
not found"), loads it, reads `--representative-data` from an `.npz` and runs
`export_student`, printing its warnings and errors on one line each.
`keras-kd export ...` (`keras_kd.cli.main`) hands it the arguments after
`export` as they are.
"""

import argparse
import os
import sys
import warnings
import zipfile

import keras
import numpy as np

from keras_kd.arguments import integer
from keras_kd.export.base import FORMATS
from keras_kd.export.base import ExportWarning
from keras_kd.export.student import export_student


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
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    problem = (
        keras_file_problem(args.model)
        if args.model.lower().endswith(".keras")
        else None
    )
    if problem is not None:
        print(
            f"keras-kd export: error: cannot read {args.model!r}: "
            f"{problem}. "
            "Expected a .keras file written by `model.save(...)` or "
            "`keras-kd --output DIR`; save it again (or copy it again "
            "if the copy was cut short).",
            file=sys.stderr,
        )
        return 1
    caught = None
    try:
        import keras_kd  # noqa: F401  (registers the Distiller and losses)

        model = keras.saving.load_model(args.model, compile=False)
        representative, check = _representative_data(
            args.representative_data, args.batch_size
        )
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


def _parser():
    """The parser of `keras-kd export`."""
    parser = argparse.ArgumentParser(
        prog="keras-kd export",
        description="Export the student of a saved Distiller (or a student "
        "model) to a SavedModel or a TFLite/LiteRT flatbuffer, then check "
        "it against the Keras model.",
    )
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
        type=integer(1),
        default=100,
        help="batches of --representative-data used to calibrate "
        "quantization (default: 100)",
    )
    parser.add_argument(
        "--batch-size",
        type=integer(1),
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
    return parser


def _representative_data(path, batch_size):
    """`(representative, check)` batches from the `.npz` at `path`, if any."""
    representative, check = None, None
    if path:
        with np.load(path) as npz:
            key = "x_train" if "x_train" in npz else "x"
            if key not in npz:
                raise ValueError(
                    f"'{path}' has arrays "
                    f"{sorted(npz.files)}; expected `x_train` or `x`."
                )
            x = npz[key]
            if "x_test" in npz:
                check = npz["x_test"][:batch_size]
        representative = [
            x[i : i + batch_size] for i in range(0, len(x), batch_size)
        ]
    return representative, check


def keras_file_problem(path):
    """What is wrong with the `.keras` file at `path`, or `None` if it reads.

    Keras reports a truncated or corrupt `.keras` file as "File not found"
    (or a `BadZipFile` traceback), and may even load one whose weights are
    damaged. This checks what Keras does not: the file is a complete zip
    archive, holds `config.json`, and every member passes its CRC check.

    Args:
        path: path of a `.keras` file.

    Returns:
        A sentence saying what is wrong, or `None`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        return "it is a directory, not a .keras file"
    if not os.path.isfile(path):
        return "no such file"
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        head = file.read(4)
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            if "config.json" not in names:
                return (
                    f"it is a zip archive without config.json (members: "
                    f"{names[:5]}), not a model saved by Keras"
                )
            bad = archive.testzip()
            if bad is not None:
                return (
                    f"it is corrupt: member {bad!r} fails its CRC check "
                    f"({size:,} bytes)"
                )
    except (
        zipfile.BadZipFile,
        OSError,
        EOFError,
        ValueError,
        RuntimeError,
    ) as error:
        if head != b"PK\x03\x04":
            return (
                f"it is not a zip archive, which a .keras file is (it "
                f"starts with {head!r}; {size:,} bytes)"
            )
        return (
            f"it is truncated or corrupt: it starts like a zip archive "
            f"but cannot be read ({type(error).__name__}: {error}; "
            f"{size:,} bytes)"
        )
    except Exception as error:  # zlib.error and the like from damaged data
        return (
            f"it is corrupt ({type(error).__name__}: {error}; {size:,} bytes)"
        )
    return None
