"""`Distiller`: a `keras.Model` that trains a student from a frozen teacher.

This module holds its construction and Keras's trainer hooks; the rest lives
beside it: `distiller_wiring` (the tap models and connectors),
`distiller_terms` (the terms of a step and their logs), `distiller_state`
(loss weights, trained variables, saving) and `distiller_checks` (the
checks of its arguments and of each step's data).
"""

import threading

import keras

from keras_kd import backend as backend_lib
from keras_kd import distiller_checks as checks
from keras_kd import distiller_state as state_lib
from keras_kd import distiller_terms as terms_lib
from keras_kd import distiller_wiring as wiring_lib
from keras_kd import numerics
from keras_kd import step as step_lib

# Holds objects without Keras tracking them (the procedures use it too).
_Untracked = wiring_lib.Untracked


@keras.saving.register_keras_serializable(package="keras_kd")
class Distiller(
    backend_lib.trainer_mixin(),
    wiring_lib.WiringMixin,
    terms_lib.TermsMixin,
    state_lib.StateMixin,
    keras.Model,
):
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
        function_matching: a `keras_kd.FunctionMatching`: each training
            batch is augmented once inside the step (crops, flips, mixup or
            CutMix) and that batch feeds both networks, with labels mixed
            for the task loss (see `keras_kd.function_matching`).
            Evaluation and prediction see the data unchanged. Defaults to
            `None`.
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
        function_matching=None,
        check_finite=True,
        name="distiller",
        **kwargs,
    ):
        super().__init__(name=name, **kwargs)
        checks.check_models(teacher, student)
        losses = checks.check_losses(distillation_losses)
        procedures = checks.check_procedures(procedures, losses)
        weights = checks.check_weights(losses, distillation_loss_weights)
        student_loss_weight = checks.check_weight(
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
        self.function_matching = checks.check_function_matching(
            function_matching, student, losses + procedures
        )
        if self.function_matching is not None:
            self._augment_seed = keras.random.SeedGenerator(
                self.function_matching.seed, name="function_matching_seed"
            )
        # This step's augmented batch and mixing weight: made by whichever
        # network runs first, read by the other, remade if one runs again;
        # emptied by the step. One per thread (MirroredStrategy's replicas).
        self._augmented = _Untracked(step=threading.local())
        for procedure in procedures:
            term_weights = procedure.default_term_weights()
            self._configured_weights.update(
                {
                    term: checks.check_weight(
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
        # step's first non-finite value. Not saved (`save_own_variables`).
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
        self._side_input_keys = wiring_lib.side_input_keys(losses + procedures)
        names = self._term_names()
        for loss in losses:
            if loss.num_terms > 1:
                names += [loss.term_log_name(i) for i in range(loss.num_terms)]
            names += loss.metric_names()
        self.term_trackers = [keras.metrics.Mean(name=n) for n in names]
        self._trackers = {m.name: m for m in self.term_trackers}
        self.built = True

    # --- Keras trainer hooks --------------------------------------------------

    def call(self, inputs, training=None):
        """The student's single pass: `[predictions, *tapped features]`."""
        inputs, _ = step_lib.split_side_inputs(inputs, self._side_input_keys)
        inputs = self._step_inputs(inputs, training, network="student")
        student = self._extractors.student(inputs, training=training)
        if not self._extractors.student_multi:
            return [student]
        return list(student)

    def _step_inputs(self, inputs, training, network=None):
        """Function matching's batch of this training step, made once (a
        `network` that already ran on it starts a new one); else `inputs`."""
        if self.function_matching is None or not training:
            return inputs
        step = self._augmented.step
        ran = step.__dict__.setdefault("ran", set())  # networks run on it
        if getattr(step, "inputs", None) is None or network in ran:
            step.inputs, step.lam = self.function_matching.augment(
                inputs, self._augment_seed
            )
            ran.clear()
        if network is not None:
            ran.add(network)
        return step.inputs

    def _clear_step_inputs(self):
        self._augmented.step.__dict__.update(inputs=None, lam=None, ran=set())

    def _run_teacher(self, x, training=True):
        x, _ = step_lib.split_side_inputs(x, self._side_input_keys)
        x = self._step_inputs(x, training, network="teacher")
        teacher = self._extractors.teacher(x, training=False)
        if not self._extractors.teacher_multi:
            teacher = [teacher]
        return [keras.ops.stop_gradient(t) for t in teacher]

    def _teacher_outputs(self, x, training=True):
        """This step's teacher outputs: from the stash, or run now.

        The backend that fills the stash also empties it after the step.
        """
        if self._teacher_stash.outputs is not None:
            return self._teacher_stash.outputs
        return self._run_teacher(x, training)

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
        teacher = self._teacher_outputs(x, training)
        inputs, side_inputs = step_lib.split_side_inputs(
            x, self._side_input_keys
        )
        inputs = self._step_inputs(inputs, training)
        predictions = student[0]
        replicas = backend_lib.get().replicas_in_sync()
        batch_size = ops.shape(predictions)[0]
        batch = ops.cast(batch_size, "float32")
        global_batch = batch * replicas if replicas == 1 else None
        example_weight = terms_lib.example_weights(sample_weight)
        input_checks = [checks.negative_check(sample_weight)]

        if self._compile_loss is not None and y is not None:
            checks.check_label_shape(self.loss, y, predictions)
            y, labels_check = checks.finite_labels(y)
            input_checks.append(labels_check)
            task = self._task_loss(y, predictions, sample_weight, training)
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
        if training:
            self._clear_step_inputs()
        if training and self.check_finite:
            input_checks += [ops.zeros((), "float32")] * (
                len(checks.INPUT_CHECKS) - len(input_checks)
            )
            backend_lib.get().record_non_finite(
                self,
                numerics.first_non_finite(input_checks + weighted + [total]),
            )
        return total

    def _task_loss(self, y, predictions, sample_weight, training):
        """The compiled loss; under mixing, the mix of both examples' loss."""
        ops = keras.ops
        task = ops.cast(
            self._compile_loss(y, predictions, sample_weight), "float32"
        )
        matching = self.function_matching
        if not training or matching is None or not matching.mixes:
            return task
        lam = self._augmented.step.lam
        partner = matching.partner_labels(y)
        partner_task = ops.cast(
            self._compile_loss(partner, predictions, sample_weight), "float32"
        )
        return lam * task + (1.0 - lam) * partner_task

    def _check_step_data(self, x, y, training=True):
        """Fails before any network runs when a loss lacks its inputs.

        The eager PyTorch step calls this first, so that not even the
        student's BatchNormalization statistics move; compiled steps fail
        while tracing (`distiller_checks.check_requirements`), before
        anything runs.
        """
        checks.metrics_have_labels(self, y)
        _, side = step_lib.split_side_inputs(x, self._side_input_keys)
        for loss in self.distillation_losses + self.procedures:
            checks.check_present(
                loss, y is not None, step_lib.EXAMPLE_ID in side, training
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
        checks.metrics_have_labels(self, y)
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

    # --- compiling: loss scaling ---------------------------------------------

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
        # Keras keeps the metrics of an earlier compile when this one names
        # none; a compile here means the settings it is given.
        self._compile_metrics = None
        super().compile(
            optimizer, *args, auto_scale_loss=auto_scale_loss, **kwargs
        )
