"""`Distiller`: a `keras.Model` that trains a student from a frozen teacher."""

import math
import numbers

import keras

from keras_kd import backend as backend_lib
from keras_kd import distribute as distribute_lib
from keras_kd import numerics
from keras_kd import step as step_lib
from keras_kd import taps as taps_lib
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.tensors import shapes_compatible


class _Untracked:
    """Holds objects on the Distiller without Keras tracking them."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(backend_lib.trainer_mixin(), keras.Model):
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
    metrics such as `boundary_agreement`. `predict()` returns the student's
    predictions only; `call()` returns the student's multi-output
    extraction (`[predictions, *tapped features]`, one student pass).

    What a step hands a loss. After each network ran once, every
    distillation loss gets its tapped features and the step's
    `keras_kd.step.StepContext`: the labels, one sample weight per example,
    example ids (from an `"example_id"` entry of the input dict, which the
    networks never see), the batch sizes and the replica count. A loss
    names what it needs besides features in `requires` (`"labels"`,
    `"example_ids"`); a step without it fails at trace time, before any
    update, saying how to provide it. A per-example loss (`level =
    "example"`) returns `(B,)` values, which the Distiller weights by
    `sample_weight` and divides by the global batch size. A batch-level
    loss (`level = "batch"`: relations between examples, a memory bank)
    receives the features, labels, weights and ids of the *global* batch,
    gathered across replicas under `tf.distribute` (differentiably), and
    returns one scalar for it; `sample_weight` weighs its pairs by
    `w_i * w_j` (an example of weight 0 takes no part), and a short last
    batch split unevenly between replicas is gathered whole. A loss may
    update its own variables in the step (CRD's memory bank, from the
    global batch so that every replica writes the same values); it never
    writes the context, the networks or the optimizer.

    What a procedure may do (`procedures=`, `keras_kd.procedures.Procedure`:
    training that is more than a loss). It reads inputs of its own (entries
    of the input dict it names in `side_inputs`), owns variables (tracked,
    trained by the Distiller's optimizer when trainable, saved with the
    distiller), adds weighted terms computed from the step's context
    (logged `<term>_loss`, weights set with `set_loss_weights`), and brings
    the callbacks it needs in `fit` (`keras_kd.callbacks.for_distiller`),
    e.g. one that steps a model of its own with an optimizer of its own
    between batches. None of this edits the Distiller.

    Backends: the Distiller trains through Keras's own trainer hooks
    (`call`, `compute_loss`, `compute_metrics`, `predict_step`), so `fit`,
    `evaluate` and `predict` work on TensorFlow, JAX and PyTorch; the few
    backend-specific pieces live in `keras_kd.backend`.

    Scale: teacher and student may use different dtype policies
    (`mixed_float16`, `mixed_bfloat16`); the losses are float32 and, when the
    student computes in float16, `compile()` wraps the optimizer in a
    `keras.optimizers.LossScaleOptimizer` even if the distiller's own policy
    is float32. Under `tf.distribute` (`MirroredStrategy`,
    `MultiWorkerMirroredStrategy`; build and compile the distiller inside
    `strategy.scope()`) a step equals a single-device step on the same
    global batch, provided the student's BatchNormalization layers are
    `synchronized=True` (connectors' are made so automatically). Under JAX's
    `keras.distribution.DataParallel` the step sees the global batch.
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
        procedures: `keras_kd.procedures.Procedure`s hooked into the step
            (see above). Defaults to `None`.
        check_finite: stop training, before the update is applied, when a
            weighted loss term or the weighted total becomes NaN or Inf,
            raising `keras_kd.NonFiniteLossError` that names the term.
            Defaults to `True`.
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
        procedures=None,
        check_finite=True,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        _check_models(teacher, student)
        losses = _check_losses(distillation_losses)
        procedures = _check_procedures(procedures, losses)
        weights = _check_weights(losses, distillation_loss_weights)
        student_loss_weight = _check_weight(
            student_loss_weight,
            "student_loss_weight",
            "Use 0 to train on the distillation losses alone.",
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
        self.procedures = procedures
        for procedure in procedures:
            term_weights = procedure.default_term_weights()
            self._configured_weights.update(
                {
                    term: _check_weight(
                        term_weights[term], f"the weight of term '{term}'"
                    )
                    for term in procedure.term_names
                }
            )
        self._distillation_loss_weights_arg = distillation_loss_weights
        self.loss_weight_variables = [
            keras.Variable(
                w, dtype="float32", trainable=False, name=f"{n}_weight"
            )
            for n, w in self._configured_weights.items()
        ]
        # The non-finite guard: -1, or the index (in `_guard_names()`) of the
        # first non-finite value of the step. Not saved (see
        # `save_own_variables`).
        self._non_finite_flag = keras.Variable(
            -1,
            dtype="int32",
            trainable=False,
            name="non_finite_term",
            aggregation="only_first_replica",
        )
        self._guard = _Untracked(bad=None)
        # The teacher's outputs for the current step, when a backend's
        # `train_step` ran the teacher before the student (PyTorch).
        self._teacher_stash = _Untracked(outputs=None)
        self._steps_run = 0
        self._build_extractors()
        for loss in losses:
            check_models = getattr(loss, "check_models", None)
            if check_models is not None:
                check_models(self.teacher, self.student)
        for procedure in procedures:
            procedure.configure(self)
        self._side_input_keys = _side_input_keys(losses + procedures)
        names = self._term_names()
        for loss in losses:
            if loss.num_terms > 1:
                names += [loss.term_log_name(i) for i in range(loss.num_terms)]
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
                for t, s in loss.pair_taps
            ]
            self._feature_index.append(pairs)
        # Procedures that read logits (adversarial samples) get them from
        # the same single pass, after every loss's taps.
        self._logits_index = None
        if any(p.needs_logits for p in self.procedures):
            self._logits_index = (
                index_of(None, self._teacher_logits, teacher_taps),
                index_of(None, self._student_logits, student_taps),
            )
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
            # For `_regularization_losses`, built once: a walk of the
            # teacher's layers on every step costs PyTorch's eager steps.
            teacher_layer_ids=frozenset(
                id(layer) for layer in self.teacher._flatten_layers()
            ),
        )
        t_shapes = _output_shapes(teacher_extractor, self.teacher)
        s_shapes = _output_shapes(student_extractor, self.student)
        names = (self.teacher.name, self.student.name)
        # Under a multi-replica strategy, connectors normalise over the
        # global batch so a step does not depend on the number of devices.
        synchronize = backend_lib.get().replicas_in_sync() > 1
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
        """Log names of the weighted terms: task loss, each loss, then each
        procedure's terms."""
        return (
            ["student_loss"]
            + [f"{loss.name}_loss" for loss in self.distillation_losses]
            + [
                f"{term}_loss"
                for procedure in self.procedures
                for term in procedure.term_names
            ]
        )

    def _guard_names(self):
        """Names of what the guard checks: inputs, weighted terms, total."""
        return list(_INPUT_CHECKS) + self._term_names() + ["loss"]

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
            for name, v in zip(
                self._configured_weights, self.loss_weight_variables
            )
        }

    def set_loss_weights(self, **weights):
        """Sets loss weights by name (`student`, or a loss's name).

        The weights are non-trainable variables read inside the compiled
        step, so a callback can change them between batches or epochs.
        """
        variables = dict(
            zip(self._configured_weights, self.loss_weight_variables)
        )
        for name, value in weights.items():
            if name not in variables:
                raise ValueError(
                    f"Unknown loss weight '{name}'. Expected one of "
                    f"{list(variables)}."
                )
        checked = {
            name: _check_weight(value, f"loss weight '{name}'")
            for name, value in weights.items()
        }
        for name, value in checked.items():
            variables[name].assign(value)

    # --- variables a procedure trains with an optimizer of its own ----------

    def _own_state(self, variables):
        """`variables` without those of the procedures' separately trained
        layers: the Distiller's optimizer and its JAX state leave them to
        the procedure's own optimizer."""
        excluded = {
            id(v)
            for procedure in getattr(self, "procedures", ())
            for layer in procedure.separately_trained()
            for v in layer.variables
        }
        if not excluded:
            return variables
        return [v for v in variables if id(v) not in excluded]

    @property
    def trainable_variables(self):
        return self._own_state(super().trainable_variables)

    @property
    def trainable_weights(self):
        return self._own_state(super().trainable_weights)

    @property
    def non_trainable_variables(self):
        return self._own_state(super().non_trainable_variables)

    @property
    def non_trainable_weights(self):
        return self._own_state(super().non_trainable_weights)

    def get_loss(self, name):
        """The distillation loss called `name`."""
        for loss in self.distillation_losses:
            if loss.name == name:
                return loss
        raise ValueError(
            f"No distillation loss named '{name}'; the distiller has "
            f"{[loss.name for loss in self.distillation_losses]}."
        )

    # --- Keras trainer hooks --------------------------------------------------

    def call(self, inputs, training=None):
        """The student's single pass: `[predictions, *tapped features]`."""
        inputs, _ = step_lib.split_side_inputs(inputs, self._side_input_keys)
        student = self._extractors.student(inputs, training=training)
        if not self._extractors.student_multi:
            return [student]
        return list(student)

    def _run_teacher(self, x):
        x, _ = step_lib.split_side_inputs(x, self._side_input_keys)
        teacher = self._extractors.teacher(x, training=False)
        if not self._extractors.teacher_multi:
            teacher = [teacher]
        return [keras.ops.stop_gradient(t) for t in teacher]

    def _teacher_outputs(self, x):
        """This step's teacher outputs: from the stash, or run now.

        The backend that fills the stash also empties it after the step.
        """
        if self._teacher_stash.outputs is not None:
            return self._teacher_stash.outputs
        return self._run_teacher(x)

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        """Runs the frozen teacher once and returns the weighted total.

        `y_pred` is the output of `call`: the student's predictions and
        features. Builds the step's `StepContext`, adds up the weighted
        terms, updates the per-term trackers and, when training, the
        non-finite guard. (The operations are created in the order of
        keras_kd 0.1's step: TensorFlow's results depend on the graph's
        order, and this keeps earlier runs reproducible to the digit.)
        """
        ops = keras.ops
        student = self(x, training=training) if y_pred is None else y_pred
        teacher = self._teacher_outputs(x)
        inputs, side_inputs = step_lib.split_side_inputs(
            x, self._side_input_keys
        )
        predictions = student[0]
        replicas = backend_lib.get().replicas_in_sync()
        batch_size = ops.shape(predictions)[0]
        batch = ops.cast(batch_size, "float32")
        global_batch = batch * replicas if replicas == 1 else None
        example_weight = _example_weights(sample_weight)
        input_checks = [_negative_check(sample_weight)]

        if self._compile_loss is not None and y is not None:
            self._check_label_shape(y, predictions)
            y, labels_check = _finite_labels(y)
            input_checks.append(labels_check)
            task = ops.cast(
                self._compile_loss(y, predictions, sample_weight), "float32"
            )
        else:
            task = ops.zeros((), "float32")
        # Keras's loss is already divided by the replicas (tf.distribute).
        terms = [task]
        term_names = self._term_names()
        self._trackers[term_names[0]].update_state(
            task * replicas, sample_weight=batch
        )
        context = step_lib.StepContext(
            inputs=inputs,
            labels=y,
            sample_weight=example_weight,
            side_inputs=side_inputs,
            teacher=teacher,
            student=student,
            training=training,
            replicas=replicas,
            batch_size=batch_size,
            global_batch_size=global_batch,
            logits=(
                (None, None)
                if self._logits_index is None
                else (
                    teacher[self._logits_index[0]],
                    student[self._logits_index[1]],
                )
            ),
        )
        for i, loss in enumerate(self.distillation_losses):
            terms.append(
                self._distillation_term(
                    loss, self._feature_index[i], context, term_names[i + 1]
                )
            )
        for procedure in self.procedures:
            terms += self._procedure_terms(procedure, context, term_names)

        regularization = ops.zeros((), "float32")
        for value in self._regularization_losses():
            regularization = regularization + ops.cast(
                ops.sum(value), "float32"
            )
        regularization = regularization / replicas

        weighted = [
            weight * value
            for weight, value in zip(self.loss_weight_variables, terms)
        ]
        total = regularization
        for value in weighted:
            total = total + value
        if training and self.check_finite:
            input_checks += [ops.zeros((), "float32")] * (
                len(_INPUT_CHECKS) - len(input_checks)
            )
            backend_lib.get().record_non_finite(
                self,
                numerics.first_non_finite(input_checks + weighted + [total]),
            )
        return total

    def _distillation_term(self, loss, pairs, context, log_name):
        """One loss's weighted sum of terms, this replica's share of it.

        Per-example losses: the sum over this replica's examples (weighted
        by `sample_weight`) divided by the global batch size. Batch-level
        losses see the global batch (features gathered across replicas)
        and return the global value; each replica holds `1 / replicas` of
        it, as the replicas' gradients are summed. The trackers (summed
        over replicas) get each replica's own mean, weighted by its
        examples, so they log the global value even when a short batch is
        split unevenly.
        """
        ops = keras.ops
        teacher = [context.teacher[t] for t, _ in pairs]
        student = [context.student[s] for _, s in pairs]
        _check_requirements(loss, context)
        replicas = context.replicas
        batch = ops.cast(context.batch_size, "float32")
        batch_level = loss.level == "batch"
        if batch_level:
            view = context.global_view()
            teacher = [context.gather(t) for t in teacher]
            student = [context.gather(s) for s in student]
        else:
            view = context
        term_losses, metrics = loss.compute(
            teacher, student, training=context.training, context=view
        )
        value = 0.0
        for weight, term in zip(loss.pair_weights, term_losses):
            value = value + weight * term
        if batch_level:
            value = ops.cast(value, "float32") / replicas
            logged = value * replicas
        else:
            if context.sample_weight is not None:
                value = value * context.sample_weight
            value = ops.sum(value) / context.global_batch_size
            logged = (
                value * replicas
                if replicas == 1
                else value * context.global_batch_size / batch
            )
        self._trackers[log_name].update_state(logged, sample_weight=batch)
        if loss.num_terms > 1:
            for j, term in enumerate(term_losses):
                self._trackers[loss.term_log_name(j)].update_state(term)
        for name, metric in metrics.items():
            self._trackers[name].update_state(metric)
        return value

    def _procedure_terms(self, procedure, context, term_names):
        """A procedure's terms, in the order it declares them, logged."""
        _check_requirements(procedure, context)
        values = procedure.terms(context)
        missing = [t for t in procedure.term_names if t not in values]
        if missing:
            raise ValueError(
                f"{type(procedure).__name__} '{procedure.name}' declares "
                f"the terms {list(procedure.term_names)} but its `terms()` "
                f"returned no {missing}."
            )
        batch = keras.ops.cast(context.batch_size, "float32")
        terms = []
        for term in procedure.term_names:
            value = keras.ops.cast(values[term], "float32")
            self._trackers[f"{term}_loss"].update_state(
                value * context.replicas, sample_weight=batch
            )
            terms.append(value)
        return terms

    def _check_step_data(self, x, y, training=True):
        """Fails before any network runs when a loss lacks its inputs.

        The eager PyTorch step calls this first, so that not even the
        student's BatchNormalization statistics move; compiled steps fail
        while tracing (`_check_requirements`), before anything runs.
        """
        _, side = step_lib.split_side_inputs(x, self._side_input_keys)
        for loss in self.distillation_losses + self.procedures:
            _check_present(
                loss, y is not None, step_lib.EXAMPLE_ID in side, training
            )

    def _regularization_losses(self):
        """The student's and connectors' regularisation losses.

        `self.losses` would also hold the activity-regulariser losses the
        frozen teacher's layers add when it runs in `compute_loss` (on
        TensorFlow and PyTorch; Keras's JAX trainer passes on only the
        losses of `call`, the student's). They have no gradient, yet they
        inflated the logged total, differently per backend. Weight
        regularisers count only trainable weights, so the teacher's never
        enter.
        """
        if self._losses_override:  # JAX: the losses of the student's pass
            return list(self._losses_override)
        teacher = self._extractors.teacher_layer_ids
        values = []
        for layer in self._flatten_layers():
            if id(layer) not in teacher:
                values.extend(layer._get_own_losses())
        return values + self._get_regularization_losses()

    def _check_label_shape(self, y, predictions):
        """One-hot labels given to a sparse loss: fail at trace time."""
        if not _is_sparse_loss(self.loss) or not hasattr(y, "shape"):
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
                f"{_loss_name(self.loss)} expects integer class ids of shape "
                f"{p_shape[:-1]}. Compile with "
                "`keras.losses.CategoricalCrossentropy(...)` for one-hot "
                "labels, or pass class ids (`np.argmax(y, axis=-1)`)."
            )

    def make_train_function(self, force=False):
        function = super().make_train_function(force=force)
        function = self.train_function if function is None else function
        if getattr(function, "keras_kd_counted", False):
            return function

        def counted(*args, **kwargs):
            # Counted on return: an exhausted iterator raises instead.
            result = function(*args, **kwargs)
            self._steps_run += 1
            return result

        counted.keras_kd_counted = True
        counted.keras_kd_guarded = getattr(function, "keras_kd_guarded", False)
        self.train_function = counted
        return counted

    def fit(self, *args, **kwargs):
        """`keras.Model.fit`; raises if the data gave no batch at all."""
        self._steps_run = 0
        history = super().fit(*args, **kwargs)
        epochs = kwargs.get("epochs", args[3] if len(args) > 3 else 1)
        initial = kwargs.get("initial_epoch", 0)
        if self._steps_run == 0 and epochs > initial and not self.stop_training:
            raise ValueError(
                "`fit` received no batches: the training data is empty (an "
                "empty array, or a dataset that yields nothing), so nothing "
                "was trained. Check the data pipeline (filters, `take`, "
                "`steps_per_epoch`) and pass at least one example."
            )
        return history

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Compiled metrics see the student's predictions only."""
        return super().compute_metrics(
            x, y, y_pred[0], sample_weight=sample_weight
        )

    def predict_step(self, *args):
        # TensorFlow and PyTorch: `(data)`; JAX: `(state, data)`, returning
        # `(outputs, non_trainable_variables)`.
        result = super().predict_step(*args)
        if len(args) == 2:
            outputs, state = result
            return outputs[0], state
        return result[0]

    # --- compiling: loss scaling; saving the loss weights ------------------

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
        config = keras.saving.deserialize_keras_object(
            _portable_optimizers(config)
        )
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def save_own_variables(self, store):
        # The loss weights are saved; the guard's flag is step state only.
        for i, v in enumerate(self._saved_own_variables()):
            store[f"{i}"] = v

    def load_own_variables(self, store):
        variables = self._saved_own_variables()
        if len(store.keys()) != len(variables):
            raise ValueError(
                f"Distiller '{self.name}' expected {len(variables)} own "
                f"variables (its loss weights), but the file holds "
                f"{len(store.keys())}. Was it saved from a Distiller with "
                "the same distillation losses?"
            )
        for i, v in enumerate(variables):
            v.assign(store[f"{i}"])

    def _saved_own_variables(self):
        own = self._trainable_variables + self._non_trainable_variables
        return [v for v in own if v is not self._non_finite_flag]

    # --- serialisation --------------------------------------------------------

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
            "procedures": [serialize(p) for p in self.procedures] or None,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        deserialize = keras.saving.deserialize_keras_object
        for key in ("teacher", "student"):
            config[key] = deserialize(
                config[key], custom_objects=custom_objects
            )
        config["distillation_losses"] = [
            deserialize(loss, custom_objects=custom_objects)
            for loss in config["distillation_losses"]
        ]
        config["procedures"] = [
            deserialize(p, custom_objects=custom_objects)
            for p in config.get("procedures") or []
        ]
        return cls(**config)


