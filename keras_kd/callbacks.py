"""Schedules for the Distiller's loss weights: stages, ramps, AB initialisation.

Loss weights live in non-trainable variables read inside the compiled train
step, so these callbacks take effect without recompiling. Each schedule sets
the weights as a pure function of the epoch, so a run resumed by
`keras.callbacks.BackupAndRestore` continues in the right stage.
"""

import keras


def _distiller(model):
    from keras_kd.distiller import Distiller

    if not isinstance(model, Distiller):
        raise TypeError(
            "Loss-weight schedules drive a `keras_kd.Distiller`; this "
            f"callback was given a {type(model).__name__}. Pass it to "
            "`distiller.fit(callbacks=[...])`."
        )
    return model


class LossWeightSchedule(keras.callbacks.Callback):
    """Sets loss weights at the start of every epoch from `schedule(epoch)`.

    Args:
        schedule: a function of the (0-based) epoch returning a dict
            `{name: weight}`, where `name` is `"student"` (the task loss) or
            the name of a distillation loss. Weights it leaves out keep
            their current values.
        verbose: print the weights when they change. Defaults to `0`.

    Example:

    ```python
    # Ramp KD in over the first 5 epochs.
    ramp = keras_kd.callbacks.LossWeightSchedule(
        lambda epoch: {"logits_distillation": min(1.0, (epoch + 1) / 5)})
    ```
    """

    def __init__(self, schedule, verbose=0):
        super().__init__()
        if not callable(schedule):
            raise TypeError(
                "`schedule` must be a function of the epoch returning "
                f"{{name: weight}}; received {schedule!r}."
            )
        self.schedule = schedule
        self.verbose = verbose
        self._last = None

    def weights_for_epoch(self, epoch):
        return dict(self.schedule(epoch))

    def on_epoch_begin(self, epoch, logs=None):
        distiller = _distiller(self.model)
        weights = self.weights_for_epoch(epoch)
        distiller.set_loss_weights(**weights)
        if self.verbose and weights != self._last:
            print(f"\nEpoch {epoch + 1}: loss weights {distiller.loss_weights}")
        self._last = weights


class StagedSchedule(LossWeightSchedule):
    """Multi-stage training: each stage fixes the loss weights for N epochs.

    Args:
        stages: list of `(num_epochs, {name: weight})`. The last stage runs
            to the end of training whatever its `num_epochs`. Names left out
            of a stage take their configured (constructor) weight.
        verbose: print the weights at each stage change. Defaults to `0`.

    Example:

    ```python
    # Hints first (FitNets stage 1), then task + KD.
    schedule = keras_kd.callbacks.StagedSchedule([
        (5, {"student": 0.0, "logits_distillation": 0.0}),
        (None, {"fitnets_hint": 0.0}),
    ])
    ```
    """

    def __init__(self, stages, verbose=0):
        stages = list(stages)
        if not stages:
            raise ValueError("`stages` is empty; give at least one stage.")
        for i, stage in enumerate(stages):
            if not (isinstance(stage, (tuple, list)) and len(stage) == 2):
                raise ValueError(
                    f"Stage {i} must be a pair (num_epochs, {{name: weight}}); "
                    f"received {stage!r}."
                )
            epochs = stage[0]
            last = i == len(stages) - 1
            if not last and (not isinstance(epochs, int) or epochs < 0):
                raise ValueError(
                    f"Stage {i} must last a whole number of epochs >= 0; "
                    f"received {epochs!r}."
                )
        self.stages = stages
        super().__init__(self._weights, verbose=verbose)

    def stage_of_epoch(self, epoch):
        """Index of the stage that contains `epoch` (0-based)."""
        start = 0
        for index, (epochs, _) in enumerate(self.stages[:-1]):
            if epoch < start + epochs:
                return index
            start += epochs
        return len(self.stages) - 1

    def _weights(self, epoch):
        weights = _distiller(self.model).configured_loss_weights
        weights.update(self.stages[self.stage_of_epoch(epoch)][1])
        return weights


