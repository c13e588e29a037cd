"""keras_kd.data, .models and .cli import without TensorFlow; what needs it
says so.

Each check runs in a fresh interpreter in which `import tensorflow` (and
`tensorflow_datasets`) fails, as on a machine where only NumPy and Keras (on
another backend) are installed. `keras_kd/__init__.py` imports every module,
and some import TensorFlow on their own; this file checks the modules the
first hour goes through (data, models, cli), so the package is stubbed to load
them one by one.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

PRELUDE = f"""
import sys, types
sys.modules["tensorflow"] = None  # `import tensorflow` raises ImportError
sys.modules["tensorflow_datasets"] = None
package = types.ModuleType("keras_kd")
package.__path__ = [{str(ROOT / "keras_kd")!r}]
sys.modules["keras_kd"] = package
"""


def _run(body, tmp_path):
    env = dict(os.environ, KERAS_BACKEND="numpy", PYTHONPATH=str(ROOT))
    result = subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(body)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.mark.slow
def test_data_works_without_tensorflow_until_tf_data_is_needed(tmp_path):
    out = _run(
        """
        import numpy as np
        import keras_kd.data as data
        assert "tensorflow" not in {m for m, v in sys.modules.items() if v}

        arrays = data.load_arrays()  # the bundled subset: NumPy only
        print("bundled", arrays["x_train"].shape)
        mean, std = data.channel_stats(arrays["x_train"])
        x, y = data.balanced_subset(arrays["x_train"], arrays["y_train"], 0.1)
        print("subset", len(x))
        for call in (lambda: data.make_dataset(x, y),
                     lambda: data.load_arrays("cifar10"),
                     lambda: data.prepare_tfds_directory(
                         "a.npz", ".", "a_local")):
            try:
                call()
            except ImportError as error:
                print("ImportError:", error)
        """,
        tmp_path,
    )
    assert "bundled (6000, 28, 28, 1)" in out
    assert "subset 600" in out
    errors = [
        line for line in out.splitlines() if line.startswith("ImportError:")
    ]
    assert len(errors) == 3, out
    assert "make_dataset needs TensorFlow" in errors[0]
    assert 'pip install "keras-kd[cpu]"' in errors[0]
    assert "tensorflow-cpu" in errors[0]
    for line in errors[1:]:
        assert 'pip install "keras-kd[cpu,data]"' in line
        assert ".npz" in line


@pytest.mark.slow
def test_models_and_cli_without_tensorflow(tmp_path):
    out = _run(
        """
        import keras_kd.cli as cli
        import keras_kd.models as models

        model = models.conv_net((8, 8, 1), 3, (4, 4, 4), mean=[0.5], std=[0.2])
        print("first layer", model.layers[1].name)
        try:
            cli.main(["--help"])
        except SystemExit as exit_:
            print("help exit", exit_.code)
        try:
            cli.main(["--quick"])
        except SystemExit as exit_:
            print("main job:", exit_.code)
        """,
        tmp_path,
    )
    assert "first layer normalize" in out
    assert "help exit 0" in out and "keras-kd export" in out
    assert "main job: keras-kd: the main job trains with TensorFlow" in out
    assert 'pip install "keras-kd[cpu]"' in out
