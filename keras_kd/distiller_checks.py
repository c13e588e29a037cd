"""Checks of the Distiller's arguments and of each step's data.

Bad input fails early, with a message naming what was received, what was
expected and how to fix it: the models, losses, procedures and loss weights
when the `Distiller` is built; a loss's missing labels or example ids, and
one-hot labels given to a sparse task loss, when a step is traced. Negative
or non-finite sample weights and non-finite labels become check values the
non-finite guard reports by name (`INPUT_CHECKS`).
"""

import math
import numbers

import keras

from keras_kd import taps as taps_lib
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.tensors import shapes_compatible

#: The guard's names for its checks of a step's data (`negative_check`,
#: `finite_labels`), checked before the weighted terms.
INPUT_CHECKS = ("sample_weight", "labels")


def check_models(teacher, student):
    for role, model in (("teacher", teacher), ("student", student)):
        if not isinstance(model, keras.Model):
            raise TypeError(
                f"The {role} must be a `keras.Model`; received "
                f"{type(model).__name__}. Wrap it in a Keras model first."
            )
    if teacher is student:
        raise ValueError(
            f"The teacher and the student are the same model object "
            f"('{teacher.name}'). Distillation trains a separate student: "
            "build a new model (e.g. `keras.models.clone_model(teacher)` for "
            "self-distillation) and pass that as the student."
        )
    if taps_lib.has_graph(teacher) and taps_lib.has_graph(student):
        t_in, s_in = teacher.inputs, student.inputs
        if len(t_in) != len(s_in) or any(
            not shapes_compatible(a.shape, b.shape) for a, b in zip(t_in, s_in)
        ):
            raise ValueError(
                "The teacher and the student must take the same inputs; "
                f"teacher '{teacher.name}' takes "
                f"{[tuple(t.shape) for t in t_in]}, student '{student.name}' "
                f"takes {[tuple(s.shape) for s in s_in]}. Resize inside the "
                "model (e.g. a `keras.layers.Resizing` layer) so both accept "
                "the same batches."
            )


def check_losses(distillation_losses):
    losses = (
        list(distillation_losses)
        if isinstance(distillation_losses, (list, tuple))
        else [distillation_losses]
    )
    if not losses:
        raise ValueError(
            "`distillation_losses` is empty. Pass at least one loss, e.g. "
            "`keras_kd.losses.LogitsDistillation()`."
        )
    for loss in losses:
        if not isinstance(loss, DistillationLoss):
            raise TypeError(
                "Each distillation loss must be a "
                "`keras_kd.losses.DistillationLoss` (e.g. LogitsDistillation, "
                "ActivationBoundary, NeuronSelectivityTransfer); received "
                f"{loss!r} of type {type(loss).__name__}."
            )
    names = [loss.name for loss in losses]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(
            f"Two distillation losses share the name(s) {duplicates}; their "
            "logs and weights would collide. Give each a distinct `name=`."
        )
    if "student" in names:
        raise ValueError(
            "A distillation loss may not be named 'student' (reserved for "
            "the task loss weight). Pass another `name=`."
        )
    return losses


def check_procedures(procedures, losses):
    # Imported here: the procedures import `keras_kd.distiller`.
    from keras_kd.procedures.base import Procedure

    if procedures is None:
        return []
    if isinstance(procedures, Procedure):
        procedures = [procedures]
    procedures = list(procedures)
    for procedure in procedures:
        if not isinstance(procedure, Procedure):
            raise TypeError(
                "Each procedure must be a `keras_kd.procedures.Procedure`; "
                f"received {procedure!r} of type {type(procedure).__name__}."
            )
    names = ["student"] + [loss.name for loss in losses]
    for procedure in procedures:
        for term in procedure.term_names:
            if term in names:
                raise ValueError(
                    f"{type(procedure).__name__} '{procedure.name}' adds a "
                    f"term named '{term}', which another term already has; "
                    f"the Distiller's terms are {names}. Rename one."
                )
            names.append(term)
    return procedures


def check_function_matching(function_matching, student, losses):
    """The `FunctionMatching` option, checked against the models and losses."""
    from keras_kd.function_matching import FunctionMatching

    if function_matching is None:
        return None
    if not isinstance(function_matching, FunctionMatching):
        raise TypeError(
            "`function_matching` must be a `keras_kd.FunctionMatching` or "
            f"None; received {function_matching!r} of type "
            f"{type(function_matching).__name__}."
        )
    function_matching.check_model(student)
    if function_matching.mixes:
        for loss in losses:
            if "labels" in loss.requires:
                raise ValueError(
                    f"{type(loss).__name__} '{loss.name}' reads the labels "
                    "of each example, but function matching with mixup or "
                    "CutMix mixes two examples into one, which then has no "
                    "single label. Pass `mixup_alpha=0, cutmix_alpha=0` "
                    "(crops and flips keep the labels), or use this loss "
                    "without function matching."
                )
    return function_matching


def check_weights(losses, weights):
    if weights is None:
        return [float(loss.default_weight) for loss in losses]
    if isinstance(weights, numbers.Real):
        weights = [weights]
    weights = list(weights)
    if len(weights) != len(losses):
        raise ValueError(
            f"Received {len(weights)} distillation_loss_weights {weights} "
            f"for {len(losses)} distillation losses "
            f"{[loss.name for loss in losses]}. Pass one weight per loss, in "
            "the same order, or None for each loss's default weight."
        )
    return [
        check_weight(w, f"distillation_loss_weights[{i}] ({loss.name})")
        for i, (w, loss) in enumerate(zip(weights, losses))
    ]


