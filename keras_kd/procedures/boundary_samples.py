"""`BoundarySupportingSamples`: the BSS procedure and its official schedule.

Distils on adversarial samples near the teacher's decision boundary, made
each step with the pure functions of `keras_kd.procedures.boundary`.
"""

import keras
import numpy as np

from keras_kd import backend as backend_lib
from keras_kd import taps as taps_lib
from keras_kd.distiller import _Untracked
from keras_kd.losses.logits import logits_distillation_loss
from keras_kd.procedures.base import Procedure
from keras_kd.procedures.base import check_int
from keras_kd.procedures.boundary import boundary_attack
from keras_kd.procedures.boundary import input_scale_of
from keras_kd.procedures.boundary import sample_target_classes
from keras_kd.procedures.boundary import select_base_samples


@keras.saving.register_keras_serializable(package="keras_kd")
class BoundarySupportingSamples(Procedure):
    """Distil on adversarial samples near the teacher's decision boundary.

    In every training step (after each network ran once on the batch):
    choose base samples (`select_base_samples`), draw target classes
    (`sample_target_classes`), attack the teacher (`boundary_attack`), and
    add the term `bss` = mean over the adversarial samples of
    `KL(softmax(t / T) || softmax(s / T))`, with `t`, `s` the teacher's and
    the student's logits on them (no `T^2`). The official code writes its
    two distillation terms as soft cross-entropy without `T^2`: the same
    gradient as this KL, which is 0 when the networks agree. Evaluation
    steps add 0 (no attack).

    Pair it with `LogitsDistillation(temperature=3)` and the task loss, as
    the paper does; with `epochs` given (or read from `fit`),
    `callbacks()` brings `BoundarySupportingSchedule`, the official weight
    schedules (KD `4 -> 1`, BSS `2 -> 0` by 75 % of training) converted to
    keras_kd's KD, which carries `T^2` (see the schedule).

    What this relaxes of the Distiller's invariants: the teacher runs
    `steps + 1` more times per step (the attack, then its outputs on the
    adversarial samples) and the student once more, in training mode on the
    adversarial batch (as the official code does; BatchNormalization
    statistics see that batch too, and, since the batch has a fixed size,
    the masked-out examples that pad it when fewer than `max_samples`
    qualify: the official code passes only the qualifying ones); the
    teacher stays frozen (the attack differentiates with respect to the
    inputs only). While the schedule weighs the term 0 (from 75 % of
    training on), the step is rebuilt without the attack and the extra
    passes, as the official code skips them. Under `tf.distribute`
    each replica chooses its base samples among its own examples,
    `ceil(max_samples / replicas)` of them, so N replicas differ from one
    device by that choice; the term is each replica's mean over its
    adversarial samples, averaged over replicas.

    Guards against the failure a reimplementation reports ("may
    occasionally destroy the training"), tested in tests/test_boundary.py:
    a sample with a zero or non-finite input gradient does not move (the
    official code divides by its norm and feeds NaN inputs to both
    networks); adversarial samples are clipped to
    the raw input range; base samples are only examples both networks get
    right; and the official schedule switches the term off at 75 % of
    training.

    Args:
        max_samples: the most base samples per step. Defaults to `64`
            (official, with batches of 256).
        steps: attack steps. Defaults to `10`.
        step_size: the attack's step in normalised units. Defaults to `0.3`.
        temperature: the KD temperature on adversarial samples. Defaults to
            `3.0`.
        input_scale: the teacher's normalisation scale (number or per
            channel). Defaults to `None`: read from the teacher's leading
            `Normalization`/`Rescaling` layers (`input_scale_of`).
        input_range: `(low, high)` raw range the samples are clipped to.
            Defaults to `None`: the smallest and largest value of the step's
            clean batch.
        epochs: for the official schedule; `None` reads `fit`'s epochs.
        schedule: `"official"` (the schedule callback) or `None` (constant
            weights, set with `set_loss_weights`). Defaults to
            `"official"`.
        kd_loss: the name of the Distiller's KD loss the schedule weighs.
            Defaults to `"logits_distillation"`.
        seed: seed of the target-class draws. Defaults to `None`.
        name: defaults to `"boundary_supporting_samples"`.

    Example:

    ```python
    import keras, numpy as np
    import keras_kd

    def cnn(width, name):
        inputs = keras.Input((8, 8, 3))
        x = keras.layers.Conv2D(width, 3, padding="same")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(4)(x), name=name)

    distiller = keras_kd.Distiller(
        cnn(16, "teacher"), cnn(4, "student"),
        keras_kd.losses.LogitsDistillation(temperature=3.0),
        procedures=keras_kd.procedures.BoundarySupportingSamples(
            max_samples=8, seed=0),
    )
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    x = np.random.rand(16, 8, 8, 3).astype("float32")
    y = np.random.randint(0, 4, size=(16,))
    distiller.fit(x, y, epochs=2, verbose=0,
                  callbacks=keras_kd.callbacks.for_distiller(distiller))
    ```
    """

    term_names = ("bss",)
    requires = ("labels",)
    needs_logits = True

    def __init__(
        self,
        max_samples=64,
        *,
        steps=10,
        step_size=0.3,
        temperature=3.0,
        input_scale=None,
        input_range=None,
        epochs=None,
        schedule="official",
        kd_loss="logits_distillation",
        seed=None,
        name="boundary_supporting_samples",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        self.max_samples = check_int(
            "BoundarySupportingSamples", "max_samples", max_samples
        )
        self.steps = check_int(
            "BoundarySupportingSamples", "steps", steps, minimum=0
        )
        self.step_size = _positive_float(step_size, "step_size")
        self.temperature = _positive_float(temperature, "temperature")
        if input_scale is not None:
            scale = np.asarray(input_scale, "float64")
            if (
                scale.ndim > 1
                or not np.all(np.isfinite(scale))
                or np.any(scale <= 0)
            ):
                raise ValueError(
                    "BoundarySupportingSamples: `input_scale` must be a "
                    "number > 0 or one per input channel; received "
                    f"{input_scale!r}. It is the scale the teacher divides "
                    "its raw inputs by (e.g. 255 for `Rescaling(1 / 255)`)."
                )
        if input_range is not None:
            input_range = tuple(float(v) for v in input_range)
            if len(input_range) != 2 or input_range[0] >= input_range[1]:
                raise ValueError(
                    "BoundarySupportingSamples: `input_range` must be "
                    f"(low, high) with low < high; received {input_range}."
                )
        self.input_range = input_range
        self.input_scale = input_scale
        if epochs is not None:
            epochs = check_int("BoundarySupportingSamples", "epochs", epochs)
        self.epochs = epochs
        if schedule not in ("official", None):
            raise ValueError(
                "BoundarySupportingSamples: `schedule` must be 'official' or "
                f"None; received {schedule!r}."
            )
        self.schedule = schedule
        self.kd_loss = kd_loss
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        # False while the schedule weighs the term 0: the step then runs no
        # attack (the schedule rebuilds the compiled step when it flips).
        self.attacking = True
        self._models = _Untracked(teacher=None, student=None, scale=None)

    def configure(self, distiller):
        def logits_model(model):
            tap = taps_lib.logits_tap(model)
            if tap is None:
                return model
            extractor = taps_lib.build_extractor(model, [tap], role="logits")

            def logits(inputs, training=False):
                return extractor(inputs, training=training)[1]

            return logits

        self._models.teacher = logits_model(distiller.teacher)
        self._models.student = logits_model(distiller.student)
        scale = self.input_scale
        if scale is None:
            scale = input_scale_of(distiller.teacher)
        self._models.scale = scale
        self._models.replicas = backend_lib.get().replicas_in_sync()
        if self.schedule == "official":
            names = [loss.name for loss in distiller.distillation_losses]
            if self.kd_loss is not None and self.kd_loss not in names:
                raise ValueError(
                    "BoundarySupportingSamples's official schedule weighs "
                    f"the KD loss '{self.kd_loss}', but the Distiller's "
                    f"losses are {names}. Add "
                    "`keras_kd.losses.LogitsDistillation(temperature=3.0)`, "
                    "pass its name as `kd_loss=`, or `kd_loss=None` to "
                    "schedule the BSS term alone."
                )
        self._models.distiller = distiller

    def terms(self, context):
        ops = keras.ops
        if not context.training or self.steps == 0 or not self.attacking:
            return {"bss": ops.zeros((), "float32")}
        teacher_logits = ops.stop_gradient(
            ops.cast(context.teacher_logits, "float32")
        )
        student_logits = ops.stop_gradient(
            ops.cast(context.student_logits, "float32")
        )
        labels = context.labels
        classes = teacher_logits.shape[-1]
        if (
            len(labels.shape) == len(teacher_logits.shape)
            and classes is not None
            and classes > 1
            and labels.shape[-1] == classes
        ):
            labels = ops.argmax(labels, axis=-1)  # one-hot labels
        labels = ops.reshape(labels, (-1,))  # (B,) or (B, 1) class ids
        x = context.inputs
        if isinstance(x, (dict, list, tuple)):
            raise ValueError(
                "BoundarySupportingSamples attacks a single input tensor; "
                "the networks here take several inputs. Use a model with "
                "one input."
            )
        replicas = self._models.replicas
        limit = -(-self.max_samples // replicas)
        indices, mask = select_base_samples(
            teacher_logits, student_logits, labels, limit
        )
        base_x = ops.take(x, indices, axis=0)
        uniform = keras.random.uniform(
            (indices.shape[0],), seed=self.seed_generator
        )
        targets = sample_target_classes(
            ops.take(teacher_logits, indices, axis=0), uniform
        )
        x_float = ops.cast(x, "float32")
        clip = self.input_range or (ops.min(x_float), ops.max(x_float))
        adversarial = boundary_attack(
            self._models.teacher,
            base_x,
            targets,
            steps=self.steps,
            step_size=self.step_size,
            input_scale=self._models.scale,
            clip=clip,
            active=mask,
        )
        if keras.backend.is_float_dtype(
            keras.backend.standardize_dtype(x.dtype)
        ):
            adversarial = ops.cast(adversarial, x.dtype)
        t_adv = ops.stop_gradient(
            self._models.teacher(adversarial, training=False)
        )
        s_adv = self._models.student(adversarial, training=True)
        t_squared = self.temperature**2
        kl = (
            logits_distillation_loss(
                ops.cast(t_adv, "float32"),
                ops.cast(s_adv, "float32"),
                temperature=self.temperature,
                reduction="none",
            )
            / t_squared
        )
        count = ops.sum(mask)
        value = ops.sum(kl * mask) / ops.maximum(count, 1.0)
        return {"bss": value / replicas}

    def callbacks(self):
        if self.schedule != "official":
            return []
        return [
            BoundarySupportingSchedule(
                self._models.distiller,
                epochs=self.epochs,
                kd_loss=self.kd_loss,
                term=self.term_names[0],
            )
        ]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_samples": self.max_samples,
                "steps": self.steps,
                "step_size": self.step_size,
                "temperature": self.temperature,
                "input_scale": (
                    None
                    if self.input_scale is None
                    else _to_list(self.input_scale)
                ),
                "input_range": self.input_range,
                "epochs": self.epochs,
                "schedule": self.schedule,
                "kd_loss": self.kd_loss,
                "seed": self.seed,
            }
        )
        return config


