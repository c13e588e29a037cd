"""`Distiller`: a `keras.Model` that trains a student from a frozen teacher."""

import keras

from keras_kd import distribute as distribute_lib
from keras_kd import numerics
from keras_kd import taps as taps_lib
from keras_kd.losses.base import DistillationLoss


def _tf():
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            "keras_kd.Distiller trains with the TensorFlow backend; the "
            f"active Keras backend is '{keras.backend.backend()}'. Set "
            "KERAS_BACKEND=tensorflow before importing keras."
        )
    import tensorflow as tf

    return tf


class _Untracked:
    """Holds the extractor models without Keras tracking them twice."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(keras.Model):
    """Trains a student network to reproduce a frozen teacher.

    Each step runs the teacher once (frozen, `training=False`) and the student
    once: one multi-output sub-model per network returns its predictions and
    every tensor the distillation losses read. The loss is

    `student_loss_weight * task_loss + sum_i w_i * distillation_loss_i`

    plus the student's (and connectors') regularisation losses, where
    `task_loss` is the loss given to `compile()` (optional: with `loss=None`
    the student learns from the teacher alone, and the data need no labels).
    Every term is reduced over the global batch, so updates are the same on
    one device or many. Connectors the losses need are built here, train with
    the student, are saved with the distiller and are never part of
    `distiller.student`.

    `fit()` logs `loss` (the total), `student_loss`, one `<name>_loss` per
    distillation loss, per-layer values for multi-layer losses and extra
    metrics such as `boundary_agreement`. `predict()` and `call()` run the
    student only.

    Scale: teacher and student may use different dtype policies
    (`mixed_float16`, `mixed_bfloat16`); the losses are float32 and, when the
    student computes in float16, `compile()` wraps the optimizer in a
    `keras.optimizers.LossScaleOptimizer` even if the distiller's own policy
    is float32. Under `tf.distribute` (`MirroredStrategy`,
    `MultiWorkerMirroredStrategy`; build and compile the distiller inside
    `strategy.scope()`) a step equals a single-device step on the same
    global batch, provided the student's BatchNormalization layers are
    `synchronized=True` (connectors' are made so automatically).
    `jit_compile=True` is supported, with the same non-finite check.

    Args:
        teacher: the trained `keras.Model` to learn from. It is frozen
            (`teacher.trainable = False`) and always runs with
            `training=False`.
        student: the `keras.Model` to train. Must not be `teacher`.
        distillation_losses: a `keras_kd.losses.DistillationLoss` or a list
            of them.
        distillation_loss_weights: one weight per distillation loss.
            Defaults to each loss's `default_weight` (the value of the
            paper's official code, e.g. 50 for `NeuronSelectivityTransfer`).
        student_loss_weight: weight of the task loss. Defaults to `1.0`.
        check_finite: stop training, before the update is applied, when a
            loss term becomes NaN or Inf, naming the term. Defaults to `True`.
        name: name of the distiller. Defaults to `"distiller"`.

    Example:

    ```python
    import keras, numpy as np
    import keras_kd

    def cnn(width, name):
        inputs = keras.Input((16, 16, 3))
        x = keras.layers.Conv2D(width, 3, padding="same", name="conv")(inputs)
        x = keras.layers.ReLU(name="relu")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(inputs, keras.layers.Dense(10, name="logits")(x),
                           name=name)

    teacher, student = cnn(32, "teacher"), cnn(8, "student")
    distiller = keras_kd.Distiller(
        teacher, student,
        [keras_kd.losses.LogitsDistillation(temperature=4.0),
         keras_kd.losses.ActivationBoundary("relu", "relu")],
    )
    distiller.compile(
        optimizer="adam",
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    x = np.random.rand(32, 16, 16, 3).astype("float32")
    y = np.random.randint(0, 10, size=(32,))
    distiller.fit(x, y, epochs=1, verbose=0)
    trained = distiller.student
    ```
    """

    def __init__(
        self,
        teacher,
        student,
        distillation_losses,
        distillation_loss_weights=None,
        student_loss_weight=1.0,
        *,
        check_finite=True,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        _check_models(teacher, student)
        losses = _check_losses(distillation_losses)
        weights = _check_weights(losses, distillation_loss_weights)
        if not isinstance(student_loss_weight, (int, float)) or (
            student_loss_weight < 0
        ):
            raise ValueError(
                "`student_loss_weight` must be a number >= 0; received "
                f"{student_loss_weight!r}. Use 0 to train on the "
                "distillation losses alone."
            )
        self.teacher = teacher
        self.student = student
        self.teacher.trainable = False
        self.distillation_losses = losses
        self.check_finite = bool(check_finite)
        self._configured_weights = {"student": float(student_loss_weight)}
        self._configured_weights.update(
            {loss.name: w for loss, w in zip(losses, weights)}
        )
        self._distillation_loss_weights_arg = distillation_loss_weights
        self.loss_weight_variables = [
            keras.Variable(
                w, dtype="float32", trainable=False, name=f"{n}_weight"
            )
            for n, w in self._configured_weights.items()
        ]
        self._finite_guard = _Untracked(flag=None)
        self._build_extractors()
        names = self._term_names()
        for loss in losses:
            if loss.num_pairs > 1:
                names += [loss.pair_log_name(i) for i in range(loss.num_pairs)]
            names += loss.metric_names()
        self.term_trackers = [keras.metrics.Mean(name=n) for n in names]
        self._trackers = {m.name: m for m in self.term_trackers}
        self.built = True

    # --- construction -------------------------------------------------------

    def _build_extractors(self):
        teacher_taps, student_taps = [], []
        self._teacher_logits = taps_lib.logits_tap(self.teacher)
        self._student_logits = taps_lib.logits_tap(self.student)

        def index_of(tap, logits_tap, tap_list):
            if tap is None:
                tap = logits_tap
                if tap is None:
                    return 0
            if tap not in tap_list:
                tap_list.append(tap)
            return 1 + tap_list.index(tap)

        self._feature_index = []
        for loss in self.distillation_losses:
            pairs = [
                (
                    index_of(t, self._teacher_logits, teacher_taps),
                    index_of(s, self._student_logits, student_taps),
                )
                for t, s in zip(loss.teacher_taps, loss.student_taps)
            ]
            self._feature_index.append(pairs)
        teacher_extractor = taps_lib.build_extractor(
            self.teacher, teacher_taps, role="teacher"
        )
        student_extractor = taps_lib.build_extractor(
            self.student, student_taps, role="student"
        )
        self._extractors = _Untracked(
            teacher=teacher_extractor,
            student=student_extractor,
            teacher_multi=bool(teacher_taps),
            student_multi=bool(student_taps),
        )
        t_shapes = _output_shapes(teacher_extractor, self.teacher)
        s_shapes = _output_shapes(student_extractor, self.student)
        names = (self.teacher.name, self.student.name)
        # Under a multi-replica strategy, connectors normalise over the
        # global batch so a step does not depend on the number of devices.
        synchronize = distribute_lib.replicas_in_sync() > 1
        for loss, pairs in zip(self.distillation_losses, self._feature_index):
            loss.configure(
                [t_shapes[t] for t, _ in pairs],
                [s_shapes[s] for _, s in pairs],
                self.student.dtype_policy,
                names,
            )
            if synchronize:
                for connector in loss.connectors:
                    distribute_lib.synchronize_batch_norm(connector)

    def _term_names(self):
        """Log names of the weighted terms: task loss, then each loss."""
        return ["student_loss"] + [
            f"{loss.name}_loss" for loss in self.distillation_losses
        ]

    # --- weights -------------------------------------------------------------

    @property
    def configured_loss_weights(self):
        """The weights given at construction: `{"student": w, name: w, ...}`."""
        return dict(self._configured_weights)

    @property
    def loss_weights(self):
        """Current weights (callbacks may change them): `{name: float}`."""
        return {
            name: float(v.numpy())
            for name, v in zip(self._configured_weights, self.loss_weight_variables)
        }

    def set_loss_weights(self, **weights):
        """Sets loss weights by name (`student`, or a loss's name).

        The weights are non-trainable variables read inside the compiled
        step, so a callback can change them between batches or epochs.
        """
        variables = dict(zip(self._configured_weights, self.loss_weight_variables))
        for name, value in weights.items():
            if name not in variables:
                raise ValueError(
                    f"Unknown loss weight '{name}'. Expected one of "
                    f"{list(variables)}."
                )
            variables[name].assign(float(value))

    def get_loss(self, name):
        """The distillation loss called `name`."""
        for loss in self.distillation_losses:
            if loss.name == name:
                return loss
        raise ValueError(
            f"No distillation loss named '{name}'; the distiller has "
            f"{[loss.name for loss in self.distillation_losses]}."
        )

    # --- forward ---------------------------------------------------------------

    def call(self, inputs, training=None):
        return self.student(inputs, training=training)

    def _run_teacher(self, x):
        tf = _tf()
        teacher = self._extractors.teacher(x, training=False)
        if not self._extractors.teacher_multi:
            teacher = [teacher]
        return [tf.stop_gradient(t) for t in teacher]

    def _run_student(self, x, training):
        student = self._extractors.student(x, training=training)
        if not self._extractors.student_multi:
            student = [student]
        return list(student)

    def _loss_terms(self, x, y, sample_weight, teacher, student, training):
        """Total loss (scaled for the replicas) and per-term log values."""
        tf = _tf()
        ops = keras.ops
        y_pred = student[0]
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        batch = tf.shape(y_pred)[0]
        global_batch = ops.cast(batch, "float32") * replicas
        example_weight = _example_weights(sample_weight)
        weights = self.loss_weight_variables
        logged = {}
        terms = []

        if self._compile_loss is not None and y is not None:
            task = ops.cast(self._compile_loss(y, y_pred, sample_weight), "float32")
        else:
            task = ops.zeros((), "float32")
        term_names = self._term_names()
        logged[term_names[0]] = (task * replicas, None)
        terms.append((term_names[0], weights[0], task))

        for i, loss in enumerate(self.distillation_losses):
            pairs = self._feature_index[i]
            pair_losses, metrics = loss.compute(
                [teacher[t] for t, _ in pairs],
                [student[s] for _, s in pairs],
                training=training,
            )
            per_example = 0.0
            for pw, value in zip(loss.pair_weights, pair_losses):
                per_example = per_example + pw * value
            if example_weight is not None:
                per_example = per_example * example_weight
            value = ops.sum(per_example) / global_batch
            logged[term_names[i + 1]] = (value * replicas, None)
            terms.append((term_names[i + 1], weights[i + 1], value))
            if loss.num_pairs > 1:
                for j, pair_value in enumerate(pair_losses):
                    logged[loss.pair_log_name(j)] = (pair_value, "examples")
            for name, value in metrics.items():
                logged[name] = (value, "examples")

        extra = list(self.student.losses)
        for loss in self.distillation_losses:
            extra += loss.losses
        regularization = ops.zeros((), "float32")
        for value in extra:
            regularization = regularization + ops.cast(ops.sum(value), "float32")
        regularization = regularization / replicas

        total = regularization
        for _, weight, value in terms:
            total = total + weight * value
        return total, logged, [(name, value) for name, _, value in terms]

    def _report(self, x, y, y_pred, sample_weight, total, logged):
        tf = _tf()
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        batch = tf.shape(y_pred)[0]
        self._loss_tracker.update_state(total * replicas, sample_weight=batch)
        for name, (value, kind) in logged.items():
            if kind == "examples":
                self._trackers[name].update_state(value)
            else:
                self._trackers[name].update_state(value, sample_weight=batch)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    # --- steps -----------------------------------------------------------------

    def train_step(self, data):
        tf = _tf()
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        # The frozen teacher runs outside the tape: nothing to record.
        teacher = self._run_teacher(x)
        with tf.GradientTape() as tape:
            student = self._run_student(x, training=True)
            total, logged, terms = self._loss_terms(
                x, y, sample_weight, teacher, student, training=True
            )
            scaled = self.optimizer.scale_loss(total)
        variables = self.trainable_variables
        gradients = tape.gradient(scaled, variables)
        flag = self._finite_guard.flag
        if self.check_finite and flag is not None:
            # XLA drops check_numerics: skip the update, raise afterwards.
            numerics.apply_if_finite(
                self.optimizer, gradients, variables, terms, flag
            )
        else:
            if self.check_finite:
                gradients = numerics.check_numerics(gradients, terms)
            self.optimizer.apply(gradients, variables)
        logs = self._report(x, y, student[0], sample_weight, total, logged)
        return distribute_lib.shape_logs(logs, self.distribute_strategy)

    def test_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        teacher = self._run_teacher(x)
        student = self._run_student(x, training=False)
        total, logged, _ = self._loss_terms(
            x, y, sample_weight, teacher, student, training=False
        )
        logs = self._report(x, y, student[0], sample_weight, total, logged)
        return distribute_lib.shape_logs(logs, self.distribute_strategy)

    def predict_step(self, data):
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        return self.student(x, training=False)

    # --- compiling: loss scaling, XLA, multi-worker ------------------------

    def compile(
        self, optimizer="rmsprop", *args, auto_scale_loss=True, **kwargs
    ):
        """`keras.Model.compile`; wraps the optimizer for a float16 student.

        Keras adds a `LossScaleOptimizer` only when the distiller's own
        policy is `mixed_float16`; here it is also added when the student
        (or a connector) computes in float16 under another policy. Pass
        `auto_scale_loss=False` to opt out, or your own
        `keras.optimizers.LossScaleOptimizer` to choose its settings.
        """
        optimizer = keras.optimizers.get(optimizer)
        trained = [self.student]
        for loss in self.distillation_losses:
            trained += loss.connectors
        if auto_scale_loss and numerics.needs_loss_scaling(optimizer, trained):
            optimizer = keras.optimizers.LossScaleOptimizer(
                optimizer, name="loss_scale_optimizer"
            )
        super().compile(
            optimizer, *args, auto_scale_loss=auto_scale_loss, **kwargs
        )

    def compile_from_config(self, config):
        # Keras skips this for models that override `compile`.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def make_train_function(self, force=False):
        if self.train_function is not None and not force:
            return self.train_function
        super().make_train_function(force=force)
        if self.check_finite and self.jit_compile and not self.run_eagerly:
            tf = _tf()
            if self._finite_guard.flag is None:
                with tf.init_scope():
                    self._finite_guard.flag = tf.Variable(
                        -1, dtype=tf.int32, trainable=False,
                        name="non_finite_term",
                    )
            self.train_function = numerics.raise_on_non_finite(
                self.train_function, self._finite_guard.flag,
                self._term_names(),
            )
        else:
            self._finite_guard.flag = None
        return self.train_function

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras reduces the first batch across replicas to build; the
        # collective strategy cannot (keras-team/keras#20585). One replica's
        # batch has the shapes the build needs.
        strategy = self.distribute_strategy
        if iterator is not None and distribute_lib.is_multi_worker(strategy):
            data_batch = distribute_lib.first_local_batch(iterator, strategy)
            iterator = None
        return super()._maybe_symbolic_build(
            iterator=iterator, data_batch=data_batch
        )

    # --- serialisation ---------------------------------------------------------

    def get_config(self):
        serialize = keras.saving.serialize_keras_object
        return {
            "name": self.name,
            "teacher": serialize(self.teacher),
            "student": serialize(self.student),
            "distillation_losses": [
                serialize(loss) for loss in self.distillation_losses
            ],
            "distillation_loss_weights": self._distillation_loss_weights_arg,
            "student_loss_weight": self._configured_weights["student"],
            "check_finite": self.check_finite,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        for key in ("teacher", "student"):
            config[key] = deserialize(config[key], custom_objects=custom_objects)
        config["distillation_losses"] = [
            deserialize(loss, custom_objects=custom_objects)
            for loss in config["distillation_losses"]
        ]
        return cls(**config)


# --- validation helpers --------------------------------------------------------


def _check_models(teacher, student):
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
            not _compatible(a.shape, b.shape) for a, b in zip(t_in, s_in)
        ):
            raise ValueError(
                "The teacher and the student must take the same inputs; "
                f"teacher '{teacher.name}' takes "
                f"{[tuple(t.shape) for t in t_in]}, student '{student.name}' "
                f"takes {[tuple(s.shape) for s in s_in]}. Resize inside the "
                "model (e.g. a `keras.layers.Resizing` layer) so both accept "
                "the same batches."
            )


def _compatible(a, b):
    return len(a) == len(b) and all(
        x is None or y is None or x == y for x, y in zip(a, b)
    )


def _check_losses(distillation_losses):
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


def _check_weights(losses, weights):
    if weights is None:
        return [float(loss.default_weight) for loss in losses]
    if isinstance(weights, (int, float)):
        weights = [weights]
    weights = list(weights)
    if len(weights) != len(losses):
        raise ValueError(
            f"Received {len(weights)} distillation_loss_weights {weights} "
            f"for {len(losses)} distillation losses "
            f"{[loss.name for loss in losses]}. Pass one weight per loss, in "
            "the same order, or None for each loss's default weight."
        )
    for w in weights:
        if not isinstance(w, (int, float)) or w < 0:
            raise ValueError(
                "Distillation loss weights must be numbers >= 0; received "
                f"{weights}."
            )
    return [float(w) for w in weights]


def _output_shapes(extractor, model):
    if extractor is model and not taps_lib.has_graph(model):
        return [None]
    return [tuple(t.shape) for t in extractor.outputs]


def _example_weights(sample_weight):
    if sample_weight is None:
        return None
    ops = keras.ops
    sample_weight = ops.cast(sample_weight, "float32")
    while len(sample_weight.shape) > 1:
        sample_weight = ops.mean(sample_weight, axis=-1)
    return sample_weight
