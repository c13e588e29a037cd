"""AtomicBackupAndRestore: one writer per backup directory.

Two trainings sharing a backup_dir used to delete each other's files; now the
second one is refused at the start of `fit`, naming the holder, and a killed
holder never blocks the next run.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import fcntl  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from keras_kd.backup import AtomicBackupAndRestore  # noqa: E402
from keras_kd.backup import BackupDirectoryInUseError  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

HOLDER = textwrap.dedent("""
    import sys, time
    from keras_kd.backup import AtomicBackupAndRestore
    backup = AtomicBackupAndRestore(sys.argv[1])
    backup._acquire_lock()  # what its fit() does first
    print("LOCKED", flush=True)
    time.sleep(600)
""")


def _model():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    return model


def _fit(model, backup, epochs=2):
    x = np.ones((8, 3), "float32")
    return model.fit(
        x,
        np.zeros((8, 2), "float32"),
        epochs=epochs,
        batch_size=4,
        verbose=0,
        callbacks=[backup],
    )


def _locked_elsewhere(path):
    """Whether an flock on `path` is held (a new open file conflicts)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


@pytest.mark.slow
def test_second_process_is_refused_and_a_killed_holder_never_blocks(tmp_path):
    backup_dir = tmp_path / "backup"
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="2",
        KERAS_BACKEND="tensorflow",
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(backup_dir)],
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        model = _model()
        with pytest.raises(
            BackupDirectoryInUseError, match=f"pid {holder.pid} on host"
        ) as info:
            _fit(
                model,
                AtomicBackupAndRestore(backup_dir, delete_checkpoint=False),
            )
        assert "its own backup_dir" in str(info.value)
        assert os.listdir(backup_dir) == [".writer.lock"]  # nothing written
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.communicate(timeout=60)
    # The holder crashed: its lock died with it.
    backup = AtomicBackupAndRestore(backup_dir, delete_checkpoint=False)
    _fit(model, backup)
    assert backup.read_metadata()["epoch"] == 2
    assert ".writer.lock" not in os.listdir(backup_dir)  # released at the end


def test_lock_is_held_during_fit_and_released_after(tmp_path):
    backup_dir = tmp_path / "backup"
    seen = []

    class Probe(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen.append(_locked_elsewhere(backup_dir / ".writer.lock"))

    model = _model()
    x = np.ones((8, 3), "float32")
    model.fit(
        x,
        np.zeros((8, 2), "float32"),
        epochs=2,
        verbose=0,
        callbacks=[AtomicBackupAndRestore(backup_dir), Probe()],
    )
    assert seen == [True, True]
    assert not backup_dir.exists()  # delete_checkpoint=True, lock included


def test_same_process_takes_over_after_a_fit_that_raised(tmp_path):
    backup_dir = tmp_path / "backup"
    model = _model()

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise RuntimeError("interrupted")

    first = AtomicBackupAndRestore(backup_dir, delete_checkpoint=False)
    x = np.ones((8, 3), "float32")
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(
            x,
            np.zeros((8, 2), "float32"),
            epochs=3,
            verbose=0,
            callbacks=[first, Crash()],
        )  # on_train_end never runs
    assert _locked_elsewhere(backup_dir / ".writer.lock")
    second = AtomicBackupAndRestore(backup_dir, delete_checkpoint=False)
    second.set_model(model)
    second.on_train_begin()  # takes the lock over, not refused
    assert model._initial_epoch == 1
    first.on_train_end()  # the old owner cannot release the new one's lock
    assert _locked_elsewhere(backup_dir / ".writer.lock")
    second.on_train_end()
    assert not (backup_dir / ".writer.lock").exists()
    third = AtomicBackupAndRestore(backup_dir, delete_checkpoint=False)
    _fit(model, third, epochs=3)  # resumes
    assert third.read_metadata()["epoch"] == 3
