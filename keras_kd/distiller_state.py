"""What a Distiller holds and saves: loss weights, variables and its config.

The loss weights are non-trainable variables that callbacks may change
during `fit`. The variables a procedure trains with an optimizer of its own
are left out of the Distiller's `trainable_variables` (and the rest of its
state), so its optimizer never updates them. A `.keras` file holds the
config (teacher, student, losses, weights, procedures), the compile config
(with optimizers that load under any backend) and the loss weights.
"""

import keras

from keras_kd import distiller_checks as checks


class StateMixin:
    """The `Distiller`'s loss weights, trained variables and saving."""

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
            name: checks.check_weight(value, f"loss weight '{name}'")
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

    # --- saving: the compile config, the loss weights, the config ---------

    def compile_from_config(self, config):
        # Keras skips this for models that override `compile`.
        config = keras.saving.deserialize_keras_object(
            portable_optimizers(config)
        )
        self.compile(**config)
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    def save_own_variables(self, store):
        # The loss weights (and function matching's seed, so that a resumed
        # run draws what an uninterrupted one would) are saved; the guard's
        # flag is step state only.
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
        own = [v for v in own if v is not self._non_finite_flag]
        if self.function_matching is not None:
            own.append(self._augment_seed.state)
        return own

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
            "function_matching": (
                None
                if self.function_matching is None
                else serialize(self.function_matching)
            ),
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
        if config.get("function_matching") is not None:
            config["function_matching"] = deserialize(
                config["function_matching"], custom_objects=custom_objects
            )
        return cls(**config)


def portable_optimizers(config):
    """Points backend-specific optimizer classes at `keras.optimizers`.

    Keras saves an optimizer under PyTorch or TensorFlow as, e.g.,
    `keras.src.backend.torch.optimizers.torch_adam.Adam`; loaded under
    another backend that class cannot train (JAX arrays given to torch
    ops). `keras.optimizers.Adam` resolves to the active backend's class.
    """
    if isinstance(config, dict):
        config = {k: portable_optimizers(v) for k, v in config.items()}
        module = config.get("module")
        if isinstance(module, str) and module.startswith("keras.src.backend."):
            if hasattr(keras.optimizers, str(config.get("class_name"))):
                config["module"] = "keras.optimizers"
        return config
    if isinstance(config, (list, tuple)):
        return type(config)(portable_optimizers(v) for v in config)
    return config
