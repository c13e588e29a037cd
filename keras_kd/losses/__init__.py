"""keras_kd.losses: one distillation method per module, a function and a class.

Functions (`activation_boundary_loss`, `neuron_selectivity_loss`, ...) are
pure float32 math on tensors, teacher first. Classes (`ActivationBoundary`,
`NeuronSelectivityTransfer`, ...) name the layers they read and the
connectors they need, and are passed to `keras_kd.Distiller`.
"""

from keras_kd.losses.activation_boundary import ActivationBoundary
from keras_kd.losses.activation_boundary import activation_boundary_loss
from keras_kd.losses.activation_boundary import boundary_agreement
from keras_kd.losses.attention import AttentionTransfer
from keras_kd.losses.attention import attention_map
from keras_kd.losses.attention import attention_transfer_loss
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.hints import FitNetsHint
from keras_kd.losses.hints import fitnets_hint_loss
from keras_kd.losses.logits import LogitsDistillation
from keras_kd.losses.logits import logits_distillation_loss
from keras_kd.losses.neuron_selectivity import NeuronSelectivityTransfer
from keras_kd.losses.neuron_selectivity import neuron_selectivity_loss

__all__ = [
    "ActivationBoundary",
    "AttentionTransfer",
    "DistillationLoss",
    "FitNetsHint",
    "LogitsDistillation",
    "NeuronSelectivityTransfer",
    "activation_boundary_loss",
    "attention_map",
    "attention_transfer_loss",
    "boundary_agreement",
    "fitnets_hint_loss",
    "logits_distillation_loss",
    "neuron_selectivity_loss",
]
