"""Mixed precision and the non-finite guard of the Distiller's train step.

Mixed precision. Every distillation loss is computed in float32 whatever the
policies (`DistillationLoss` layers are float32; features are cast before the
math). Keras wraps the optimizer in a `LossScaleOptimizer` only when the
*model's* policy is `mixed_float16`; a Distiller built under a float32 policy
around a float16 student would train without loss scaling, and small float16
gradients would underflow to zero. `needs_loss_scaling` detects that case, and
the Distiller wraps the optimizer itself.

Non-finite guard. The Distiller stops training, before the update, when a
weighted loss term or the weighted total is NaN or Inf. The step computes
`first_non_finite` over those values (-1 when all are finite). How the update
is then skipped depends on the backend (see `keras_kd.backend`): a `cond`
around the optimizer (TensorFlow, also under XLA and `tf.distribute`), a
select of the old training state (JAX), or a check before the backward pass
(PyTorch). The first bad term is recorded in a non-trainable int32 variable
and `NonFiniteLossError` is raised from Python right after the step returns,
so the user sees one exception naming the term, not a graph traceback.
"""

import keras


class NonFiniteLossError(FloatingPointError):
    """A loss term became NaN or Inf; training stopped before the update.

    Attributes:
        term: the log name of the first non-finite term (`student_loss`,
            `<loss name>_loss`, or `loss` for the weighted total).
    """

    def __init__(self, term):
        self.term = term
        super().__init__(non_finite_message(term))


def guard_error(name, non_finite_error=NonFiniteLossError):
    """The exception for the first value the guard flagged, by its name."""
    if name == "sample_weight":
        return ValueError(
            "keras_kd: this batch has a negative or non-finite "
            "`sample_weight`. Sample weights scale each example's loss and "
            "must be finite numbers >= 0 (0 ignores an example). Training "
            "stopped before this step's update was applied. Fix the weights "
            "passed to `fit(sample_weight=...)` or yielded by the dataset."
        )
    if name == "labels":
        return ValueError(
            "keras_kd: the labels of this batch contain NaN or Inf. Training "
            "stopped before this step's update was applied. Check the label "
            "array or the dataset's label pipeline (missing values, a "
            "division by zero) and pass finite labels."
        )
    return non_finite_error(name)


def non_finite_message(name):
    if name == "loss":
        what = (
            "the weighted total loss 'loss' is not finite (NaN or Inf) "
            "although every weighted term is"
        )
        hint = (
            "Check the regularization losses of the student and the "
            "connectors, and lower the learning rate or the loss weights."
        )
    else:
        what = f"the loss term '{name}' is not finite (NaN or Inf)"
        hint = (
            "Lower the learning rate or this term's weight, check the inputs "
            "and labels for NaN/Inf, or check the teacher's outputs on this "
            "data (`distiller.teacher.predict(...)`)."
        )
    return (
        f"keras_kd: {what}. Training stopped before this step's update was "
        "applied, so the trainable weights are the last finite ones. " + hint
    )


def first_non_finite(values):
    """int32 index of the first non-finite scalar in `values`, else -1."""
    ops = keras.ops
    stacked = ops.stack([ops.cast(value, "float32") for value in values])
    finite = ops.isfinite(stacked)
    first_bad = ops.cast(ops.argmin(ops.cast(finite, "int32")), "int32")
    return ops.where(ops.all(finite), ops.cast(-1, "int32"), first_bad)


def sticky(previous, bad):
    """The guard's new flag: the first bad index seen, kept once set."""
    ops = keras.ops
    previous = ops.cast(previous, "int32")
    return ops.where(ops.less(previous, 0), bad, previous)


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