class InitializationSchedule(StagedSchedule):
    """Two stages: some losses initialise the student, then the rest train.

    Stage 1 (`init_epochs` epochs): only the initialisation losses train
    the student and their connectors; the task loss and every other
    distillation loss are switched off. Stage 2: the initialisation losses
    are switched off (their connectors get no gradient) and the task loss
    plus the other losses train with their configured weights. This is how
    activation boundary transfer (Heo et al.) and FSP (Yim et al.) train.

    At the start of stage 2 the optimizer restarts (`restart_optimizer=True`,
    the default): its step count and its moments go back to zero, as in
    RepDistiller, whose `init()` trains the initialisation with an optimizer
    of its own and then starts the main training with a fresh one. A
    learning-rate schedule therefore runs from its start again in stage 2:
    give it the length of stage 2. Without the restart, Adam's second
    moments carry the large initialisation gradients into stage 2 and damp
    its updates for thousands of steps: on the panel's Fashion-MNIST cell
    with Adam and a tiny student, AB initialisation then cross-entropy fell
    far below the student alone without the restart
    (`benchmarks/results/panel_v0_1.md`, whose runs kept one optimizer) and
    stays inside the noise with it (`benchmarks/results/panel.md`).

    Args:
        init_epochs: epochs of stage 1 (RepDistiller: 30 of 240).
        losses: the names of the initialisation losses. Defaults to every
            loss of the Distiller whose class says it is one
            (`initialization_stage = True`: `ActivationBoundary`,
            `FlowOfSolution`).
        restart_optimizer: restart the optimizer (step count and moments to
            zero; learning-rate variable and loss scale kept) when stage 2
            begins. Defaults to `True`; `False` keeps one optimizer state
            across both stages.
        verbose: print the weights when the stage changes. Defaults to `0`.
    """

    #: The loss classes this schedule initialises with (`None`: any class
    #: with `initialization_stage = True`), and the name used in errors.
    loss_class = None
    method = "an initialisation loss (ActivationBoundary, FlowOfSolution)"

    def __init__(
        self, init_epochs, losses=None, restart_optimizer=True, verbose=0
    ):
        if not isinstance(init_epochs, int) or init_epochs < 0:
            raise ValueError(
                "`init_epochs` must be a whole number of epochs >= 0; "
                f"received {init_epochs!r}."
            )
        if not isinstance(restart_optimizer, bool):
            raise TypeError(
                "`restart_optimizer` must be True or False; received "
                f"{restart_optimizer!r}."
            )
        if isinstance(losses, str):
            losses = [losses]
        self.init_epochs = init_epochs
        self.losses = None if losses is None else list(losses)
        self.restart_optimizer = restart_optimizer
        super().__init__([(init_epochs, {}), (None, {})], verbose=verbose)

    def on_epoch_begin(self, epoch, logs=None):
        super().on_epoch_begin(epoch, logs)
        if (
            self.restart_optimizer
            and self.init_epochs
            and epoch == self.init_epochs
        ):
            restart_optimizer(self.model.optimizer)
            if self.verbose:
                print(
                    f"\nEpoch {epoch + 1}: optimizer restarted (step 0, "
                    "zero moments)"
                )

    def _initialization_names(self, distiller):
        names = [loss.name for loss in distiller.distillation_losses]
        if self.losses is not None:
            unknown = [n for n in self.losses if n not in names]
            if unknown:
                raise ValueError(
                    f"{type(self).__name__}: no distillation loss named "
                    f"{unknown}; the Distiller has {names}."
                )
            return list(self.losses)
        chosen = [
            loss.name
            for loss in distiller.distillation_losses
            if (
                isinstance(loss, self.loss_class)
                if self.loss_class is not None
                else getattr(loss, "initialization_stage", False)
            )
        ]
        if not chosen:
            raise ValueError(
                f"{type(self).__name__} needs {self.method} in the "
                f"Distiller; it has {names}."
            )
        return chosen

    def _weights(self, epoch):
        distiller = _distiller(self.model)
        weights = distiller.configured_loss_weights
        init_names = self._initialization_names(distiller)
        in_init = self.stage_of_epoch(epoch) == 0
        for name in weights:
            if (name in init_names) != in_init:
                weights[name] = 0.0
        return weights


