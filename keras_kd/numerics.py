"""Mixed precision and the non-finite guard of the Distiller's train step.

Mixed precision. Every distillation loss is computed in float32 whatever the
policies (`DistillationLoss` layers are float32; features are cast before the
math). Keras wraps the optimizer in a `LossScaleOptimizer` only when the
*model's* policy is `mixed_float16`; a Distiller built under a float32 policy
around a float16 student would train without loss scaling, and small float16
gradients would underflow to zero. `needs_loss_scaling` detects that case, and
the Distiller wraps the optimizer itself.

Non-finite guard. The Distiller stops training, before the update, when a loss
term is NaN or Inf. In a normal graph that is `tf.debugging.check_numerics`,
which raises inside the step. XLA compiles `CheckNumerics` away: under
`jit_compile=True` the op passes NaN through silently (tested). There, the
step instead records the first non-finite term in a variable, skips the update
with a `cond` (as `LossScaleOptimizer` skips an overflowing step), and
`raise_on_non_finite` raises the same `InvalidArgumentError` from Python right
after the compiled function returns.
"""

import keras


def _tf():
    import tensorflow as tf

    return tf


def non_finite_message(name):
    return (
        f"keras_kd: the loss term '{name}' is not finite (NaN or Inf). "
        "Training stopped before this step's update was applied, so the "
        "weights are the last finite ones. Lower the learning rate or this "
        "term's weight, or check the input data for NaN/Inf."
    )


def computes_in_float16(layers):
    """Whether any of `layers` (or their sublayers) computes in float16."""
    for layer in layers:
        for sublayer in layer._flatten_layers(include_self=True):
            policy = getattr(sublayer, "dtype_policy", None)
            if policy is not None and policy.compute_dtype == "float16":
                return True
    return False


def needs_loss_scaling(optimizer, trained_layers):
    """Whether `optimizer` must be wrapped in a `LossScaleOptimizer`."""
    if optimizer is None or isinstance(
        optimizer, keras.optimizers.LossScaleOptimizer
    ):
        return False
    return computes_in_float16(trained_layers)


def check_numerics(gradients, terms):
    """Makes `gradients` depend on a `check_numerics` of every named term."""
    tf = _tf()
    checks = [
        tf.debugging.check_numerics(value, non_finite_message(name))
        for name, value in terms
    ]
    with tf.control_dependencies(checks):
        return [None if g is None else tf.identity(g) for g in gradients]


def apply_if_finite(optimizer, gradients, variables, terms, flag):
    """Applies the update only if every term is finite (XLA-compatible).

    `flag` is an int32 variable: -1 while every step was finite, else the
    index (in `terms`) of the first non-finite term. Once set, later steps of
    the same compiled call are skipped too.
    """
    ops = keras.ops
    values = ops.stack([ops.cast(value, "float32") for _, value in terms])
    finite = ops.isfinite(values)
    all_finite = ops.all(finite)
    first_bad = ops.cast(ops.argmin(ops.cast(finite, "int32")), "int32")
    previous = ops.convert_to_tensor(flag)
    clean = ops.less(previous, 0)
    flag.assign(
        ops.where(clean, ops.where(all_finite, -1, first_bad), previous)
    )
    if not optimizer.built:
        optimizer.build(variables)

    def apply():
        optimizer.apply(gradients, variables)

    ops.cond(ops.logical_and(clean, all_finite), apply, lambda: None)


def raise_on_non_finite(function, flag, names):
    """Wraps a train function: raises after a call that flagged a bad term."""
    tf = _tf()

    def guarded(iterator):
        logs = function(iterator)
        index = int(flag.numpy())
        if index >= 0:
            flag.assign(-1)  # the weights are finite: training may resume
            raise tf.errors.InvalidArgumentError(
                None, None, non_finite_message(names[index])
            )
        return logs

    guarded.keras_kd_guarded = True
    return guarded
