"""One Distiller step on JAX: `keras.distribution.DataParallel` vs one device.

Run by tests/test_backends.py as

    KERAS_BACKEND=jax XLA_FLAGS=--xla_force_host_platform_device_count=2 \
        python tests/jax_data_parallel_script.py \
            single|data_parallel|multiprocess ...

`single` prints one JSON line with the student's and the connectors' weights
after STEPS steps on the same global batches on one device; `data_parallel`
the same (and the devices the batch and the variables were laid out on)
under `DataParallel`, after the one-device run in the same process (under
`"single"`).
`multiprocess PROCESS_ID PORT` is the same step with `jax.distributed` over
two processes on 127.0.0.1, one CPU device each.
"""

import json
import os
import sys

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from backend_utils import to_numpy  # noqa: E402
from builders import all_losses  # noqa: E402
from builders import cnn  # noqa: E402
from builders import data  # noqa: E402
from builders import sparse_ce  # noqa: E402

STEPS = 2
GLOBAL_BATCH = 8


def build():
    from keras_kd import Distiller

    keras.utils.set_random_seed(0)
    teacher = cnn(8, "teacher")
    student = cnn(4, "student", fused=True)
    distiller = Distiller(teacher, student, all_losses())
    distiller.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=sparse_ce()
    )
    return distiller


def result(distiller, **extra):
    weights = {
        v.path: to_numpy(v).tolist() for v in distiller.trainable_variables
    }
    stats = {
        v.path: to_numpy(v).tolist()
        for v in distiller.student.non_trainable_variables
    }
    return dict(
        weights=weights,
        batch_norm_statistics=stats,
        devices=len(jax.devices()),
        **extra,
    )


def main(mode, *args):
    x, y = data(n=GLOBAL_BATCH * STEPS, seed=3)
    single = None
    if mode in ("single", "data_parallel"):
        distiller = build()
        logs = distiller.fit(
            x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0, shuffle=False
        ).history
        single = result(distiller, loss=logs["loss"][-1])
        if mode == "single":
            print(json.dumps(single))
            return
        keras.backend.clear_session()  # the same layer names again
    if mode == "multiprocess":
        process_id, port = int(args[0]), int(args[1])
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{port}",
            num_processes=2,
            process_id=process_id,
            initialization_timeout=60,
        )
    devices = jax.devices()
    assert len(devices) == 2, devices
    # Multi-process: each process feeds its own shard (below), so Keras must
    # not shard the input again (it can only auto-shard a tf.data.Dataset).
    keras.distribution.set_distribution(
        keras.distribution.DataParallel(
            devices=devices, auto_shard_dataset=mode != "multiprocess"
        )
    )
    distiller = build()
    if mode == "multiprocess":
        # Each process feeds its half of every global batch.
        per_process = GLOBAL_BATCH // 2
        keep = np.concatenate(
            [
                np.arange(
                    s * GLOBAL_BATCH + process_id * per_process,
                    s * GLOBAL_BATCH + (process_id + 1) * per_process,
                )
                for s in range(STEPS)
            ]
        )
        x, y = x[keep], y[keep]
        batch = per_process
    else:
        batch = GLOBAL_BATCH
    logs = distiller.fit(
        x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False
    ).history
    kernel = distiller.student.get_layer("conv1").kernel.value
    print(
        json.dumps(
            result(
                distiller,
                loss=logs["loss"][-1],
                variable_devices=len(kernel.sharding.device_set),
                distribution=type(keras.distribution.distribution()).__name__,
                single=single,
            )
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
