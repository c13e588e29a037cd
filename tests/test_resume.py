"""Resume after a crash: SIGKILL a training process (mid-epoch, or while it
writes a checkpoint), restart it, and finish with exactly the weights of an
uninterrupted run (tests/resume_script.py is the training process)."""

import json
import os
import signal
import subprocess
import sys

import h5py
import keras
import numpy as np
import pytest
from backend_utils import to_numpy
from builders import cnn
from builders import data
from builders import sparse_ce

from keras_kd import Distiller
from keras_kd import losses as L
from keras_kd.backup import AtomicBackupAndRestore

# One pytest-xdist worker runs this module: one uninterrupted reference.
pytestmark = pytest.mark.xdist_group("resume")

SCRIPT = os.path.join(os.path.dirname(__file__), "resume_script.py")


def _start(*args):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.Popen(
        [sys.executable, SCRIPT, *map(str, args)],
        env=env,
        cwd=os.path.dirname(SCRIPT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _finish(process, timeout=300):
    output, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, output[-4000:]


def _kill_when_paused(process):
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "PAUSED" in line:
            break
    else:
        process.wait()
        pytest.fail("the run ended without pausing:\n" + "".join(lines)[-4000:])
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


def _load(path):
    with np.load(path) as f:
        names = list(f["names"])
        return (
            names,
            [f[f"arr_{i}"] for i in range(len(names))],
            f["loss_weights"],
        )


def _assert_same_run(path, reference):
    names, values, loss_weights = _load(path)
    ref_names, ref_values, ref_loss_weights = _load(reference)
    assert names == ref_names
    for name, a, b in zip(names, values, ref_values):
        np.testing.assert_array_equal(a, b, err_msg=name)
    # Stage 2 of the AB schedule: task + KD on, AB off.
    np.testing.assert_array_equal(loss_weights, ref_loss_weights)
    np.testing.assert_array_equal(loss_weights, [1.0, 1.0, 0.0])


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run, started at once and awaited on first use."""
    directory = tmp_path_factory.mktemp("reference")
    out = directory / "out.npz"
    process = _start(directory / "backup", out)
    finished = []

    def result():
        if not finished:
            _finish(process)
            finished.append(out)
        return out

    yield result
    if process.poll() is None:
        process.kill()
        process.communicate()


def _metadata(backup_dir):
    with open(os.path.join(backup_dir, "training_metadata.json")) as f:
        return json.load(f)


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted_run(
    tmp_path, reference
):
    backup, out = tmp_path / "backup", tmp_path / "out.npz"
    # Epoch 1 (the first of AB stage 2), batch 2 of 4.
    _kill_when_paused(_start(backup, out, "--pause-at", "1:2"))
    assert not out.exists()
    assert _metadata(backup)["epoch"] == 1  # epoch 0 committed
    _finish(_start(backup, out))
    _assert_same_run(out, reference())


@pytest.mark.slow
def test_sigkill_during_checkpoint_write_then_resume(tmp_path, reference):
    backup, out = tmp_path / "backup", tmp_path / "out.npz"
    # Killed while writing the end-of-epoch-1 checkpoint (the 2nd save).
    _kill_when_paused(_start(backup, out, "--pause-in-save", "2"))
    metadata = _metadata(backup)
    assert metadata["epoch"] == 1 and metadata["sequence"] == 1
    with h5py.File(backup / metadata["weights"], "r"):
        pass  # the committed checkpoint is whole
    _finish(_start(backup, out))
    _assert_same_run(out, reference())
    leftovers = sorted(os.listdir(backup))
    assert leftovers == [
        "checkpoint-00000003.weights.h5",
        "training_metadata.json",
    ], leftovers


def _torn_writer(monkeypatch):
    """`save_weights` dies half way: the file is cut short, then it raises."""
    original = keras.Model.save_weights

    def torn(self, filepath, *args, **kwargs):
        original(self, filepath, *args, **kwargs)
        with open(filepath, "r+b") as f:
            f.truncate(os.path.getsize(filepath) // 2)
        raise RuntimeError("died while writing")

    monkeypatch.setattr(keras.Model, "save_weights", torn)
    return lambda: monkeypatch.setattr(keras.Model, "save_weights", original)


@pytest.mark.parametrize("callback", ["keras", "keras_kd"])
def test_a_torn_write_and_the_last_good_checkpoint(
    tmp_path, monkeypatch, callback
):
    def make(**kwargs):
        if callback == "keras":
            return keras.callbacks.BackupAndRestore(tmp_path, **kwargs)
        return AtomicBackupAndRestore(tmp_path, **kwargs)

    def distiller():
        keras.utils.set_random_seed(0)
        model = Distiller(
            cnn(8, "teacher"), cnn(4, "student"), L.LogitsDistillation()
        )
        model.compile(optimizer="adam", loss=sparse_ce())
        return model

    x, y = data(n=8)
    model = distiller()
    model.fit(
        x, y, epochs=1, verbose=0, callbacks=[make(delete_checkpoint=False)]
    )  # epoch 0 committed
    saved = [to_numpy(v) for v in model.weights]
    restore_writer = _torn_writer(monkeypatch)
    with pytest.raises(RuntimeError, match="died while writing"):
        model.fit(
            x, y, epochs=2, verbose=0, callbacks=[make(delete_checkpoint=False)]
        )
    restore_writer()

    restored = distiller()
    restore = make(delete_checkpoint=False)
    restore.set_model(restored)
    if callback == "keras":
        # Keras wrote in place: the last good checkpoint is gone.
        with pytest.raises(OSError):
            restore.on_train_begin()
        return
    restore.on_train_begin()
    assert restored._initial_epoch == 1
    for a, b in zip(restored.weights, saved):
        np.testing.assert_array_equal(to_numpy(a), b)
    with pytest.raises(ValueError, match="local file system"):
        AtomicBackupAndRestore("gs://bucket/backup")
