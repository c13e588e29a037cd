"""A teacher's training or a route-constrained distillation that
test_route kills and restarts (a subprocess, TensorFlow).

    python route_script.py teacher ROUTE_DIR BACKUP_DIR [--pause-at EPOCH]
    python route_script.py distill ROUTE_DIR BACKUP_DIR OUT.json
        [--pause-at EPOCH]

`teacher`: 5 epochs with `RouteRecorder(every_epochs=1)` and
`AtomicBackupAndRestore`. `distill`: 6 epochs, `RouteConstrainedOptimization`
over the route (3 stages of 2 epochs) with `AtomicBackupAndRestore`; writes
the stage and anchor of every epoch (read in the step by a probe) to
OUT.json. `--pause-at E` prints "PAUSED" and sleeps at the start of epoch E
(from 0), after the checkpoints of the epochs before it, so the test can
SIGKILL the process there.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from backend_utils import without_graph_optimizer  # noqa: E402

from keras_kd import Distiller  # noqa: E402
from keras_kd import callbacks as kd_callbacks  # noqa: E402
from keras_kd import losses as L  # noqa: E402
from keras_kd.backup import AtomicBackupAndRestore  # noqa: E402
from keras_kd.procedures import RouteConstrainedOptimization  # noqa: E402
from keras_kd.procedures import RouteRecorder  # noqa: E402

without_graph_optimizer()


class PauseAt(keras.callbacks.Callback):
    def __init__(self, epoch):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            print("PAUSED", flush=True)
            time.sleep(600)  # the test kills the process now
            sys.exit("not killed")


class Record(keras.callbacks.Callback):
    """The stage and anchor the distiller trained with, per epoch."""

    def __init__(self, procedure, out):
        super().__init__()
        self.procedure, self.out = procedure, out

    def on_epoch_end(self, epoch, logs=None):
        rows = []
        if os.path.exists(self.out):
            with open(self.out) as f:
                rows = json.load(f)
        rows.append(
            {
                "epoch": epoch,
                "stage": int(keras.ops.convert_to_numpy(self.procedure.stage)),
                "anchor": int(
                    keras.ops.convert_to_numpy(self.procedure.anchor)
                ),
                "teacher_bias": float(
                    keras.ops.convert_to_numpy(
                        self.model.teacher.get_layer("out").bias
                    )[0]
                ),
            }
        )
        with open(self.out, "w") as f:
            json.dump(rows, f)


def model(name):
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(inputs)
    return keras.Model(
        inputs, keras.layers.Dense(3, name="out")(hidden), name=name
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["teacher", "distill"])
    parser.add_argument("route")
    parser.add_argument("backup")
    parser.add_argument("out", nargs="?")
    parser.add_argument("--pause-at", type=int, default=None)
    args = parser.parse_args()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = (x[:, 0] > 0).astype("int32") + (x[:, 1] > 0).astype("int32")
    extra = [] if args.pause_at is None else [PauseAt(args.pause_at)]
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    if args.mode == "teacher":
        teacher = model("teacher")
        teacher.compile("adam", loss)
        teacher.fit(
            x,
            y,
            epochs=5,
            batch_size=16,
            verbose=0,
            callbacks=[
                AtomicBackupAndRestore(args.backup),
                RouteRecorder(args.route, every_epochs=1),
                *extra,
            ],
        )
        return
    procedure = RouteConstrainedOptimization(args.route, stages=3, verbose=0)
    distiller = Distiller(
        model("teacher"),
        model("student"),
        L.LogitsDistillation(),
        procedures=procedure,
    )
    distiller.compile("adam", loss)
    distiller.fit(
        x,
        y,
        epochs=6,
        batch_size=16,
        verbose=0,
        callbacks=[
            AtomicBackupAndRestore(args.backup),
            *kd_callbacks.for_distiller(distiller),
            Record(procedure, args.out),
            *extra,
        ],
    )


if __name__ == "__main__":
    main()
