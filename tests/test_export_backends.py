"""Export from any backend: the `.keras` route, and no TensorFlow
needed to import `keras_kd.export`.

A subprocess with KERAS_BACKEND=jax (and one with torch) trains a small
student for one step, saves it as `.keras` with its own predictions; this
TensorFlow-backend process exports that file to TFLite float32 and a
SavedModel and checks both against the other backend's predictions. Skipped
for a backend only when it cannot be imported in this Python.
"""

import json
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_kd import export as export_lib  # noqa: E402
from keras_kd.export import base as export_base  # noqa: E402
from keras_kd.export import export_student  # noqa: E402
from keras_kd.export import load_interpreter  # noqa: E402
from keras_kd.export import tflite_predict  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRAIN = textwrap.dedent("""
    import os, sys
    import keras, numpy as np
    out = sys.argv[1]
    assert keras.backend.backend() == os.environ["KERAS_BACKEND"]
    keras.utils.set_random_seed(0)
    student = keras.Sequential([
        keras.Input((8, 8, 3)), keras.layers.Rescaling(1 / 255),
        keras.layers.Conv2D(8, 3, padding="same"),
        keras.layers.BatchNormalization(), keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(5),
    ], name="student")
    student.compile(optimizer="adam", loss=keras.losses.
                    SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (16, 8, 8, 3)).astype("float32")
    student.fit(x, rng.integers(0, 5, 16), batch_size=16, epochs=1, verbose=0)
    np.save(os.path.join(out, "x.npy"), x)
    np.save(os.path.join(out, "y.npy"),
            keras.ops.convert_to_numpy(student(x, training=False)))
    student.save(os.path.join(out, "student.keras"))
    from keras_kd.export import export_student
    try:
        export_student(student, os.path.join(out, "here.tflite"),
                       format="tflite_float32")
    except RuntimeError as error:
        print("REFUSED:", error)
""")


def _importable(module):
    return (
        subprocess.run(
            [sys.executable, "-c", f"import {module}"], capture_output=True
        ).returncode
        == 0
    )


def _run(code, *args, backend):
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="2",
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
    )
    process = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-4000:]
    return process.stdout


@pytest.mark.slow
@pytest.mark.parametrize("backend,module", [("jax", "jax"), ("torch", "torch")])
def test_student_trained_on_another_backend_exports_with_parity(
    tmp_path, capsys, backend, module
):
    if not _importable(module):
        pytest.skip(f"{module} is not importable in {sys.executable}")
    out = _run(TRAIN, tmp_path, backend=backend)
    # In that process export_student refuses, saying what to do instead.
    assert "REFUSED:" in out and "KERAS_BACKEND=tensorflow" in out
    assert "student.keras" in out
    x, expected = np.load(tmp_path / "x.npy"), np.load(tmp_path / "y.npy")
    keras_file = str(tmp_path / "student.keras")

    result = export_student(
        keras_file,
        tmp_path / "student.tflite",
        format="tflite_float32",
        check_data=x,
        verbose=False,
    )
    assert result.passed
    got = tflite_predict(load_interpreter(result.path), x)
    scale = max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale, rtol=0)

    saved = export_student(
        keras_file, tmp_path / "sm", check_data=x, verbose=False
    )
    assert saved.passed
    import tensorflow as tf

    serve = tf.saved_model.load(saved.path).signatures["serving_default"]
    got = serve(inputs=tf.constant(x))["output_0"].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5 * scale, rtol=0)

    # The command line takes the same file.
    argv = [
        keras_file,
        str(tmp_path / "cli.tflite"),
        "--format",
        "tflite_float32",
    ]
    assert export_lib.export_command(argv) == 0


NO_TENSORFLOW = textwrap.dedent("""
    import json, os, sys, traceback, types
    sys.modules["tensorflow"] = None  # `import tensorflow` now fails
    report = {}
    # The export package alone: keras_kd stubbed so that its __init__.py
    # (which imports every other module) does not run.
    package = types.ModuleType("keras_kd")
    package.__path__ = [os.path.join(sys.argv[1], "keras_kd")]
    sys.modules["keras_kd"] = package
    import keras_kd.export
    from keras_kd.export import base
    report["module_imported"] = True
    try:
        base.import_tensorflow()
    except ImportError as error:
        report["tf_error"] = str(error)
    for name in [m for m in sys.modules if m.split(".")[0] == "keras_kd"]:
        del sys.modules[name]
    try:
        import keras_kd.export
        report["package"] = "ok"
    except ImportError:
        frames = traceback.extract_tb(sys.exc_info()[2])
        report["package"] = [f.filename for f in frames
                             if "keras_kd" in f.filename][-1]
    print(json.dumps(report))
""")


@pytest.mark.parametrize("backend,module", [("jax", "jax"), ("numpy", "numpy")])
def test_export_module_imports_without_tensorflow(backend, module):
    if not _importable(module):
        pytest.skip(f"{module} is not importable in {sys.executable}")
    report = json.loads(
        _run(NO_TENSORFLOW, ROOT, backend=backend).strip().splitlines()[-1]
    )
    assert report["module_imported"]
    assert 'pip install "keras-kd[cpu]"' in report["tf_error"]
    assert "tensorflow-cpu" in report["tf_error"]
    if report["package"] != "ok":
        # keras_kd/export/ itself is fine; another module of the package
        # still imports TensorFlow at import time (not this file's concern).
        assert "/keras_kd/export/" not in report["package"], report
        pytest.skip(f"`import keras_kd` needs TensorFlow: {report['package']}")


def test_missing_tensorflow_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)
    with pytest.raises(ImportError, match=r"keras-kd\[cpu\]"):
        export_base.import_tensorflow()