class ActivationBoundarySchedule(InitializationSchedule):
    """The two-stage schedule of activation boundary transfer (Heo et al.).

    `InitializationSchedule` with the Distiller's `ActivationBoundary`
    losses: stage 1, "AB initialisation" (`init_epochs` epochs), trains the
    student and its connectors on the activation boundary losses alone;
    stage 2 switches them off and trains on the task loss plus any other
    losses (e.g. KD). The official CIFAR code trains stage 2 with KD only
    (T=3, no T^2); RepDistiller (30 of 240 epochs of initialisation) with
    cross-entropy only. Configure the Distiller's other losses to pick
    either. The optimizer restarts at stage 2 (see
    `InitializationSchedule`).

    Reference:
        Heo, Lee, Yun, Choi. "Knowledge Transfer via Distillation of
        Activation Boundaries Formed by Hidden Neurons." AAAI 2019.
        Official code: github.com/bhheo/AB_distillation.

    Args:
        init_epochs: epochs of stage 1 (RepDistiller: 30 of 240).
        restart_optimizer: restart the optimizer when stage 2 begins.
            Defaults to `True`.
        verbose: print the weights when the stage changes. Defaults to `0`.
    """

    method = "an ActivationBoundary loss"

    def __init__(self, init_epochs, restart_optimizer=True, verbose=0):
        from keras_kd.losses.activation_boundary import ActivationBoundary

        self.loss_class = ActivationBoundary
        super().__init__(
            init_epochs, restart_optimizer=restart_optimizer, verbose=verbose
        )


class FlowOfSolutionSchedule(InitializationSchedule):
    """FSP's two stages (Yim et al.): FSP alone first, then the task.

    `InitializationSchedule` with the Distiller's `FlowOfSolution` losses:
    stage 1 (`init_epochs` epochs) trains the student (and any connectors)
    on the FSP matrices alone; stage 2 trains on the task loss and the other
    losses, without FSP. RepDistiller: 30 initialisation epochs, then 240 of
    cross-entropy (its `-b` weight multiplies a zero FSP term there).

    Reference:
        Yim, Joo, Bae, Kim, "A Gift from Knowledge Distillation", CVPR 2017.

    Args:
        init_epochs: epochs of stage 1.
        restart_optimizer: restart the optimizer when stage 2 begins.
            Defaults to `True`.
        verbose: print the weights when the stage changes. Defaults to `0`.
    """

    method = "a FlowOfSolution loss"

    def __init__(self, init_epochs, restart_optimizer=True, verbose=0):
        from keras_kd.losses.flow_of_solution import FlowOfSolution

        self.loss_class = FlowOfSolution
        super().__init__(
            init_epochs, restart_optimizer=restart_optimizer, verbose=verbose
        )


class LinearWarmup(keras.callbacks.Callback):
    """Ramps loss weights linearly from 0 over the first part of training.

    Each named loss's weight is `configured weight * min(1, step / n)`,
    set before every training step, where `n` is `fraction` of all the
    training steps of `fit` (`epochs * steps per epoch`, from Keras's own
    count; at least one step). A pure function of the global step, so a run
    resumed by `keras.callbacks.BackupAndRestore` continues on the ramp.
    A method whose official schedule ramps its term in (over 20 of 240
    epochs: `fraction=1/12`) declares the fraction as its `warmup`
    attribute, and `for_losses` builds this callback for it.

    Args:
        fractions: `{loss name: fraction of training}`, each fraction in
            `[0, 1)`; 0 leaves that loss alone.
        verbose: print the weights at the end of the ramp. Defaults to `0`.

    Example:

    ```python
    warmup = keras_kd.callbacks.LinearWarmup({"logits_distillation": 0.1})
    distiller.fit(x, y, epochs=24, callbacks=[warmup])
    ```
    """

    def __init__(self, fractions, verbose=0):
        super().__init__()
        if not isinstance(fractions, dict) or not fractions:
            raise TypeError(
                "`fractions` must be a non-empty dict {loss name: fraction "
                f"of training}}; received {fractions!r}."
            )
        for name, fraction in fractions.items():
            if (
                isinstance(fraction, bool)
                or not isinstance(fraction, (int, float))
                or not 0.0 <= fraction < 1.0
            ):
                raise ValueError(
                    f"The warm-up fraction of '{name}' must be a number in "
                    f"[0, 1); received {fraction!r}."
                )
        self.fractions = dict(fractions)
        self.verbose = verbose
        self._ramp = {}
        self._step = 0
        self._steps_per_epoch = None

    def on_train_begin(self, logs=None):
        distiller = _distiller(self.model)
        configured = distiller.configured_loss_weights
        unknown = [n for n in self.fractions if n not in configured]
        if unknown:
            raise ValueError(
                f"LinearWarmup: no loss named {unknown}; the Distiller has "
                f"{[n for n in configured if n != 'student']}."
            )
        steps = self.params.get("steps")
        if not steps:
            raise ValueError(
                "LinearWarmup ramps over a fraction of all training steps, "
                "but `fit` does not know the number of steps per epoch (a "
                "dataset of unknown length). Pass `steps_per_epoch=` to "
                "`fit`, or give the dataset a known cardinality "
                "(`dataset.apply(tf.data.experimental.assert_cardinality(n))`)."
            )
        total = max(1, int(self.params.get("epochs", 1)) * int(steps))
        self._steps_per_epoch = int(steps)
        self._ramp = {
            name: max(1, round(fraction * total))
            for name, fraction in self.fractions.items()
            if fraction > 0
        }

    def on_epoch_begin(self, epoch, logs=None):
        self._step = epoch * (self._steps_per_epoch or 0)

    def on_train_batch_begin(self, batch, logs=None):
        step = self._step + batch
        distiller = _distiller(self.model)
        configured = distiller.configured_loss_weights
        current = distiller.loss_weights
        weights = {}
        for name, length in self._ramp.items():
            value = configured[name] * min(1.0, (step + 1) / length)
            if value != current[name]:
                weights[name] = value
        if weights:
            distiller.set_loss_weights(**weights)
            if self.verbose and step + 1 == max(self._ramp.values()):
                print(f"\nWarm-up done: loss weights {distiller.loss_weights}")


