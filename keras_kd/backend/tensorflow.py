"""The Distiller on the TensorFlow backend: `tf.distribute` and the guard.

Everything TensorFlow-specific the Distiller needs is here:

- `replicas_in_sync`: every term is divided by the global batch
  (`local_batch * num_replicas_in_sync`) and the replicas' gradients are
  summed, so one step on N replicas equals one step on one device with the
  same global batch.
- The non-finite guard: `train_step` is Keras's own TensorFlow step with the
  optimizer update in a `cond` on the guard's flag. Under a multi-replica
  strategy the replicas first agree on the flag (an all-reduce), and the
  `cond` runs in cross-replica context, as `LossScaleOptimizer` does, since
  `apply` calls `merge_call`. `tf.debugging.check_numerics` is not used: XLA
  compiles it to a pass-through.
- `_maybe_symbolic_build` and `shape_logs`: the two places where Keras
  3.15's `fit()` fails under `MultiWorkerMirroredStrategy`
  (keras-team/keras#20585). Keras's symbolic build reduces the first batch
  with `strategy.reduce(...)`, which the collective strategy cannot do on an
  `(x, y)` tuple of per-replica values; and Keras reduces the step's logs
  with `strategy.reduce("MEAN", value, axis=0)`, which fails on scalars. The
  Distiller builds from one replica's batch instead and returns its logs
  with shape `(1,)` in multi-worker mode (every replica holds the same,
  already synchronised metric values, so their mean is that value).
"""

import keras
import tensorflow as tf

from keras_kd import numerics


class NonFiniteLossError(
    numerics.NonFiniteLossError, tf.errors.InvalidArgumentError
):
    """`keras_kd.NonFiniteLossError`, also a `tf.errors.InvalidArgumentError`.

    keras_kd raised `InvalidArgumentError` for non-finite losses before it
    had its own exception type; handlers written for it keep working.
    """

    def __init__(self, term):
        self.term = term
        tf.errors.InvalidArgumentError.__init__(
            self, None, None, numerics.non_finite_message(term)
        )

    def __str__(self):
        return self.message


NonFiniteLossError.__module__ = "keras_kd"


def replicas_in_sync():
    """Number of replicas of the strategy in scope (1 outside any strategy)."""
    return tf.distribute.get_strategy().num_replicas_in_sync


def replica_id():
    """This replica's index in its strategy (0 outside any strategy)."""
    context = tf.distribute.get_replica_context()
    if context is None:
        return 0
    return context.replica_id_in_sync_group


