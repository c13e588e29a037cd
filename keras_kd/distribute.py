"""What the Distiller does differently under `tf.distribute`.

The loss reduction itself needs nothing here: every term is divided by the
global batch (`local_batch * num_replicas_in_sync`) and the replicas' gradients
are summed, so one step on N replicas equals one step on one device with the
same global batch. This module holds the rest:

- `synchronize_batch_norm`: connectors (keras_kd's own layers) normalise over
  the *global* batch under a multi-replica strategy, so their updates do not
  depend on the number of devices. The student's own BatchNormalization layers
  are left as the user built them: pass `synchronized=True` to them for
  device-count-independent results (plain data parallelism normalises per
  replica, which is a different model).
- `first_local_batch` and `shape_logs`: the two places where Keras 3.15's
  `fit()` fails under `MultiWorkerMirroredStrategy` (keras-team/keras#20585).
  Keras's symbolic build reduces the first batch with `strategy.reduce(...)`,
  which the collective strategy cannot do on an `(x, y)` tuple of per-replica
  values; and Keras reduces the step's logs with
  `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars. The
  Distiller builds from one replica's batch instead and returns its logs with
  shape `(1,)` in multi-worker mode (every replica holds the same, already
  synchronised metric values, so their mean is that value).
"""

import keras


def _tf():
    import tensorflow as tf

    return tf


def replicas_in_sync():
    """Number of replicas of the strategy in scope (1 outside any strategy)."""
    tf = _tf()
    return tf.distribute.get_strategy().num_replicas_in_sync


def is_multi_worker(strategy):
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` with >1 worker.

    Mirrors the test Keras uses to pick its multi-worker reductions.
    """
    tf = _tf()
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_multi_worker_mode = getattr(
        strategy.extended, "_in_multi_worker_mode", None
    )
    if in_multi_worker_mode is None:
        return True
    return bool(in_multi_worker_mode())


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


def first_local_batch(iterator, strategy):
    """The first batch of a distributed epoch iterator, as one replica sees it.

    Keras's symbolic build only needs the shapes and dtypes of a batch.
    """
    tf = _tf()
    for _, _, data_iterator in iterator:
        batch = next(data_iterator)
        break
    else:
        return None

    def local(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    return tf.nest.map_structure(local, batch)


def shape_logs(logs, strategy):
    """Gives scalar logs shape `(1,)` in multi-worker mode (see module doc)."""
    if not is_multi_worker(strategy):
        return logs
    ops = keras.ops

    def reshape(value):
        if value is not None and len(getattr(value, "shape", ())) == 0:
            return ops.reshape(value, (1,))
        return value

    return keras.tree.map_structure(reshape, logs)
