"""The boundary between the backend-neutral Distiller and each Keras backend.

`Distiller` trains through Keras's own trainer hooks (`call`, `compute_loss`,
`compute_metrics`, `predict_step`), which are the same on every backend. The
little that differs lives in one module per backend, chosen once from
`keras.backend.backend()`:

- `tensorflow.py`: `tf.distribute` (replica count, global-batch reduction,
  the multi-worker build and log-shape workarounds, a non-finite guard that
  skips the update across replicas) and the only `import tensorflow`.
- `jax.py`: the non-finite guard as a select between the old and the new
  training state inside the (jitted) step.
- `torch.py`: the non-finite guard as a check before the backward pass.

Each module exports `TrainerMixin` (mixed into `Distiller` ahead of
`keras.Model`), `replicas_in_sync()`, `replica_id()`, `all_gather(value)`
(the global batch for batch-level losses and function matching),
`record_non_finite(distiller, bad)`, `input_gradient(function, x)` (the
gradient of a sum with respect to the inputs, inside the step: adversarial
samples) and `sync_variables(model)` (a callback's assignment reaches the
next step: JAX's trainer holds the variables during `fit`).
Importing this package imports only the active backend's module, so
`import keras_kd` never imports TensorFlow under JAX or PyTorch.
"""

import importlib

import keras

SUPPORTED = ("tensorflow", "jax", "torch")


def name():
    """The active Keras backend."""
    return keras.backend.backend()


def get():
    """The keras_kd module for the active Keras backend."""
    backend = name()
    if backend not in SUPPORTED:
        raise RuntimeError(
            f"keras_kd.Distiller trains with the TensorFlow, JAX or PyTorch "
            f"backend; the active Keras backend is '{backend}'. Set "
            "KERAS_BACKEND to one of "
            f"{list(SUPPORTED)} before importing keras."
        )
    return importlib.import_module(f"keras_kd.backend.{backend}")


class _UnsupportedMixin:
    """Stand-in mixin for a backend Keras has but keras_kd cannot train on."""

    def make_train_function(self, force=False):
        get()  # raises with the explanation


def trainer_mixin():
    if name() not in SUPPORTED:
        return _UnsupportedMixin
    return get().TrainerMixin
