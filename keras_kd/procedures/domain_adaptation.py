"""Joint progressive distillation and unsupervised domain adaptation.

`DomainAdaptiveDistiller` trains, in one `fit`, a teacher that adapts to an
unlabelled target domain and a student that learns from it on both domains
(Nguyen-Meidine et al., "Joint Progressive Knowledge Distillation and
Unsupervised Domain Adaptation", IJCNN 2020; official code:
github.com/LIVIAETS/KD_UDA, `kd_da_alt.py`). Each step sees a labelled
source batch and an unlabelled target batch of the same size and minimises

    (1 - beta) * [CE(T(x_s), y_s) + gamma * MMD(phi_T(x_s), phi_T(x_t))]
    + beta * [alpha T^2 KL(p_T(x_s) || p_S(x_s)) + (1 - alpha) CE(S(x_s), y_s)
              + T^2 KL(p_T(x_t) || p_S(x_t))]

where `phi_T` is the teacher's feature layer (the input of its last layer by
default), MMD the multi-kernel Gaussian discrepancy
(`domain_terms.multi_kernel_mmd`), `gamma` DANN's ramp over the whole of
training, and `beta` grows geometrically from 0.1 to 0.9 over the epochs.

Choices, and where they differ from the official code:

- The teacher's logits enter the distillation terms through
  `stop_gradient`: the student's loss never reaches the teacher (the
  official code does not detach them, so its KD loss also trains the
  teacher). KL is `KL(teacher || student)` (the official code passes
  `kl_div` its arguments reversed and then takes an absolute value).
- One optimizer over both networks, one step: the teacher's gradient comes
  from the adaptation term only and the student's from the distillation
  term only, so each network gets the update its own optimizer with the
  same settings would give (the official code steps two optimizers one
  after the other, with the teacher's logits recomputed in between).
- `gamma` follows training progress once (DANN, Ganin et al. 2016); the
  official code computes it from the batch index within the epoch, so its
  ramp restarts every epoch.
- Each network runs once per step on the source and target batches
  together, so BatchNormalization sees both domains in one batch (the
  official DAN model passes them separately).

The teacher trains (it adapts): unlike `keras_kd.Distiller`, whose teacher
is frozen, here only the student's updates are kept from it.
"""

import keras
from keras import ops

from keras_kd import taps as taps_lib
from keras_kd.procedures import domain_terms

SOURCE, TARGET = "source", "target"


def _logits_and_features(model, feature_layer, role):
    """An extractor returning `[logits, features]` in one pass."""
    logits_tap = taps_lib.logits_tap(model)
    if feature_layer is None:
        history = getattr(model.outputs[0], "_keras_history", None)
        if history is None or not hasattr(history.operation, "name"):
            raise ValueError(
                f"DomainAdaptiveDistiller: cannot find the last layer of the "
                f"{role} '{model.name}'; pass feature_layer=<layer name>."
            )
        feature_layer = history.operation.name
        feature = taps_lib.Tap(feature_layer, "input")
    else:
        feature = taps_lib.Tap(feature_layer, "output")
    taps = ([logits_tap] if logits_tap else []) + [feature]
    return taps_lib.build_extractor(model, taps, role=role), bool(logits_tap)


class _Schedule(keras.callbacks.Callback):
    """Sets the steps of the whole run, and at each epoch's start the steps
    done and `beta` (read by the next step on every backend)."""

    def __init__(self, owner):
        super().__init__()
        self.owner = owner

    def on_train_begin(self, logs=None):
        steps = self.params.get("steps") or 1
        epochs = self.params.get("epochs") or 1
        self.owner.total_steps.assign(float(steps * epochs))

    def on_epoch_begin(self, epoch, logs=None):
        owner = self.owner
        owner.steps_done.assign(float(epoch * (self.params.get("steps") or 1)))
        owner.beta.assign(
            domain_terms.progressive_weight(
                epoch,
                self.params.get("epochs") or 1,
                start=owner.beta_range[0],
                end=owner.beta_range[1],
            )
        )


