"""keras_kd.procedures: training that is more than a loss.

A `Procedure` hooks into the Distiller's step: it may read inputs of its
own (side inputs of the input dict), own variables (tracked, trained and
saved with the distiller), add weighted loss terms, and bring the Keras
callbacks it needs in `fit` (e.g. one that steps a model of its own with an
optimizer of its own between batches). See `Procedure`.
"""

from keras_kd.procedures.base import Procedure

__all__ = ["Procedure"]