def all_gather(value):
    """`value` concatenated over the replicas (batch axis), differentiably.

    `ReplicaContext.all_gather` accepts parts of different lengths (a short
    last batch) and its gradient hands each replica the slice of its own
    examples.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_gather(value, axis=0)


def input_gradient(function, x):
    """`(d sum / dx, aux)` of `function(x) -> (sum, aux)`, inside the step.

    A tape of its own, watching `x` only: the networks' variables are not
    differentiated (the caller stops the result's gradient).
    """
    with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(x)
        value, aux = function(x)
    gradient = tape.gradient(
        value, x, unconnected_gradients=tf.UnconnectedGradients.ZERO
    )
    return gradient, aux


def sync_variables(model):
    """Nothing: TensorFlow's step reads the variables themselves."""
    return None


def is_multi_worker(strategy):
    """Whether `strategy` is a `MultiWorkerMirroredStrategy` with >1 worker.

    Mirrors the test Keras uses to pick its multi-worker reductions.
    """
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return False
    in_multi_worker_mode = getattr(
        strategy.extended, "_in_multi_worker_mode", None
    )
    if in_multi_worker_mode is None:
        return True
    return bool(in_multi_worker_mode())


def first_local_batch(iterator, strategy):
    """The first batch of a distributed epoch iterator, as one replica sees it.

    Keras's symbolic build only needs the shapes and dtypes of a batch.
    """
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


def record_non_finite(distiller, bad):
    """Keeps this step's first bad term index for `train_step`."""
    distiller._guard.bad = bad


def _agree_across_replicas(bad, size):
    """The smallest bad index over all replicas (-1 if none), on each.

    `ReduceOp` has only SUM and MEAN: each replica contributes a one-hot row
    of its first bad index (`size` = number of checked values).
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return bad
    ops = keras.ops
    row = ops.one_hot(bad, size, dtype="float32")  # all zeros for -1
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, row)
    seen = ops.greater(total, 0)
    first = ops.cast(ops.argmax(ops.cast(seen, "int32")), "int32")
    return ops.where(ops.any(seen), first, ops.cast(-1, "int32"))


def apply_if_finite(optimizer, gradients, variables, bad, flag, size):
    """Applies the update only if the flag stays clean (XLA-compatible).

    `flag` is an int32 variable: -1 while every step was finite, else the
    index of the first non-finite term. Once set, later steps of the same
    compiled call are skipped too.
    """
    if not optimizer.built:
        optimizer.build(variables)
    bad = _agree_across_replicas(bad, size)
    new_flag = numerics.sticky(flag.value, bad)
    flag.assign(new_flag)
    ok = keras.ops.less(new_flag, 0)

    def apply():
        optimizer.apply(gradients, variables)

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        keras.ops.cond(ok, apply, lambda: None)
        return

    def cross_replica(strategy, gradients, variables, ok):
        ok = strategy.experimental_local_results(ok)[0]

        def apply_everywhere():
            strategy.extended.call_for_each_replica(
                optimizer.apply, args=(gradients, variables)
            )

        keras.ops.cond(ok, apply_everywhere, lambda: None)

    tf.distribute.get_replica_context().merge_call(
        cross_replica, args=(gradients, variables, ok)
    )


def raise_on_non_finite(function, flag, names):
    """Wraps a train function: raises after a call that flagged a bad term."""

    def guarded(iterator):
        logs = function(iterator)
        index = int(flag.numpy())
        if index >= 0:
            flag.assign(-1)  # the weights are finite: training may resume
            raise numerics.guard_error(
                names[index], NonFiniteLossError
            ) from None
        return logs

    guarded.keras_kd_guarded = True
    return guarded


def _replica_mean(loss, batch, loss_module):
    """What a replica logs so that the summed logs give the global total.

    Each replica's `loss` is its share of the global total; the tracker
    needs the replica's own mean (weighted by its examples): `loss *
    global batch / local batch`. Keras multiplies by the replica count
    instead, which is the same only when the batch splits evenly (a short
    last batch of 15 splits 8 / 7).
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return loss_module.unscale_loss_for_distribution(loss)
    local = tf.cast(batch, loss.dtype)
    total = context.all_reduce(tf.distribute.ReduceOp.SUM, local)
    return loss * total / local


class TrainerMixin:
    """TensorFlow pieces of `Distiller` (see the module docstring)."""

    def train_step(self, data):
        from keras.src.losses import loss as loss_module

        strategy = self.distribute_strategy
        self._clear_step_inputs()
        if not self.check_finite:
            return shape_logs(super().train_step(data), strategy)
        # Keras's TensorFlow train step, with the update behind the guard.
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(
                x=x,
                y=y,
                y_pred=y_pred,
                sample_weight=sample_weight,
                training=True,
            )
            batch = tf.shape(
                next(i for i in keras.tree.flatten(x) if i is not None)
            )[0]
            self._loss_tracker.update_state(
                _replica_mean(loss, batch, loss_module),
                sample_weight=batch,
            )
            scaled = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        apply_if_finite(
            self.optimizer,
            gradients,
            variables,
            self._guard.bad,
            self._non_finite_flag,
            len(self._guard_names()),
        )
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        return shape_logs(logs, strategy)

    def test_step(self, data):
        return shape_logs(super().test_step(data), self.distribute_strategy)

    def make_train_function(self, force=False):
        super().make_train_function(force=force)
        if self.check_finite and not getattr(
            self.train_function, "keras_kd_guarded", False
        ):
            self.train_function = raise_on_non_finite(
                self.train_function,
                self._non_finite_flag,
                self._guard_names(),
            )
        return self.train_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras reduces the first batch across replicas to build; the
        # collective strategy cannot (keras-team/keras#20585). One replica's
        # batch has the shapes the build needs.
        strategy = self.distribute_strategy
        if iterator is not None and is_multi_worker(strategy):
            data_batch = first_local_batch(iterator, strategy)
            iterator = None
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )
