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
- The `MultiWorkerMirroredStrategy` workarounds (keras-team/keras#20585) are
  TensorFlow only and live in `keras_kd.backend.tensorflow`, with the
  replica count (`keras_kd.backend.get().replicas_in_sync()`).
"""

import keras


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