def for_distiller(distiller, init_epochs=0):
    """`for_losses` of the Distiller's losses, plus what each of its
    procedures asks for (`Procedure.callbacks()`)."""
    callbacks = for_losses(distiller.distillation_losses, init_epochs)
    for procedure in distiller.procedures:
        callbacks.extend(procedure.callbacks())
    return callbacks


def for_losses(losses, init_epochs=0):
    """The callbacks a set of losses asks for, to pass to `fit`.

    - `InitializationSchedule(init_epochs)` when `init_epochs > 0` and a
      loss is an initialisation stage (`ActivationBoundary`,
      `FlowOfSolution`);
    - `LinearWarmup` for the losses with a `warmup` fraction.

    Args:
        losses: the Distiller's distillation losses.
        init_epochs: epochs of the initialisation stage. Defaults to `0`.

    Returns:
        A list of callbacks (possibly empty).
    """
    callbacks = []
    if init_epochs and any(
        getattr(loss, "initialization_stage", False) for loss in losses
    ):
        callbacks.append(InitializationSchedule(init_epochs))
    warmups = {
        loss.name: loss.warmup
        for loss in losses
        if getattr(loss, "warmup", 0) > 0
    }
    if warmups:
        callbacks.append(LinearWarmup(warmups))
    return callbacks


def restart_optimizer(optimizer):
    """Puts a built optimizer back in its initial state, in place.

    Its step count and every slot variable (momentums, velocities, gradient
    accumulators) go back to zero, so the next update is the first of a
    fresh optimizer of the same configuration and a learning-rate schedule
    starts again from step 0. What is configuration, not state, is kept: a
    learning-rate variable (a value a callback may have set) and, for a
    `LossScaleOptimizer`, the loss scale. Moving averages (`use_ema=True`)
    restart from the current weights.

    Args:
        optimizer: a `keras.optimizers.Optimizer` (or `LossScaleOptimizer`).

    Returns:
        `None`.
    """
    from keras import ops

    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "restart_optimizer needs a keras.optimizers.Optimizer; received "
            f"{type(optimizer).__name__}."
        )
    inner = getattr(optimizer, "inner_optimizer", None)
    keep = set()
    if inner is not None:
        # The loss scale and its growth counter are tuned to the model's
        # gradients, not to the optimizer's history: keep them.
        keep |= {id(v) for v in optimizer._variables}
        target = inner
    else:
        target = optimizer
    learning_rate = getattr(target, "_learning_rate", None)
    if isinstance(learning_rate, keras.Variable):
        keep.add(id(learning_rate))
    averages = list(
        getattr(target, "_model_variables_moving_average", None) or []
    )
    keep |= {id(v) for v in averages}
    for variable in optimizer.variables:
        if id(variable) not in keep:
            variable.assign(ops.zeros(variable.shape, dtype=variable.dtype))
    for average, weight in zip(
        averages, getattr(target, "_trainable_variables", [])
    ):
        average.assign(ops.cast(weight, average.dtype))
