"""The fast check's end-to-end part: one `fit()` on each installed Keras
backend and one export with its parity check.

`python -m pytest -m quick tests -q` runs these with the float64 checks of
every loss (tests/losses); conftest.py marks them `quick`. A backend that is
not installed is skipped, saying so.
"""

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FIT = """
import numpy as np
import keras
import keras_kd
from keras_kd import losses
from keras_kd.models import conv_net

keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
x = rng.uniform(0, 255, size=(64, 16, 16, 1)).astype("float32")
y = rng.integers(0, 10, size=64)
teacher = conv_net((16, 16, 1), 10, (8, 16, 32), mean=[127.0], std=[64.0])
student = conv_net((16, 16, 1), 10, (4, 8, 16), mean=[127.0], std=[64.0])
before = [np.array(keras.ops.convert_to_numpy(w)) for w in teacher.weights]
student_before = keras.ops.convert_to_numpy(student.weights[0]).copy()
taps = ["stage1_relu", "stage2_relu", "stage3_relu"]
distiller = keras_kd.Distiller(teacher, student, [
    losses.ActivationBoundary(taps, taps),
    losses.NeuronSelectivityTransfer("stage3_relu", "stage3_relu"),
    losses.LogitsDistillation(),
])
distiller.compile(
    optimizer="adam",
    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
)
history = distiller.fit(x, y, batch_size=32, epochs=1, verbose=0).history
for key in ("loss", "student_loss", "activation_boundary_loss",
            "neuron_selectivity_loss", "logits_distillation_loss"):
    assert np.isfinite(history[key][-1]), (key, history[key])
after = [keras.ops.convert_to_numpy(w) for w in teacher.weights]
assert all(np.array_equal(a, b) for a, b in zip(before, after)), "teacher"
assert not np.array_equal(
    student_before, keras.ops.convert_to_numpy(student.weights[0])
), "the student did not train"
print("fit ok on", keras.backend.backend())
"""


@pytest.mark.parametrize("backend", ["tensorflow", "jax", "torch"])
def test_one_fit_on_each_installed_backend(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = dict(
        os.environ,
        KERAS_BACKEND=backend,
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    result = subprocess.run(
        [sys.executable, "-c", FIT],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout + result.stderr[-4000:]
    assert f"fit ok on {backend}" in result.stdout


def test_export_keeps_parity(tmp_path):
    pytest.importorskip("tensorflow")
    import keras
    import numpy as np

    import keras_kd
    from keras_kd.export import export_student
    from keras_kd.models import conv_net

    if keras.backend.backend() != "tensorflow":
        pytest.skip("export runs in TensorFlow")
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, size=(32, 16, 16, 1)).astype("float32")
    y = rng.integers(0, 10, size=32)
    teacher = conv_net((16, 16, 1), 10, (8, 16, 32), mean=[127.0], std=[64.0])
    student = conv_net((16, 16, 1), 10, (4, 8, 16), mean=[127.0], std=[64.0])
    distiller = keras_kd.Distiller(
        teacher, student, [keras_kd.losses.LogitsDistillation()]
    )
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    distiller.fit(x, y, batch_size=16, epochs=1, verbose=0)
    result = export_student(
        distiller,
        tmp_path / "student.tflite",
        format="tflite_float32",
        check_data=x[:8],
        verbose=False,
    )
    assert result.passed, result.summary()
    assert result.max_abs_diff <= 1e-5 * max(1.0, result.max_abs_diff)
    assert os.path.getsize(tmp_path / "student.tflite") == result.size_bytes
