"""Logits distillation (Hinton KD): Hinton, Vinyals & Dean, 2015."""

import keras
from keras import ops

from keras_kd.losses.reduction import is_python_number
from keras_kd.losses.reduction import reduce_per_example
from keras_kd.losses.reduction import to_float32
from keras_kd.losses.reduction import validate_rank
from keras_kd.losses.reduction import validate_reduction
from keras_kd.losses.reduction import validate_same_shape
from keras_kd.losses.base import DistillationLoss

_RANK_WHAT = "logits_distillation_loss needs logits of shape (B, num_classes)"


def logits_distillation_loss(
    teacher_logits, student_logits, temperature=4.0, *, reduction="mean"
):
    """Hinton knowledge-distillation loss on temperature-softened logits.

    Transfers the teacher's full output distribution ("dark knowledge"),
    softened by a temperature `T`, per example:

        L_KD = T^2 * KL( softmax(z_t / T) || softmax(z_s / T) )
             = T^2 * sum_k p_t,k * (log p_t,k - log p_s,k)

    then the batch mean. The `T^2` factor keeps the gradient size independent
    of `T`. Uses `log_softmax` for stability; the teacher is treated as a
    constant (`stop_gradient`); computed in float32. Unlike passing the string
    `"kl_divergence"` to `keras.distillation.LogitsDistillation`, the inputs
    are raw logits: the softmax and the `T^2` are applied here.

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
        Network", 2015, https://arxiv.org/abs/1503.02531. Reference
        implementation: https://github.com/HobbitLong/RepDistiller
        (`distiller_zoo/KD.py`).

    Args:
        teacher_logits: Teacher logits, shape `(B, num_classes)`.
        student_logits: Student logits, same shape.
        temperature: Softmax temperature `T > 0`. A Python number is
            validated; a tensor or `keras.Variable` (e.g. changed by a
            callback) is used as is. Defaults to `4.0`.
        reduction: `"mean"` for the batch mean (a scalar) or `"none"` for
            per-example values of shape `(B,)`. Defaults to `"mean"`.

    Returns:
        A float32 scalar (`reduction="mean"`) or a float32 `(B,)` tensor
        (`reduction="none"`).

    Raises:
        ValueError: If `temperature <= 0`, the logits are not rank 2, their
            shapes differ, or `reduction` is unknown.

    Example:

    >>> import numpy as np
    >>> z_t = np.array([[2.0, 0.0, -1.0]], dtype="float32")
    >>> round(float(logits_distillation_loss(z_t, z_t)), 6)
    0.0
    >>> z_s = np.array([[0.0, 0.0, 0.0]], dtype="float32")
    >>> float(logits_distillation_loss(z_t, z_s, temperature=2.0)) > 0
    True
    """
    validate_reduction(reduction)
    if is_python_number(temperature) and temperature <= 0:
        raise ValueError(
            "`temperature` must be > 0; received "
            f"temperature={temperature!r}. Pass a positive temperature, e.g. "
            "temperature=4.0 (T=1 is the plain softmax)."
        )
    teacher = ops.stop_gradient(to_float32(teacher_logits))
    student = to_float32(student_logits)
    for name, tensor in (("teacher_logits", teacher),
                         ("student_logits", student)):
        validate_rank(
            tensor, (2,), name=name, what=_RANK_WHAT,
            hint="Pass the pre-softmax outputs of the classification head.",
        )
    validate_same_shape(
        teacher, student, what="logits_distillation_loss",
        hint="Teacher and student must predict the same classes.",
    )
    temperature = to_float32(temperature)
    log_p_teacher = ops.log_softmax(teacher / temperature, axis=-1)
    log_p_student = ops.log_softmax(student / temperature, axis=-1)
    kl = ops.sum(
        ops.exp(log_p_teacher) * (log_p_teacher - log_p_student), axis=-1
    )
    per_example = ops.square(temperature) * kl
    return reduce_per_example(per_example, reduction)


@keras.saving.register_keras_serializable(package="keras_kd")
class LogitsDistillation(DistillationLoss):
    """Hinton knowledge distillation on the logits, with the T^2 scaling.

    `L = T^2 * KL(softmax(z_t / T) || softmax(z_s / T))`, per example, then
    the batch mean (`logits_distillation_loss`). The softmax is always
    applied (unlike a plain `"kl_divergence"` string loss) and `T^2` keeps
    the gradient size independent of `T`. If a model's last layer applies a
    softmax, the Distiller reads the tensor before it, so the loss always
    sees logits. The temperature is a non-trainable variable
    (`loss.temperature`) that a callback may change during `fit`.

    Reference:
        Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
        Network", 2015. RepDistiller `distiller_zoo/KD.py`.

    Args:
        temperature: the softmax temperature `T > 0`. Defaults to `4.0`.
        name: name used in logs. Defaults to `"logits_distillation"`.

    Example:

    >>> kd = LogitsDistillation(temperature=4.0)
    >>> float(kd.temperature.numpy())
    4.0
    """

    default_weight = 1.0
    reads_hidden_layers = False

    def __init__(self, temperature=4.0, *, name="logits_distillation", **kwargs):
        if not isinstance(temperature, (int, float)) or temperature <= 0:
            raise ValueError(
                "`temperature` must be a number > 0; received "
                f"temperature={temperature!r}. Typical values are 1 to 8 "
                "(4 by default)."
            )
        kwargs.pop("teacher_layer_name", None)
        kwargs.pop("student_layer_name", None)
        super().__init__(None, None, name=name, **kwargs)
        self._initial_temperature = float(temperature)
        self.temperature = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(float(temperature)),
            trainable=False,
            dtype="float32",
            name="temperature",
        )

    def configure_pair(self, index, teacher_shape, student_shape, dtype, names):
        if teacher_shape is None or student_shape is None:
            return None
        for role, shape in (("teacher", teacher_shape), ("student", student_shape)):
            if len(shape) != 2:
                raise ValueError(
                    f"LogitsDistillation needs logits of shape (B, classes); "
                    f"the {role} '{names[role == 'student']}' outputs "
                    f"{shape}. Distil a classifier, or use a feature loss."
                )
        if None not in (teacher_shape[-1], student_shape[-1]) and (
            teacher_shape[-1] != student_shape[-1]
        ):
            raise ValueError(
                f"LogitsDistillation needs the same classes on both sides; "
                f"teacher '{names[0]}' has {teacher_shape[-1]} and student "
                f"'{names[1]}' has {student_shape[-1]}."
            )
        return None

    def pair_loss(self, index, teacher, student):
        return logits_distillation_loss(
            teacher, student, self.temperature, reduction="none"
        )

    def get_config(self):
        config = super().get_config()
        for key in ("teacher_layer_name", "student_layer_name", "pair_weights",
                    "teacher_tap", "student_tap"):
            config.pop(key, None)
        config.update(temperature=self._initial_temperature)
        return config
