"""Runs distributed distillation in a fresh process (used by test_distribute).

Logical devices and `TF_CONFIG` must be set before TensorFlow initialises,
so these runs cannot share the pytest process.

    python distribute_script.py mirrored OUT.json
        One step of every loss on 1 device and on 2 logical CPU devices
        (MirroredStrategy) with the same global batch; writes the largest
        weight and loss differences per loss.
    python distribute_script.py worker OUT.npz
        `fit` + `evaluate` under MultiWorkerMirroredStrategy when TF_CONFIG
        is set (one process per worker), else on one device; writes the
        distiller's weights and logs.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

MODE, OUT = sys.argv[1], sys.argv[2]
if MODE == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    STRATEGY = tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")]
    )
elif "TF_CONFIG" in os.environ:
    STRATEGY = tf.distribute.MultiWorkerMirroredStrategy()
else:
    STRATEGY = tf.distribute.get_strategy()

import keras  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from builders import cnn  # noqa: E402
from builders import data  # noqa: E402

from keras_kd import Distiller  # noqa: E402
from keras_kd import losses as L  # noqa: E402
from keras_kd.distribute import synchronize_batch_norm  # noqa: E402

LOSSES = {
    "logits_distillation": lambda: L.LogitsDistillation(temperature=4.0),
    # 4 student channels -> 8 teacher channels: AB with a connector (+ BN).
    "activation_boundary": lambda: L.ActivationBoundary(
        ["relu1", "relu2"], ["conv1", "relu2"]
    ),
    "nst_polynomial": lambda: L.NeuronSelectivityTransfer(
        "relu2", "relu2", kernel="polynomial"
    ),
    "nst_linear": lambda: L.NeuronSelectivityTransfer(
        "relu2", "relu2", kernel="linear"
    ),
    "nst_gaussian": lambda: L.NeuronSelectivityTransfer(
        "relu2", "relu2", kernel="gaussian"
    ),
    "fitnets_hint": lambda: L.FitNetsHint("bn2", "bn2"),
    "attention_transfer": lambda: L.AttentionTransfer("relu2", "relu2"),
}


def build(losses, sync_student_bn=True):
    keras.utils.set_random_seed(0)
    teacher = cnn(8, "teacher", softmax=True)
    student = cnn(4, "student", fused=True, softmax=True)
    if sync_student_bn:
        synchronize_batch_norm(student)
    distiller = Distiller(teacher, student, losses)
    # A string task loss: Keras's own Distiller doubles its updates on two
    # replicas; ours must not.
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
    )
    return distiller


def one_step(name, strategy, sync_student_bn=True):
    x, y = data(n=16)
    with strategy.scope():
        distiller = build([LOSSES[name]()], sync_student_bn)
    logs = distiller.fit(
        x, y, batch_size=16, epochs=1, verbose=0, shuffle=False
    ).history
    weights = [to_numpy(v) for v in distiller.weights]
    return weights, [v.path for v in distiller.weights], logs


def mirrored():
    assert STRATEGY.num_replicas_in_sync == 2
    report = {}
    runs = [(name, True) for name in LOSSES] + [("activation_boundary", False)]
    for name, sync in runs:
        one, paths, one_logs = one_step(
            name, tf.distribute.get_strategy(), sync
        )
        two, _, two_logs = one_step(name, STRATEGY, sync)
        diffs = [float(np.max(np.abs(a - b))) for a, b in zip(one, two)]
        worst = int(np.argmax(diffs))
        report[name if sync else name + "_per_replica_bn"] = {
            "weight_diff": diffs[worst],
            "worst_weight": paths[worst],
            "loss_rel_diff": max(
                abs(two_logs[k][0] - v[0]) / max(abs(v[0]), 1e-12)
                for k, v in one_logs.items()
            ),
            "logs": {k: v[0] for k, v in two_logs.items()},
        }
    with open(OUT, "w") as f:
        json.dump(report, f, indent=1)


def worker():
    x, y = data(n=32)
    with STRATEGY.scope():
        distiller = build(
            [LOSSES["logits_distillation"](), LOSSES["activation_boundary"]()]
        )
    history = distiller.fit(
        x, y, batch_size=16, epochs=2, verbose=0, shuffle=False
    ).history
    evaluation = distiller.evaluate(
        x, y, batch_size=16, verbose=0, return_dict=True
    )
    np.savez(
        OUT,
        *[to_numpy(v) for v in distiller.weights],
        history=json.dumps(history),
        evaluation=json.dumps(evaluation),
        replicas=STRATEGY.num_replicas_in_sync,
    )


if __name__ == "__main__":
    {"mirrored": mirrored, "worker": worker}[MODE]()
