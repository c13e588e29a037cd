"""keras_kd.procedures: training that is more than a loss.

A `Procedure` hooks into the Distiller's step: it may read inputs of its
own (side inputs of the input dict), own variables (tracked, trained and
saved with the distiller), add weighted loss terms, and bring the Keras
callbacks it needs in `fit` (e.g. one that steps a model of its own with an
optimizer of its own between batches). See `Procedure`.

Data-free distillation lives here too: `TeacherInversion` and `synthesize`
make images from a teacher (DeepInversion), `distill_data_free` alternates
synthesis and distillation (Adaptive DeepInversion); and distillation into
a new domain: `DomainAdaptiveDistiller` adapts the teacher to unlabelled
target data while distilling the student on both domains.
"""

from keras_kd.procedures.base import Procedure
from keras_kd.procedures.boundary import boundary_attack
from keras_kd.procedures.boundary import input_scale_of
from keras_kd.procedures.boundary import sample_target_classes
from keras_kd.procedures.boundary import select_base_samples
from keras_kd.procedures.boundary_samples import BoundarySupportingSamples
from keras_kd.procedures.boundary_samples import BoundarySupportingSchedule
from keras_kd.procedures.data_free import distill_data_free
from keras_kd.procedures.domain_adaptation import DomainAdaptiveDistiller
from keras_kd.procedures.domain_adaptation import paired_domains
from keras_kd.procedures.domain_adaptation import trainable_copy
from keras_kd.procedures.domain_terms import adaptation_ramp
from keras_kd.procedures.domain_terms import multi_kernel_mmd
from keras_kd.procedures.domain_terms import progressive_weight
from keras_kd.procedures.inversion import OFFICIAL_CIFAR10
from keras_kd.procedures.inversion import TeacherInversion
from keras_kd.procedures.inversion import input_affine_of
from keras_kd.procedures.inversion_terms import adaptive_competition_loss
from keras_kd.procedures.inversion_terms import batch_norm_statistics_loss
from keras_kd.procedures.inversion_terms import jensen_shannon_divergence
from keras_kd.procedures.inversion_terms import total_variation
from keras_kd.procedures.route import Route
from keras_kd.procedures.route import RouteRecorder
from keras_kd.procedures.route_constrained import RouteConstrainedOptimization
from keras_kd.procedures.route_constrained import equal_interval_anchors
from keras_kd.procedures.route_constrained import greedy_next_anchor
from keras_kd.procedures.synthesis import SynthesizedImages
from keras_kd.procedures.synthesis import synthesize

__all__ = [
    "OFFICIAL_CIFAR10",
    "BoundarySupportingSamples",
    "BoundarySupportingSchedule",
    "DomainAdaptiveDistiller",
    "Procedure",
    "Route",
    "RouteConstrainedOptimization",
    "RouteRecorder",
    "SynthesizedImages",
    "TeacherInversion",
    "adaptation_ramp",
    "adaptive_competition_loss",
    "batch_norm_statistics_loss",
    "boundary_attack",
    "distill_data_free",
    "equal_interval_anchors",
    "greedy_next_anchor",
    "input_affine_of",
    "input_scale_of",
    "jensen_shannon_divergence",
    "multi_kernel_mmd",
    "paired_domains",
    "progressive_weight",
    "sample_target_classes",
    "select_base_samples",
    "synthesize",
    "total_variation",
    "trainable_copy",
]
