"""Size and parity of every export format, on a small distilled student.

The student of the export tests (Rescaling + RandomFlip in front,
Conv-BN-ReLU, a residual Add, 16x16x3 inputs, 3,066 parameters), distilled
for one epoch of 3 steps from a wider teacher with KD + AB (which builds a
connector, never exported), is exported to each format with
`keras_kd.export.export_student`; the file's size, the largest absolute
difference from the Keras student and the top-1 agreement on 16 check
images are what `ExportResult` reports.

    python benchmarks/export_table.py   # ~1 min; writes results/export.md
"""

import argparse
import datetime
import os
import sys
import tempfile

import common

os.environ["KERAS_BACKEND"] = "tensorflow"  # export runs in TensorFlow
common.quiet_tensorflow()

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.export import FORMATS  # noqa: E402
from keras_kd.export import export_student  # noqa: E402

# The export tests' student and data: one definition for both.
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
from builders import brightness_images  # noqa: E402
from builders import export_cnn  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", default=os.path.join(common.RESULTS_DIR, "export")
    )
    args = parser.parse_args(argv)
    started = datetime.datetime.now(datetime.timezone.utc)
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
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(16)
    x_check = brightness_images(16, seed=2)[0].astype("float32")
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        for fmt in FORMATS:
            suffix = "" if fmt == "saved_model" else ".tflite"
            result = export_student(
                distiller,
                os.path.join(directory, fmt + suffix),
                format=fmt,
                representative_data=data,
                num_calibration_batches=3,
                check_data=x_check,
                verbose=False,
            )
            agreement = result.top1_agreement
            rows.append(
                [
                    fmt,
                    f"{result.size_bytes / 1024:.1f} KiB",
                    f"{result.max_abs_diff:.1e}",
                    "—" if agreement is None else f"{100 * agreement:.1f}%",
                ]
            )
            print(result.summary(), flush=True)
    header = ["format", "size", "max abs diff", "top-1 agreement"]
    common.print_table(header, rows)
    lines = common.header_markdown(
        "Export formats: size and parity with the Keras student",
        started.strftime("%Y-%m-%d %H:%M"),
        [
            f"Student: {student.count_params():,} parameters "
            "(Rescaling + RandomFlip, Conv-BN-ReLU, residual Add, 16x16x3). "
            f"Check data: {len(x_check)} images. "
            "SavedModel's size counts every file of its directory.",
            "",
        ],
    )
    lines += common.markdown_table(header, rows)
    common.write_text(args.output + ".md", lines)
    print(f"wrote {args.output}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