def check_weight(value, what, hint=""):
    """A loss weight as a float: a finite real number >= 0, not a bool."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{what} must be a number >= 0; received {value!r} of type "
            f"{type(value).__name__}. Pass a float such as 1.0. {hint}".strip()
        )
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{what} must be a finite number >= 0; received {value!r}. "
            "Pass a float such as 1.0 (0 switches the term off). "
            f"{hint}".strip()
        )
    return value


_REQUIREMENT_HELP = {
    "labels": (
        "the labels: pass `y` to `fit` and compile the Distiller with a "
        "task loss (`compile(loss=...)`; `student_loss_weight=0` switches "
        "the task term off)"
    ),
    "example_ids": (
        "example ids: pass the inputs as a dict with an 'example_id' "
        "entry, the index of each example in the training set, e.g. "
        "`fit({'image': x, 'example_id': np.arange(len(x))}, y)`, or "
        "`keras_kd.data.with_example_ids(dataset)` for a tf.data pipeline"
    ),
}


def check_requirements(loss, context):
    """Fails at trace time when the step lacks what `loss` reads."""
    check_present(
        loss,
        context.labels is not None,
        context.example_ids is not None,
        context.training,
    )


def metrics_have_labels(model, y):
    """Fails (when a step is traced, or before the eager PyTorch step) if
    `model` was compiled with metrics and the batch has no labels."""
    compiled = getattr(model, "_compile_metrics", None)
    named = compiled is not None and any(
        keras.tree.flatten(given or [])
        for given in (compiled._user_metrics, compiled._user_weighted_metrics)
    )  # `metrics=[]` names none
    if y is None and named:
        raise ValueError(
            f"{model.name} was compiled with metrics, and this batch has no "
            "labels (images only, e.g. a synthesised pool): metrics such as "
            "accuracy need labels. Compile without `metrics` to train on "
            "unlabelled images, and score the student on labelled data "
            "afterwards (`distiller.student.evaluate(x, y)`)."
        )


def check_present(loss, has_labels, has_ids, training):
    present = {"labels": has_labels, "example_ids": has_ids}
    for need in loss.requires:
        if present.get(need, True):
            continue
        if need == "example_ids" and not training:
            continue  # evaluation data need no ids (see the loss)
        raise ValueError(
            f"{type(loss).__name__} '{loss.name}' reads "
            f"{_REQUIREMENT_HELP[need]}. This step has none."
        )


def negative_check(sample_weight):
    """0, or NaN when any sample weight is negative or not finite."""
    ops = keras.ops
    if sample_weight is None:
        return ops.zeros((), "float32")
    values = ops.cast(sample_weight, "float32")
    bad = ops.logical_or(
        ops.any(ops.less(values, 0.0)),
        ops.logical_not(ops.all(ops.isfinite(values))),
    )
    return ops.where(bad, float("nan"), 0.0)


def finite_labels(y):
    """Float labels with NaN/Inf replaced by 0, and a check value (NaN if any).

    The replacement keeps the task loss from failing inside the step (a NaN
    class id becomes "label value of -9223372036854775808" on TensorFlow);
    the guard then stops training and names the labels.
    """
    ops = keras.ops
    if not hasattr(y, "dtype") or not keras.backend.is_float_dtype(
        keras.backend.standardize_dtype(y.dtype)
    ):
        return y, ops.zeros((), "float32")
    finite = ops.isfinite(y)
    check = ops.where(ops.all(finite), 0.0, float("nan"))
    return ops.where(finite, y, ops.zeros_like(y)), check


def _loss_name(loss):
    if isinstance(loss, str):
        return repr(loss)
    return getattr(loss, "name", None) or getattr(
        loss, "__name__", type(loss).__name__
    )


def _is_sparse_loss(loss):
    if isinstance(loss, keras.losses.SparseCategoricalCrossentropy):
        return True
    name = (
        loss
        if isinstance(loss, str)
        else getattr(loss, "__name__", type(loss).__name__)
    )
    return isinstance(name, str) and "sparse_categorical" in name.lower()


def check_label_shape(task_loss, y, predictions):
    """One-hot labels given to a sparse loss: fail at trace time."""
    if not _is_sparse_loss(task_loss) or not hasattr(y, "shape"):
        return
    y_shape, p_shape = tuple(y.shape), tuple(predictions.shape)
    classes = p_shape[-1] if p_shape else None
    if (
        len(y_shape) == len(p_shape)
        and classes is not None
        and classes > 1
        and y_shape[-1] == classes
    ):
        raise ValueError(
            f"The labels have shape {y_shape}, like the predictions "
            f"{p_shape}: they look one-hot, but the task loss "
            f"{_loss_name(task_loss)} expects integer class ids of shape "
            f"{p_shape[:-1]}. Compile with "
            "`keras.losses.CategoricalCrossentropy(...)` for one-hot "
            "labels, or pass class ids (`np.argmax(y, axis=-1)`)."
        )
