"""The Distiller on the JAX backend: the non-finite guard.

Keras's JAX trainer is stateless: `train_step(state, data)` returns the new
state, and state changes made in `compute_loss` (the guard's flag, the term
trackers) are threaded through it. The guard runs Keras's own step, then keeps
the old trainable, optimizer and non-trainable state (BatchNormalization
statistics included) wherever the flag says a term was not finite: a select
XLA fuses into the update. The flag is sticky, so every later step is a
no-op too, and the weights stay the last finite ones.

That lets the raise wait: the train function reads the flag of the
*previous* step after dispatching the current one (by then the previous
step has usually finished, so reading it does not stall JAX's asynchronous
dispatch the way reading the current step's flag would, every step), and
`jax_state_sync`, which Keras runs at the end of every epoch and of `fit`,
`train_on_batch` and `evaluate`, checks the last step's. A bad step is
reported at most one step later, with the same weights and the same error.

`keras.distribution.DataParallel` needs nothing here: under it the step sees
the global batch, so dividing by the batch size is the global reduction.
"""

import jax
import jax.numpy as jnp

from keras_kd import numerics


def replicas_in_sync():
    """1: under `keras.distribution` the step already sees the global batch."""
    return 1


def replica_id():
    """0: the step sees the global batch."""
    return 0


def all_gather(value):
    """The identity: the step sees the whole batch."""
    return value


def record_non_finite(distiller, bad):
    """Stores the step's first bad term index in the guard's flag variable."""
    flag = distiller._non_finite_flag
    flag.assign(numerics.sticky(flag.value, bad))


def input_gradient(function, x):
    """`(d sum / dx, aux)` of `function(x) -> (sum, aux)`: `jax.grad` in x.

    Inside the trainer's stateless step the networks' variables are values
    of the outer trace, constants of this derivative.
    """
    return jax.grad(function, has_aux=True)(x)


def sync_variables(model):
    """Puts the state Keras's JAX trainer holds during `fit` back into the
    variables and makes the trainer read them again before its next step.

    Called by a callback that changes variables in the middle of `fit`
    (`RouteConstrainedOptimization` loads a teacher anchor): Keras's trainer
    keeps its own copy of every variable during an epoch, and an assignment
    to a variable would otherwise never reach the step.
    """
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


def _flag_index(distiller):
    flag = distiller._non_finite_flag
    for index, variable in enumerate(distiller.non_trainable_variables):
        if variable is flag:
            return index
    raise RuntimeError("keras_kd: the non-finite guard's flag is not tracked.")


_STATE_KEYS = {
    4: (
        "trainable_variables",
        "non_trainable_variables",
        "optimizer_variables",
        "metrics_variables",
    ),
    3: ("trainable_variables", "non_trainable_variables", "metrics_variables"),
}


def _restoring(distiller, function, parts):
    """Wraps a JAX train / test function: if a step raises (e.g. a clear
    error while tracing, for data without the labels or example ids a loss
    reads), the model's variables get the step's input state back.

    Keras's JAX `fit` and `evaluate` detach every variable's value before
    the first step and reattach the state after the epoch, so an exception
    in a step would otherwise leave the student's variables empty.
    """

    def restoring(state, iterator):
        try:
            return function(state, iterator)
        except numerics.NonFiniteLossError:
            raise  # the guard has put back the last finite state
        except Exception:
            try:
                distiller._jax_state = dict(zip(_STATE_KEYS[parts], state))
                distiller._jax_state_synced = False
                distiller.jax_state_sync()
            except Exception:  # noqa: BLE001 - the state was donated
                pass
            raise

    restoring.keras_kd_restores = True
    return restoring


class TrainerMixin:
    """JAX pieces of `Distiller` (see the module docstring)."""

    def train_step(self, state, data):
        self._clear_step_inputs()
        logs, new_state = super().train_step(state, data)
        if not self.check_finite:
            return logs, new_state
        old_trainable, old_non_trainable, old_optimizer, _ = state
        trainable, non_trainable, optimizer, metrics = new_state
        index = _flag_index(self)
        ok = jnp.less(non_trainable[index], 0)

        def keep(new, old):
            return [jnp.where(ok, n, o) for n, o in zip(new, old)]

        non_trainable = [
            value if i == index else jnp.where(ok, value, old)
            for i, (value, old) in enumerate(
                zip(non_trainable, old_non_trainable)
            )
        ]
        return logs, (
            keep(trainable, old_trainable),
            non_trainable,
            keep(optimizer, old_optimizer),
            metrics,
        )

    def make_train_function(self, force=False):
        super().make_train_function(force=force)
        if not getattr(self.train_function, "keras_kd_restores", False):
            self.train_function = _restoring(self, self.train_function, 4)
        function = self.train_function
        if not self.check_finite or getattr(
            function, "keras_kd_guarded", False
        ):
            return function
        names = self._guard_names()
        self._guard_pending = None

        def guarded(state, iterator):
            logs, state = function(state, iterator)
            index = _flag_index(self)
            # Read the previous step's flag; this step's is read next time
            # (or by `jax_state_sync`). A copy (an asynchronous device op):
            # Keras donates the state to the next step.
            pending = self._guard_pending
            self._guard_pending = jnp.copy(state[1][index])
            if pending is None:
                return logs, state
            bad = int(jax.device_get(pending))
            if bad >= 0:
                self._guard_pending = None
                trainable, non_trainable, optimizer, metrics = state
                non_trainable = list(non_trainable)
                # The weights are the last finite ones: training may resume.
                non_trainable[index] = jnp.asarray(-1, dtype="int32")
                # Keras syncs this state back into the variables when `fit`
                # unwinds (the previous state was donated to this step).
                self._jax_state = {
                    "trainable_variables": trainable,
                    "non_trainable_variables": non_trainable,
                    "optimizer_variables": optimizer,
                    "metrics_variables": metrics,
                }
                raise numerics.guard_error(names[bad]) from None
            return logs, state

        guarded.keras_kd_guarded = True
        guarded.keras_kd_restores = True
        self.train_function = guarded
        return guarded

    def make_test_function(self, force=False):
        super().make_test_function(force=force)
        if not getattr(self.test_function, "keras_kd_restores", False):
            self.test_function = _restoring(self, self.test_function, 3)
        return self.test_function

    def jax_state_sync(self):
        super().jax_state_sync()
        if getattr(self, "_guard_pending", None) is None:
            return
        # The last step's flag, now in the variable.
        self._guard_pending = None
        flag = self._non_finite_flag
        bad = int(jax.device_get(flag.value))
        if bad >= 0:
            flag.assign(-1)  # the weights are the last finite ones
            raise numerics.guard_error(self._guard_names()[bad])
