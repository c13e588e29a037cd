"""The Distiller on the PyTorch backend: teacher first, the non-finite guard.

Keras's PyTorch trainer runs eagerly: `train_step` runs the model (here the
student's extraction), then `compute_loss`, `backward()` and the optimizer.

- Teacher first: `TrainerMixin.train_step` runs the frozen teacher under
  `torch.no_grad()` *before* the student's pass and hands its outputs to
  `compute_loss` (still one teacher pass per step). Run after the student,
  the teacher allocated its activations while the student's, kept for the
  backward pass, were still alive, and on CPU it ran measurably slower than
  on its own; KD here costs less over the student's own step than
  `keras.distillation`'s KD, which runs the teacher after the student
  (measured: `benchmarks/results/speed_backends.md`). Eager order is the
  only order PyTorch has; TensorFlow and JAX compile the step and schedule
  it themselves.
- The guard checks the weighted terms and the total in `compute_loss` and
  raises there, before the backward pass, so no gradient is computed and no
  weight or optimizer slot changes.
"""

import keras
import torch

from keras_kd import numerics


def replicas_in_sync():
    return 1


def replica_id():
    """0: one device."""
    return 0


def all_gather(value):
    """The identity: the step sees the whole batch."""
    return value


def input_gradient(function, x):
    """`(d sum / dx, aux)` of `function(x) -> (sum, aux)`, with
    `torch.autograd.grad` on a detached copy of `x` (grad mode on, also
    inside `torch.no_grad()`)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        value, aux = function(x)
        (gradient,) = torch.autograd.grad(value, x)
    return gradient, aux


def sync_variables(model):
    """Nothing: PyTorch's eager step reads the variables themselves."""
    return None


def record_non_finite(distiller, bad):
    index = int(bad)
    if index >= 0:
        raise numerics.guard_error(distiller._guard_names()[index])


class TrainerMixin:
    """PyTorch pieces of `Distiller` (see the module docstring)."""

    def train_step(self, data):
        x, y, _ = keras.utils.unpack_x_y_sample_weight(data)
        self._check_step_data(x, y)
        self._clear_step_inputs()
        with torch.no_grad():
            self._teacher_stash.outputs = self._run_teacher(x)
        try:
            return super().train_step(data)
        finally:
            self._teacher_stash.outputs = None
            self._clear_step_inputs()