class BoundarySupportingSchedule(keras.callbacks.Callback):
    """The official weights of BSS distillation, set at each epoch.

    With `e` the epoch counted from 1 and `E` the epochs of `fit`
    (`train_BSS_distillation.py`):

    - KD on clean samples: `lambda_kd = max(3 (1 - e / E), 0) + 1`
      (4 -> 1), divided by `T^2` because keras_kd's `LogitsDistillation`
      carries Hinton's `T^2` and the official soft cross-entropy does not
      (the same gradient as the official code's);
    - BSS: `lambda_bss = max(2 (1 - 4 e / (3 E)), 0)` (2 -> 0, zero from
      75 % of training on).

    Args:
        distiller: the `keras_kd.Distiller`.
        epochs: `E`; `None` reads the epochs of `fit`.
        kd_loss: the name of the KD loss; `None` leaves its weight alone.
        term: the BSS term's name. Defaults to `"bss"`.
    """

    def __init__(self, distiller, epochs=None, kd_loss=None, term="bss"):
        super().__init__()
        self.distiller = distiller
        self.epochs = epochs
        self.kd_loss = kd_loss
        self.term = term

    @staticmethod
    def weights_at(epoch, epochs):
        """`(lambda_kd, lambda_bss)` of epoch `epoch` (from 1) of `epochs`."""
        kd = max(3.0 * (1.0 - epoch / epochs), 0.0) + 1.0
        bss = max(2.0 * (1.0 - 4.0 / 3.0 * epoch / epochs), 0.0)
        return kd, bss

    def on_epoch_begin(self, epoch, logs=None):
        epochs = self.epochs or self.params.get("epochs")
        kd, bss = self.weights_at(epoch + 1, epochs)
        # With weight 0 the official code skips the attack and the
        # student's pass on adversarial samples (no cost, and no
        # BatchNormalization update from them): the step is rebuilt without
        # them, and again if the weight comes back.
        for procedure in self.distiller.procedures:
            if isinstance(procedure, BoundarySupportingSamples):
                attacking = bss > 0
                if procedure.attacking != attacking:
                    procedure.attacking = attacking
                    self.distiller.make_train_function(force=True)
        weights = {self.term: bss}
        if self.kd_loss is not None:
            loss = self.distiller.get_loss(self.kd_loss)
            temperature = float(
                keras.ops.convert_to_numpy(loss.temperature)
                if hasattr(loss, "temperature")
                else 1.0
            )
            weights[self.kd_loss] = kd / temperature**2
        self.distiller.set_loss_weights(**weights)


def _to_list(value):
    value = np.asarray(value, "float32")
    return float(value) if value.size == 1 else value.tolist()


def _positive_float(value, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(
            f"BoundarySupportingSamples: `{what}` must be a number > 0; "
            f"received {value!r} of type {type(value).__name__}."
        )
    if not value > 0:
        raise ValueError(
            f"BoundarySupportingSamples: `{what}` must be > 0; received "
            f"{value!r}."
        )
    return float(value)
