"""Scaling the Distiller out: what is the same on every backend, and where
the backend-specific parts live.

The loss reduction needs nothing here: every term is divided by the global
batch, so one step on N devices equals one step on one device with the same
global batch. Under `tf.distribute` that is `local_batch * num_replicas` (see
`keras_kd.backend.tensorflow`); under JAX's `keras.distribution.DataParallel`
the step already sees the global batch.

- `synchronize_batch_norm`: connectors (keras_kd's own layers) normalise over
  the *global* batch under a multi-replica `tf.distribute` strategy, so their
  updates do not depend on the number of devices. The student's own
  BatchNormalization layers are left as the user built them: pass
  `synchronized=True` to them for device-count-independent results (plain
  data parallelism normalises per replica, which is a different model).
- `is_multi_worker`, `first_local_batch`, `shape_logs`: the
  `MultiWorkerMirroredStrategy` workarounds (keras-team/keras#20585),
  TensorFlow only; they live in `keras_kd.backend.tensorflow`.
"""

import keras


def replicas_in_sync():
    """Replicas whose batches form one global batch (1 outside
    tf.distribute)."""
    from keras_kd import backend

    return backend.get().replicas_in_sync()


def synchronize_batch_norm(layer):
    """Makes every `BatchNormalization` inside `layer` use global-batch stats.

    Returns the number of layers changed.
    """
    changed = 0
    for sublayer in layer._flatten_layers(include_self=True):
        if isinstance(sublayer, keras.layers.BatchNormalization):
            sublayer.synchronized = True
            changed += 1
    return changed


def _tensorflow():
    from keras_kd.backend import tensorflow

    return tensorflow


def is_multi_worker(strategy):
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` with >1 worker."""
    return _tensorflow().is_multi_worker(strategy)


def first_local_batch(iterator, strategy):
    """The first batch of a distributed epoch iterator, as one replica sees
    it."""
    return _tensorflow().first_local_batch(iterator, strategy)


def shape_logs(logs, strategy):
    """Gives scalar logs shape `(1,)` in multi-worker mode."""
    return _tensorflow().shape_logs(logs, strategy)
