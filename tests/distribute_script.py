"""Runs distributed distillation in a fresh process (used by test_distribute).

Logical devices and `TF_CONFIG` must be set before TensorFlow initialises,
so these runs cannot share the pytest process.

    python distribute_script.py mirrored OUT.json
        One step of every loss on 1 device and on 2 logical CPU devices
        (MirroredStrategy) with the same global batch; writes the largest
        weight and loss differences per loss. Also KD with function
        matching (crops, flips, mixup or CutMix): distillation alone over a
        batch of 16 and a short batch of 15 that the replicas split 8 / 7,
        and with the task loss on mixed labels over one batch of 16.
    python distribute_script.py registry OUT.json
        Every method of the registry but those `mirrored` checks
        (`registry.build` on keras_kd's models), alone and with the task
        loss off, on 1 device and on 2
        logical CPU devices with the same global batches: 16 examples, then
        a short last batch of 15 that the replicas split 8 / 7. Writes the
        largest weight and logged-loss differences per method.
    python distribute_script.py procedures OUT.json
        Boundary-supporting samples on 2 logical CPU devices (each replica
        picks its own base samples) and on 1 device for each half of the
        batch; route-constrained optimisation on 2 devices (the anchor each
        stage's step reads). Writes the logged terms.
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
if MODE in ("mirrored", "registry", "procedures"):
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
from backend_utils import without_graph_optimizer  # noqa: E402
from builders import cnn  # noqa: E402
from builders import data  # noqa: E402

from keras_kd import Distiller  # noqa: E402
from keras_kd import losses as L  # noqa: E402
from keras_kd.distribute import synchronize_batch_norm  # noqa: E402

without_graph_optimizer()  # after the logical devices are set

LOSSES = {
    "logits_distillation": lambda: L.LogitsDistillation(temperature=4.0),
    # 4 student channels -> 8 teacher channels: AB with a connector (+ BN).
    "activation_boundary": lambda: L.ActivationBoundary(
        ["relu1", "relu2"], ["conv1", "relu2"]
    ),
    # One NST kernel: the kernel is per-example arithmetic (checked in
    # float64 for all three in tests/losses); the replicas' path is one.
    "nst_polynomial": lambda: L.NeuronSelectivityTransfer(
        "relu2", "relu2", kernel="polynomial"
    ),
    "fitnets_hint": lambda: L.FitNetsHint("bn2", "bn2"),
    "attention_transfer": lambda: L.AttentionTransfer("relu2", "relu2"),
    # KD on a batch augmented once for both networks (`one_step`).
    "function_matching": lambda: L.LogitsDistillation(temperature=4.0),
    "function_matching_labels": lambda: L.LogitsDistillation(temperature=4.0),
}


def build(losses, sync_student_bn=True, **options):
    keras.utils.set_random_seed(0)
    teacher = cnn(8, "teacher", softmax=True)
    student = cnn(4, "student", fused=True, softmax=True)
    if sync_student_bn:
        synchronize_batch_norm(student)
    distiller = Distiller(teacher, student, losses, **options)
    # A string task loss: Keras's own Distiller doubles its updates on two
    # replicas; ours must not.
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss="sparse_categorical_crossentropy",
    )
    return distiller


def one_step(name, strategy, sync_student_bn=True):
    n, options = 16, {}
    if name.startswith("function_matching"):
        from keras_kd import FunctionMatching

        options["function_matching"] = FunctionMatching(
            mixup_alpha=1.0, cutmix_alpha=1.0
        )
        if name == "function_matching":
            # The task loss off: Keras's compiled loss divides the local mean
            # by the replicas, which is not the global mean on 8 / 7.
            n, options["student_loss_weight"] = 31, 0.0
    x, y = data(n=n)
    with strategy.scope():
        distiller = build([LOSSES[name]()], sync_student_bn, **options)
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


# Per-example methods that `mirrored` already checks on 2 replicas (their
# short-batch path is the per-example one KD, DKD and FSP take here).
COVERED_BY_MIRRORED = ("ab", "at", "fitnets", "nst")


def registry_step(name, strategy):
    from keras_kd.losses import registry
    from keras_kd.models import conv_net

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 255, size=(31, 8, 8, 3)).astype("float32")
    y = rng.integers(0, 5, size=(31,))
    stats = dict(mean=[0.5] * 3, std=[0.29] * 3)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        teacher = conv_net((8, 8, 3), 5, (8, 16), name="teacher", **stats)
        student = conv_net((8, 8, 3), 5, (4, 8), name="student", **stats)
        synchronize_batch_norm(student)
        loss = registry.build(name, stages=2, facts={"num_examples": 31})
        # The task loss off: Keras's own compiled loss divides the local
        # mean by the replicas, which is not the global mean on 8 / 7.
        distiller = Distiller(teacher, student, [loss], student_loss_weight=0)
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="sparse_categorical_crossentropy",
        )
    inputs = x
    if "example_ids" in loss.requires:
        inputs = {"image": x, "example_id": np.arange(31)}
    logs = distiller.fit(
        inputs, y, batch_size=16, epochs=1, verbose=0, shuffle=False
    ).history
    return [to_numpy(v) for v in distiller.weights], logs


def registry_run():
    from keras_kd.losses import registry

    assert STRATEGY.num_replicas_in_sync == 2
    report = {}
    for name in registry.names():
        if name in COVERED_BY_MIRRORED:
            continue
        one, one_logs = registry_step(name, tf.distribute.get_strategy())
        two, two_logs = registry_step(name, STRATEGY)
        report[name] = {
            # Relative above 1: CRD's normalising constants are ~1e4.
            "weight_diff": max(
                float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a))))
                for a, b in zip(one, two)
            ),
            # The logged task loss is Keras's (see above); its weight is 0.
            "loss_rel_diff": max(
                abs(two_logs[k][0] - v[0]) / max(abs(v[0]), 1e-12)
                for k, v in one_logs.items()
                if k != "student_loss"
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


def bss_first_step(strategy, x, y, max_samples):
    from keras_kd.procedures import BoundarySupportingSamples

    with strategy.scope():
        keras.utils.set_random_seed(0)
        teacher = cnn(8, "teacher", softmax=True)
        student = cnn(8, "student", softmax=True)
        student.set_weights(
            [w + 0.01 * np.sign(w) for w in teacher.get_weights()]
        )
        distiller = Distiller(
            teacher,
            student,
            L.LogitsDistillation(temperature=3.0),
            procedures=BoundarySupportingSamples(
                max_samples=max_samples, seed=3, schedule=None
            ),
        )
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.1),
            loss="sparse_categorical_crossentropy",
        )
    before = [to_numpy(w) for w in teacher.weights]
    logs = distiller.fit(
        x, y, batch_size=len(x), epochs=1, verbose=0, shuffle=False
    ).history
    unchanged = all(
        np.array_equal(a, to_numpy(w)) for a, w in zip(before, teacher.weights)
    )
    return logs["bss_loss"][0], unchanged


def rco_probe(strategy, directory):
    from keras_kd.callbacks import for_distiller
    from keras_kd.procedures import Procedure
    from keras_kd.procedures import RouteConstrainedOptimization

    class Probe(Procedure):
        term_names = ("probe",)

        def default_term_weights(self):
            return {"probe": 0.0}

        def terms(self, context):
            value = keras.ops.cast(context.teacher[0], "float32")[:, 0]
            return {"probe": keras.ops.mean(value) / context.replicas}

    def dense(name):
        inputs = keras.Input((4,))
        hidden = keras.layers.Dense(8, name="hidden")(inputs)
        return keras.Model(
            inputs, keras.layers.Dense(3, name="out")(hidden), name=name
        )

    paths = []
    teacher = dense("teacher")
    for k in range(4):
        weights = [np.zeros_like(w) for w in teacher.get_weights()]
        weights[-1][:] = k + 1.0
        teacher.set_weights(weights)
        paths.append(os.path.join(directory, f"anchor{k}.weights.h5"))
        teacher.save_weights(paths[-1])
    with strategy.scope():
        distiller = Distiller(
            dense("teacher"),
            dense("student"),
            L.LogitsDistillation(),
            procedures=[
                RouteConstrainedOptimization(paths, stages=2, verbose=0),
                Probe(),
            ],
        )
        distiller.compile(
            optimizer=keras.optimizers.SGD(0.01),
            loss="sparse_categorical_crossentropy",
        )
    x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
    history = distiller.fit(
        x,
        np.zeros(16, "int32"),
        batch_size=8,
        epochs=4,
        verbose=0,
        callbacks=for_distiller(distiller),
    ).history
    return history["probe_loss"]


def procedures():
    import tempfile

    assert STRATEGY.num_replicas_in_sync == 2
    x, _ = data(n=16)
    keras.utils.set_random_seed(0)
    y = np.argmax(to_numpy(cnn(8, "teacher", softmax=True)(x)), axis=-1)
    default = tf.distribute.get_strategy()
    two, two_unchanged = bss_first_step(STRATEGY, x, y, 8)
    halves = [
        bss_first_step(default, x[i : i + 8], y[i : i + 8], 4) for i in (0, 8)
    ]
    with tempfile.TemporaryDirectory() as directory:
        probe = rco_probe(STRATEGY, directory)
    report = {
        "bss_two_replicas": two,
        "bss_halves": [h[0] for h in halves],
        "teacher_unchanged": two_unchanged and all(h[1] for h in halves),
        "rco_probe": probe,
    }
    with open(OUT, "w") as f:
        json.dump(report, f, indent=1)


if __name__ == "__main__":
    {
        "mirrored": mirrored,
        "worker": worker,
        "registry": registry_run,
        "procedures": procedures,
    }[MODE]()
