"""keras_kd: knowledge distillation for Keras 3.

Public API:
    Distiller: a `keras.Model` that trains a student from a frozen teacher
        (TensorFlow, JAX or PyTorch backend).
    FunctionMatching: the Distiller's option that augments each training
        batch once (crops, flips, mixup, CutMix) for teacher and student.
    NonFiniteLossError: raised when a loss term becomes NaN or Inf.
    losses: one module per distillation method (ActivationBoundary,
        NeuronSelectivityTransfer, LogitsDistillation, ...), a class and its
        pure function each; `losses.get("ab", ...)` builds one by name from
        the method registry, and `losses.registry.describe()` lists them.
    step: StepContext, what one step hands the losses.
    procedures: Procedure, training that is more than a loss.
    callbacks: LossWeightSchedule, StagedSchedule, InitializationSchedule,
        ActivationBoundarySchedule, FlowOfSolutionSchedule, LinearWarmup.
    taps: Tap, build_extractor (tapping layers of functional models).
    backup: AtomicBackupAndRestore (resume after a crash, nothing torn).
    distribute: synchronize_batch_norm (global-batch BatchNormalization).
    backend: the backend-specific parts of the Distiller's step.
    data: tf.data input pipelines (bundled data, .npz archives, tfds).
    models: reference CNN / ResNet builders.
"""

from keras_kd import backup
from keras_kd import callbacks
from keras_kd import data
from keras_kd import distribute
from keras_kd import losses
from keras_kd import models
from keras_kd import procedures
from keras_kd import step
from keras_kd import taps
from keras_kd.distiller import Distiller
from keras_kd.function_matching import FunctionMatching
from keras_kd.numerics import NonFiniteLossError

__version__ = "0.1.0"

__all__ = [
    "Distiller",
    "FunctionMatching",
    "NonFiniteLossError",
    "backup",
    "callbacks",
    "data",
    "distribute",
    "losses",
    "models",
    "procedures",
    "step",
    "taps",
    "__version__",
]
