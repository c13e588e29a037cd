"""The Distiller on the PyTorch backend: the non-finite guard.

Keras's PyTorch trainer runs eagerly: `train_step` calls `compute_loss`, then
`backward()` and the optimizer. The guard checks the weighted terms and the
total in `compute_loss` and raises there, before the backward pass, so no
gradient is computed and no weight or optimizer slot changes.
"""

from keras_kd import numerics


def replicas_in_sync():
    return 1


def record_non_finite(distiller, bad):
    index = int(bad)
    if index >= 0:
        raise numerics.guard_error(distiller._guard_names()[index])


class TrainerMixin:
    """PyTorch needs no trainer override (see the module docstring)."""