# --- validation helpers -------------------------------------------------------


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


def _check_procedures(procedures, losses):
    from keras_kd.procedures import Procedure

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


def _check_weights(losses, weights):
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
        _check_weight(w, f"distillation_loss_weights[{i}] ({loss.name})")
        for i, (w, loss) in enumerate(zip(weights, losses))
    ]


def _check_weight(value, what, hint=""):
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


def _output_shapes(extractor, model):
    if extractor is model and not taps_lib.has_graph(model):
        return [None]
    return [tuple(t.shape) for t in extractor.outputs]


def _portable_optimizers(config):
    """Points backend-specific optimizer classes at `keras.optimizers`.

    Keras saves an optimizer under PyTorch or TensorFlow as, e.g.,
    `keras.src.backend.torch.optimizers.torch_adam.Adam`; loaded under
    another backend that class cannot train (JAX arrays given to torch
    ops). `keras.optimizers.Adam` resolves to the active backend's class.
    """
    if isinstance(config, dict):
        config = {k: _portable_optimizers(v) for k, v in config.items()}
        module = config.get("module")
        if isinstance(module, str) and module.startswith("keras.src.backend."):
            if hasattr(keras.optimizers, str(config.get("class_name"))):
                config["module"] = "keras.optimizers"
        return config
    if isinstance(config, (list, tuple)):
        return type(config)(_portable_optimizers(v) for v in config)
    return config


_INPUT_CHECKS = ("sample_weight", "labels")


def _side_input_keys(losses):
    """The input-dict keys the networks never see: example ids, and what a
    loss declares in `side_inputs`."""
    keys = {step_lib.EXAMPLE_ID}
    for loss in losses:
        keys.update(getattr(loss, "side_inputs", ()))
    return frozenset(keys)


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


def _check_requirements(loss, context):
    """Fails at trace time when the step lacks what `loss` reads."""
    _check_present(
        loss,
        context.labels is not None,
        context.example_ids is not None,
        context.training,
    )


def _check_present(loss, has_labels, has_ids, training):
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


def _negative_check(sample_weight):
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


def _finite_labels(y):
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


def _example_weights(sample_weight):
    if sample_weight is None:
        return None
    ops = keras.ops
    sample_weight = ops.cast(sample_weight, "float32")
    while len(sample_weight.shape) > 1:
        sample_weight = ops.mean(sample_weight, axis=-1)
    return sample_weight