def trainable_copy(model, name=None):
    """A copy of `model` with its weights, every layer trainable: the
    teacher to adapt, leaving `model` as it is (a `keras_kd.Distiller`
    freezes its teacher, and under TensorFlow a clone of a frozen model
    keeps its layers frozen even after `clone.trainable = True`)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for layer in copy._flatten_layers(include_self=False):
        layer.trainable = True
    copy.trainable = True
    if name is not None:
        copy.name = name
    return copy


class DomainAdaptiveDistiller(keras.Model):
    """A teacher adapted to an unlabelled target domain, distilled into a
    student on both domains, in one `fit`.

    Train with `fit({"source": x_s, "target": x_t}, y_s)` (batches of
    source and target images of the same size; `paired_domains` pairs two
    sets of different sizes). `predict` and `evaluate` on plain images use
    the student; `distiller.student` is the plain student for export.

    Args:
        teacher: a trained functional or Sequential classifier (trained on
            the source domain); it is adapted (trained) here.
        student: the student.
        feature_layer: the teacher layer whose output is matched across
            domains. Defaults to `None`: the input of the teacher's last
            layer (the pooled features, as DAN).
        temperature: KD temperature. Defaults to `20.0` (official).
        alpha: share of soft targets on the source. Defaults to `0.3`
            (official).
        beta_range: `(first, last)` of the distillation weight. Defaults to
            `(0.1, 0.9)` (official).
        mmd_kernels: Gaussian kernels of the MMD. Defaults to `5`.
        mmd_multiplier: ratio of neighbouring bandwidths. Defaults to `2.0`.
    """

    def __init__(
        self,
        teacher,
        student,
        *,
        feature_layer=None,
        temperature=20.0,
        alpha=0.3,
        beta_range=(0.1, 0.9),
        mmd_kernels=5,
        mmd_multiplier=2.0,
        name="domain_adaptive_distiller",
    ):
        super().__init__(name=name)
        for role, model in (("teacher", teacher), ("student", student)):
            if not isinstance(model, keras.Model) or not taps_lib.has_graph(
                model
            ):
                raise ValueError(
                    f"DomainAdaptiveDistiller: the {role} must be a functional "
                    f"or Sequential keras.Model; received "
                    f"{type(model).__name__}."
                )
        if teacher is student:
            raise ValueError(
                "DomainAdaptiveDistiller: teacher and student are the same "
                "model; pass two models."
            )
        if not teacher.trainable_weights:
            raise ValueError(
                f"DomainAdaptiveDistiller adapts the teacher, and the teacher "
                f"'{teacher.name}' has no trainable weights (was it frozen, "
                "e.g. by a keras_kd.Distiller?). Pass "
                "keras_kd.procedures.trainable_copy(teacher), which leaves "
                "the frozen one as it is."
            )
        if not 0.0 <= float(alpha) <= 1.0:
            raise ValueError(
                f"DomainAdaptiveDistiller: alpha must lie in [0, 1]; "
                f"received {alpha}."
            )
        if float(temperature) <= 0:
            raise ValueError(
                f"DomainAdaptiveDistiller: temperature must be positive; "
                f"received {temperature}."
            )
        low, high = (float(b) for b in beta_range)
        if not 0.0 < low <= high <= 1.0:
            raise ValueError(
                "DomainAdaptiveDistiller: beta_range must be (first, last) "
                f"with 0 < first <= last <= 1; received {tuple(beta_range)}."
            )
        self.teacher = teacher
        self.student = student
        self._teacher_extractor, self._teacher_softmax = _logits_and_features(
            teacher, feature_layer, "teacher"
        )
        student_tap = taps_lib.logits_tap(student)
        self._student_logits = (
            taps_lib.build_extractor(student, [student_tap], role="student")
            if student_tap
            else None
        )
        self.temperature = float(temperature)
        self.alpha = float(alpha)
        self.beta_range = (low, high)
        self.mmd_kernels = int(mmd_kernels)
        self.mmd_multiplier = float(mmd_multiplier)
        self.beta = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(low),
            trainable=False,
            name="beta",
        )
        self.steps_done = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            name="steps_done",
        )
        self.total_steps = self.add_weight(
            shape=(),
            initializer=keras.initializers.Constant(1.0),
            trainable=False,
            name="total_steps",
        )
        names = [
            "teacher_source_ce",
            "mmd",
            "gamma",
            "beta",
            "kd_source",
            "student_source_ce",
            "kd_target",
        ]
        self.term_trackers = {n: keras.metrics.Mean(name=n) for n in names}
        # Both networks are built models: nothing is left to build (and
        # BackupAndRestore may restore before the first step).
        self.built = True

    # --- forward -----------------------------------------------------------

    def _student(self, x, training):
        if self._student_logits is None:
            return self.student(x, training=training)
        return self._student_logits(x, training=training)[1]

    def call(self, inputs, training=None):
        """Plain images: the student's logits. `{"source", "target"}`: each
        network once on both batches, `{"teacher", "features", "student"}`
        (rows: source, then target)."""
        if not isinstance(inputs, dict):
            return self._student(inputs, training)
        missing = {SOURCE, TARGET} - set(inputs)
        if missing:
            raise ValueError(
                f"DomainAdaptiveDistiller expects inputs "
                f'{{"source": ..., "target": ...}}; missing {sorted(missing)}'
                f" (received keys {sorted(inputs)})."
            )
        both = ops.concatenate([inputs[SOURCE], inputs[TARGET]], axis=0)
        outputs = self._teacher_extractor(both, training=training)
        if self._teacher_softmax:  # [probabilities, logits, features]
            outputs = outputs[1:]
        teacher_logits, features = outputs
        return {
            "teacher": teacher_logits,
            "features": features,
            "student": self._student(both, training),
        }

    # --- loss --------------------------------------------------------------

    def gamma(self):
        """DANN's ramp at this step's progress through the whole run."""
        progress = ops.minimum(self.steps_done / self.total_steps, 1.0)
        return 2.0 / (1.0 + ops.exp(-10.0 * progress)) - 1.0

    def _kd(self, teacher, student):
        """`T^2 KL(softmax(t/T) || softmax(s/T))` per example."""
        t = self.temperature
        p = ops.softmax(teacher / t, axis=-1)
        log_p = ops.log_softmax(teacher / t, axis=-1)
        log_q = ops.log_softmax(student / t, axis=-1)
        return t * t * ops.sum(p * (log_p - log_q), axis=-1)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        if y_pred is None:
            y_pred = self(x, training=training)
        if not isinstance(y_pred, dict):  # evaluate on plain images
            return ops.mean(
                keras.losses.sparse_categorical_crossentropy(
                    y, ops.cast(y_pred, "float32"), from_logits=True
                )
            )
        if y is None:
            raise ValueError(
                "DomainAdaptiveDistiller needs the source labels: "
                'fit({"source": x_s, "target": x_t}, y_s).'
            )
        rows = ops.shape(x[SOURCE])[0]
        teacher = ops.cast(y_pred["teacher"], "float32")
        student = ops.cast(y_pred["student"], "float32")
        features = ops.cast(y_pred["features"], "float32")
        labels = ops.reshape(y, (-1,))

        def ce(logits):
            return ops.mean(
                keras.losses.sparse_categorical_crossentropy(
                    labels, logits, from_logits=True
                )
            )

        teacher_ce = ce(teacher[:rows])
        mmd = domain_terms.multi_kernel_mmd(
            features[:rows],
            features[rows:],
            kernels=self.mmd_kernels,
            multiplier=self.mmd_multiplier,
        )
        if training:
            gamma = self.gamma()
            self.steps_done.assign_add(1.0)
        else:
            gamma = ops.ones((), "float32")
        frozen = ops.stop_gradient(teacher)
        kd_source = ops.mean(self._kd(frozen[:rows], student[:rows]))
        kd_target = ops.mean(self._kd(frozen[rows:], student[rows:]))
        student_ce = ce(student[:rows])
        beta = ops.cast(self.beta, "float32")
        adaptation = (1.0 - beta) * (teacher_ce + gamma * mmd)
        distillation = beta * (
            self.alpha * kd_source + (1.0 - self.alpha) * student_ce + kd_target
        )
        for name, value in (
            ("teacher_source_ce", teacher_ce),
            ("mmd", mmd),
            ("gamma", gamma),
            ("beta", beta),
            ("kd_source", kd_source),
            ("student_source_ce", student_ce),
            ("kd_target", kd_target),
        ):
            self.term_trackers[name].update_state(value)
        return adaptation + distillation

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        student = y_pred["student"] if isinstance(y_pred, dict) else y_pred
        if isinstance(y_pred, dict):
            student = student[: ops.shape(x[SOURCE])[0]]
        results = super().compute_metrics(x, y, student, sample_weight)
        if not isinstance(x, dict):
            # Plain images (evaluate, validation): the student alone; the
            # training terms have nothing to report.
            results = {
                k: v for k, v in results.items() if k not in self.term_trackers
            }
        return results

    def fit(self, *args, callbacks=None, **kwargs):
        """`keras.Model.fit`, with the schedule of `beta` and `gamma`."""
        callbacks = list(callbacks or []) + [_Schedule(self)]
        return super().fit(*args, callbacks=callbacks, **kwargs)


def paired_domains(source_x, source_y, target_x, *, seed=0):
    """`({"source": x_s, "target": x_t}, y_s)` arrays for `fit`: the target
    images resampled (whole permutations, repeated as needed) to the number
    of source images, so every batch pairs a source and a target batch of
    the same size."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(source_x)
    repeats = -(-n // len(target_x))
    order = np.concatenate(
        [rng.permutation(len(target_x)) for _ in range(repeats)]
    )[:n]
    return {SOURCE: source_x, TARGET: np.asarray(target_x)[order]}, source_y
