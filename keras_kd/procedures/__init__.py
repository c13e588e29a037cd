"""keras_kd.procedures: training that is more than a loss.

A `Procedure` hooks into the Distiller's step: it may read inputs of its
own (side inputs of the input dict), own variables (tracked, trained and
saved with the distiller), add weighted loss terms, and bring the Keras
callbacks it needs in `fit` (e.g. one that steps a model of its own with an
optimizer of its own between batches). See `Procedure`.
"""

from keras_kd.procedures.base import Procedure
from keras_kd.procedures.boundary import boundary_attack
from keras_kd.procedures.boundary import input_scale_of
from keras_kd.procedures.boundary import sample_target_classes
from keras_kd.procedures.boundary import select_base_samples
from keras_kd.procedures.boundary_samples import BoundarySupportingSamples
from keras_kd.procedures.boundary_samples import BoundarySupportingSchedule
from keras_kd.procedures.route import Route
from keras_kd.procedures.route import RouteRecorder
from keras_kd.procedures.route_constrained import RouteConstrainedOptimization
from keras_kd.procedures.route_constrained import equal_interval_anchors
from keras_kd.procedures.route_constrained import greedy_next_anchor

__all__ = [
    "BoundarySupportingSamples",
    "BoundarySupportingSchedule",
    "Procedure",
    "Route",
    "RouteConstrainedOptimization",
    "RouteRecorder",
    "boundary_attack",
    "equal_interval_anchors",
    "greedy_next_anchor",
    "input_scale_of",
    "sample_target_classes",
    "select_base_samples",
]
