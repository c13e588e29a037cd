"""`AtomicBackupAndRestore`: resume after a crash without losing a
checkpoint."""

import json
import os
import socket
import time

import keras

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

_PREFIX = "checkpoint-"
_SUFFIX = ".weights.h5"
_TEMP = ".tmp-"
_LOCK = ".writer.lock"
# realpath of a backup_dir -> [fd of its locked .writer.lock, owning callback]
_HELD = {}


class BackupDirectoryInUseError(RuntimeError):
    """Another training is writing to the same `backup_dir`."""


def _fsync(path):
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path):
    if not hasattr(os, "O_DIRECTORY"):  # Windows cannot open directories
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path, text):
    """Writes `text` to `path` so that readers see the old or the new file.

    Temp file in the same directory, flushed and fsynced, then `os.replace`.
    """
    directory, name = os.path.split(os.path.abspath(path))
    temp = os.path.join(directory, f"{_TEMP}{os.getpid()}-{name}")
    with open(temp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    _fsync_dir(directory)


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`keras.callbacks.BackupAndRestore` whose checkpoint survives any crash.

    Keras 3.15's callback writes `latest.weights.h5` in place (opening it for
    writing truncates the last good checkpoint) and then
    `training_metadata.json`. A process killed during the first write leaves
    a torn weights file that cannot be loaded, so training cannot resume;
    one killed between the two writes leaves new weights beside the old
    epoch number, so the resumed run silently trains an epoch twice.

    This callback writes each checkpoint to a new file (a temporary name,
    fsynced, renamed to `checkpoint-<n>.weights.h5`), then commits it by
    replacing `training_metadata.json` atomically (temp file, fsync,
    `os.replace`); the metadata names the weights file it belongs to. Only
    then is the previous checkpoint deleted. Whenever the process dies, the
    metadata names a complete weights file of the same step.

    With a `keras_kd.Distiller` the checkpoint holds the student, the
    connectors, the optimizer state (loss scale included), the loss weights
    and temperatures; keras_kd's schedules set the weights from the epoch,
    so a resumed run continues in the right stage. The finished run equals
    an uninterrupted one when `save_freq="epoch"` (Keras restarts the
    interrupted epoch from its first batch, so with an integer `save_freq`
    the batches before the last save are trained twice), an epoch's input
    order does not depend on how many epochs the process has run
    (`shuffle=False`, or a pipeline seeded by the epoch) and ops are
    deterministic (`tf.config.experimental.enable_op_determinism()`).

    Local file systems only (`os.replace`). Give each worker of a
    multi-worker job its own `backup_dir`.

    One writer per directory: `fit` takes an exclusive `fcntl.flock` on
    `backup_dir/.writer.lock` (which records the pid, host and start time)
    and holds it until training ends. A second training given the same
    directory, in another process, raises `BackupDirectoryInUseError` at
    the start of its `fit`, naming the holder, before it reads or writes
    anything there. The operating system releases the lock when the holder
    exits, so a killed or crashed run never blocks the next one. Within one
    process a new callback for the same directory takes the lock over (a
    `fit` that raised never reached `on_train_end`; rerunning it must
    work), so two threads training into one directory are not detected.
    Without `fcntl` (Windows) there is no check.

    Args:
        backup_dir: directory for the checkpoint (created if missing).
        save_freq: `"epoch"` or a number of batches. Defaults to `"epoch"`.
        delete_checkpoint: delete `backup_dir` when training ends normally.
            Defaults to `True`.

    Example:

    ```python
    from keras_kd.backup import AtomicBackupAndRestore

    backup = AtomicBackupAndRestore("runs/run1/backup")
    distiller.fit(x, y, epochs=30, shuffle=False, callbacks=[
        backup, keras_kd.callbacks.ActivationBoundarySchedule(5)])
    # Killed? Run the same command again: it resumes at the last epoch.
    ```
    """

    def __init__(self, backup_dir, save_freq="epoch", delete_checkpoint=True):
        if "://" in str(backup_dir):
            raise ValueError(
                "AtomicBackupAndRestore writes to a local file system "
                f"(os.replace); received backup_dir={backup_dir!r}. Use a "
                "local directory, or keras.callbacks.BackupAndRestore for "
                "remote storage."
            )
        super().__init__(
            str(backup_dir),
            save_freq=save_freq,
            double_checkpoint=False,
            delete_checkpoint=delete_checkpoint,
        )
        self._sequence = 0

    def on_train_begin(self, logs=None):
        self._acquire_lock()
        super().on_train_begin(logs)

    def on_train_end(self, logs=None):
        try:
            super().on_train_end(logs)
        finally:
            self._release_lock()

    def _acquire_lock(self):
        """Holds `backup_dir/.writer.lock`, or raises if another run does."""
        if fcntl is None:  # pragma: no cover - Windows
            return
        os.makedirs(self.backup_dir, exist_ok=True)
        key = os.path.realpath(self.backup_dir)
        if key in _HELD:  # this process holds it: take over
            _HELD[key][1] = self
            return
        path = os.path.join(key, _LOCK)
        while True:
            os.makedirs(key, exist_ok=True)  # a finishing run may delete it
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.read(fd, 4096).decode(errors="replace")
                os.close(fd)
                raise BackupDirectoryInUseError(_in_use_message(key, holder))
            try:  # a finishing run may have just unlinked the file
                same = os.path.samestat(os.fstat(fd), os.stat(path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        record = json.dumps(
            {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            }
        )
        os.ftruncate(fd, 0)
        os.pwrite(fd, record.encode(), 0)
        _HELD[key] = [fd, self]

    def _release_lock(self):
        key = os.path.realpath(self.backup_dir)
        held = _HELD.get(key)
        if held is None or held[1] is not self:
            return
        del _HELD[key]
        try:
            os.remove(os.path.join(key, _LOCK))  # still locked: no race
        except FileNotFoundError:
            pass
        os.close(held[0])

    def read_metadata(self):
        """The committed checkpoint's metadata, or `None` if there is none."""
        if not os.path.exists(self._training_metadata_path):
            return None
        with open(self._training_metadata_path) as f:
            return json.load(f)

    def _load_model(self):
        metadata = self.read_metadata()
        if metadata is None or "weights" not in metadata:
            return super()._load_model()  # nothing, or Keras's own layout
        model = self.model
        if not model.built:
            raise ValueError(
                f"Cannot restore into the unbuilt model '{model.name}'. "
                "Build it (call it on a batch) before `fit()`."
            )
        if model.optimizer is not None and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        model.load_weights(os.path.join(self.backup_dir, metadata["weights"]))
        self._sequence = int(metadata.get("sequence", 0))
        self._current_epoch = int(metadata["epoch"])
        model._initial_epoch = self._current_epoch  # read by Keras's fit()

    def on_epoch_begin(self, epoch, logs=None):
        # A save in the middle of this epoch resumes at its start.
        self._current_epoch = epoch

    def _save_model(self):
        directory = self.backup_dir
        os.makedirs(directory, exist_ok=True)
        self._sequence += 1
        name = f"{_PREFIX}{self._sequence:08d}{_SUFFIX}"
        temp = os.path.join(directory, f"{_TEMP}{os.getpid()}-{name}")
        self.model.save_weights(temp, overwrite=True)
        _fsync(temp)
        os.replace(temp, os.path.join(directory, name))
        metadata = {
            "epoch": self._current_epoch,
            "batch": self._last_batch_seen,
            "weights": name,
            "sequence": self._sequence,
        }
        write_atomically(self._training_metadata_path, json.dumps(metadata))
        self._remove_stale(keep=name)

    def _remove_stale(self, keep):
        for entry in os.listdir(self.backup_dir):
            ours = entry.startswith(_TEMP) or (
                entry.startswith(_PREFIX) and entry.endswith(_SUFFIX)
            )
            if ours and entry != keep:
                try:
                    os.remove(os.path.join(self.backup_dir, entry))
                except FileNotFoundError:
                    pass


def _in_use_message(directory, holder):
    try:
        info = json.loads(holder)
        who = (
            f"pid {info['pid']} on host '{info['host']}' (since "
            f"{info['since']})"
        )
    except (ValueError, KeyError, TypeError):
        who = "another process"
    return (
        f"The backup directory '{directory}' is in use by another training: "
        f"{who}. Two trainings sharing one backup_dir delete each other's "
        "checkpoints. Give this run its own backup_dir, or wait for that "
        f"one to end. (The lock is an flock on '{_LOCK}' there; the system "
        "drops it when that process exits, so a crashed run never blocks.)"
    )
