"""Spatial alignment of feature maps for NST and attention transfer."""

import keras

from keras_kd.connectors import spatial_factor


def spatial_pool_factors(teacher_shape, student_shape, method, where):
    """Average-pool factors `(teacher_k, student_k)` that equalise H and W.

    The larger map is pooled to the smaller (RepDistiller uses adaptive
    average pooling); the sizes must differ by the same integer factor
    (`keras_kd.connectors.spatial_factor`). `(1, 1)` for equal sizes.
    """
    for role, shape in (("teacher", teacher_shape), ("student", student_shape)):
        if len(shape) != 4:
            raise ValueError(
                f"{method} needs spatial feature maps (B, H, W, C); the "
                f"{role} tensor of {where} has shape {shape}. Tap a "
                "convolutional layer (before global pooling or flattening)."
            )
    (t_h, t_w), (s_h, s_w) = teacher_shape[1:3], student_shape[1:3]
    if None in (t_h, t_w, s_h, s_w):
        raise ValueError(
            f"{method} needs known spatial sizes; {where} have shapes "
            f"{teacher_shape} and {student_shape}. Give the models a fixed "
            "input size."
        )
    k = spatial_factor((t_h, t_w), (s_h, s_w))
    if k:
        return k, 1
    k = spatial_factor((s_h, s_w), (t_h, t_w))
    if k:
        return 1, k
    raise ValueError(
        f"{method} cannot reconcile the spatial sizes of {where}: "
        f"{(t_h, t_w)} vs {(s_h, s_w)}. The larger map is average-pooled to "
        "the smaller, so they must differ by the same integer factor in "
        "height and width. Tap layers at matching (or 2x, 4x, ...) "
        "resolutions."
    )


def average_pool(x, factor):
    if factor == 1:
        return x
    return keras.ops.average_pool(x, factor, strides=factor, padding="valid")


class SpatialAlignment:
    """Mixin for a `DistillationLoss`: pools each pair to a common H and W.

    At configuration it validates that both features are spatial maps whose
    sizes differ by an integer factor (else a clear error); at run time it
    average-pools the larger map of the pair to the smaller.
    """

    def configure_pair(self, index, teacher_shape, student_shape, dtype, names):
        if not hasattr(self, "_pool"):
            self._pool = {}
        self._pool[index] = spatial_pool_factors(
            teacher_shape,
            student_shape,
            type(self).__name__,
            self.describe_pair(index, names),
        )
        return None

    def prepare_pair(self, index, teacher, student, training):
        t_k, s_k = self._pool[index]
        teacher, student = super().prepare_pair(
            index, teacher, student, training
        )
        return average_pool(teacher, t_k), average_pool(student, s_k)
