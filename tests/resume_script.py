"""A distillation run that test_resume kills and restarts (a subprocess).

    python resume_script.py BACKUP_DIR OUT.npz [--callback atomic|keras]
        [--pause-at EPOCH:BATCH] [--pause-in-save N]

Trains KD + activation boundary (with a connector) under
`ActivationBoundarySchedule` with Adam, deterministic ops and a fixed seed,
3 epochs of 4 batches, checkpointing every epoch. `--pause-at` prints
"PAUSED" and sleeps at the start of that batch; `--pause-in-save N` does so
in the middle of the N-th checkpoint write (the file is left half written),
so the test can SIGKILL the process there. The finished run writes every
distiller and optimizer variable to OUT.npz.
"""

import argparse
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from backend_utils import without_graph_optimizer  # noqa: E402
from builders import cnn  # noqa: E402
from builders import data  # noqa: E402
from builders import sparse_ce  # noqa: E402

from keras_kd import Distiller  # noqa: E402
from keras_kd import losses as L  # noqa: E402
from keras_kd.backup import AtomicBackupAndRestore  # noqa: E402
from keras_kd.callbacks import ActivationBoundarySchedule  # noqa: E402

without_graph_optimizer()

EPOCHS = 3


def pause(message):
    print(message, flush=True)
    time.sleep(600)  # the test kills the process now
    sys.exit("not killed")


class PauseAt(keras.callbacks.Callback):
    def __init__(self, epoch, batch):
        super().__init__()
        self.at, self.epoch = (epoch, batch), None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            pause("PAUSED")


def pause_in_save(n):
    original = keras.Model.save_weights
    calls = []

    def save_weights(self, filepath, *args, **kwargs):
        original(self, filepath, *args, **kwargs)
        calls.append(filepath)
        if len(calls) == n:  # leave the file half written, then die
            size = os.path.getsize(filepath)
            with open(filepath, "r+b") as f:
                f.truncate(size // 2)
            pause("PAUSED")

    keras.Model.save_weights = save_weights


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("backup_dir")
    parser.add_argument("out")
    parser.add_argument("--callback", default="atomic")
    parser.add_argument("--pause-at")
    parser.add_argument("--pause-in-save", type=int)
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    tf.config.experimental.enable_op_determinism()
    teacher = cnn(8, "teacher")
    student = cnn(4, "student", fused=True)
    distiller = Distiller(
        teacher,
        student,
        [
            L.LogitsDistillation(temperature=4.0),
            L.ActivationBoundary(["relu1", "relu2"], ["conv1", "relu2"]),
        ],
    )
    distiller.compile(optimizer=keras.optimizers.Adam(1e-2), loss=sparse_ce())
    if args.callback == "atomic":
        backup = AtomicBackupAndRestore(
            args.backup_dir, delete_checkpoint=False
        )
    else:
        backup = keras.callbacks.BackupAndRestore(
            args.backup_dir, delete_checkpoint=False
        )
    callbacks = [backup, ActivationBoundarySchedule(init_epochs=1)]
    if args.pause_at:
        callbacks.append(PauseAt(*map(int, args.pause_at.split(":"))))
    if args.pause_in_save:
        pause_in_save(args.pause_in_save)
    x, y = data(n=32)
    distiller.fit(
        x,
        y,
        batch_size=8,
        epochs=EPOCHS,
        shuffle=False,
        verbose=0,
        callbacks=callbacks,
    )
    variables = list(distiller.weights) + list(distiller.optimizer.variables)
    np.savez(
        args.out,
        *[to_numpy(v) for v in variables],
        names=np.array([v.path for v in variables]),
        loss_weights=np.array(list(distiller.loss_weights.values())),
    )


if __name__ == "__main__":
    main()
