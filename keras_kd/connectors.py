"""Trainable adapters that map a student feature onto a teacher feature.

Connectors are built by the Distiller when a layer pair's shapes differ (or
when the method always calls for one, as FitNets does), train with the student,
are saved with the distiller and never become part of `distiller.student`.
`EmbeddingHead` is CRD's projection of a network's feature.
"""

import math

import keras
from keras import ops


class Connector(keras.layers.Layer):
    """Projection (+ BatchNormalization) from student to teacher features.

    - Activation boundary (Heo et al. 2019, official code): 1x1 `Conv2D`
      without bias, He-normal init, then `BatchNormalization`, no activation.
      For rank-2 (dense) features, `Dense` without bias + BatchNormalization.
    - FitNets hint regressor (Romero et al. 2015; RepDistiller `ConvReg`):
      a `Conv2D` (3x3, "same") + BatchNormalization when the spatial sizes
      match; a stride-`k` conv when the student map is `k` times larger; a
      stride-`k` transposed conv when it is `k` times smaller.

    Args:
        student_shape: shape of the student feature, batch axis included.
        teacher_shape: shape of the teacher feature, batch axis included.
        kind: `"projection"` (1x1, the AB connector) or `"regressor"` (the
            FitNets hint regressor). Defaults to `"projection"`.
        dtype: dtype policy of the connector (the student's by default).
    """

    def __init__(
        self, student_shape, teacher_shape, kind="projection", **kwargs
    ):
        super().__init__(**kwargs)
        self.student_shape = tuple(student_shape)
        self.teacher_shape = tuple(teacher_shape)
        self.kind = kind
        channels = teacher_shape[-1]
        init = keras.initializers.HeNormal()
        if len(student_shape) == 2:
            self.projection = keras.layers.Dense(
                channels,
                use_bias=False,
                kernel_initializer=init,
                dtype=self.dtype_policy,
                name="dense",
            )
        elif kind == "projection":
            self.projection = keras.layers.Conv2D(
                channels,
                1,
                use_bias=False,
                kernel_initializer=init,
                dtype=self.dtype_policy,
                name="conv",
            )
        else:
            self.projection = _regressor_conv(
                student_shape, teacher_shape, init, self.dtype_policy
            )
        self.norm = keras.layers.BatchNormalization(
            dtype=self.dtype_policy, name="bn"
        )
        self.build(self.student_shape)

    def build(self, input_shape):
        self.projection.build(input_shape)
        out_shape = self.projection.compute_output_shape(input_shape)
        self.norm.build(out_shape)
        self.built = True

    def call(self, inputs, training=None):
        return self.norm(self.projection(inputs), training=training)

    def compute_output_shape(self, input_shape):
        return self.projection.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            student_shape=self.student_shape,
            teacher_shape=self.teacher_shape,
            kind=self.kind,
        )
        return config


def _regressor_conv(student_shape, teacher_shape, init, dtype):
    s_h, s_w = student_shape[1], student_shape[2]
    t_h, t_w = teacher_shape[1], teacher_shape[2]
    channels = teacher_shape[-1]
    common = dict(kernel_initializer=init, dtype=dtype, name="conv")
    if (s_h, s_w) == (t_h, t_w):
        return keras.layers.Conv2D(channels, 3, padding="same", **common)
    k = spatial_factor((s_h, s_w), (t_h, t_w))
    if k:
        return keras.layers.Conv2D(
            channels, 3, strides=k, padding="same", **common
        )
    k = spatial_factor((t_h, t_w), (s_h, s_w))
    if k:
        return keras.layers.Conv2DTranspose(
            channels, 4 if k == 2 else k, strides=k, padding="same", **common
        )
    raise ValueError(
        f"A hint regressor cannot map the student feature of shape "
        f"{tuple(student_shape)} onto the teacher hint of shape "
        f"{tuple(teacher_shape)}: the spatial sizes must be equal or differ "
        "by the same integer factor in height and width. Tap a student layer "
        "whose resolution matches the teacher layer (or is 2x, 4x, ... it)."
    )


def spatial_factor(larger, smaller):
    """`k` if `larger` is `k` times `smaller` in height and width, else `None`.

    The one rule for feature maps of different resolutions: a FitNets
    regressor maps them with a stride-`k` (transposed) convolution, NST and
    attention transfer average-pool the larger map by `k`.

    Args:
        larger: `(H, W)` of the map that may be larger (known sizes).
        smaller: `(H, W)` of the other map.

    Returns:
        The integer factor `k >= 1` (`1` for equal sizes), or `None` when
        the sizes do not differ by the same integer factor.

    Example:

    >>> spatial_factor((32, 32), (8, 8))
    4
    >>> spatial_factor((32, 16), (8, 8)) is None  # 4x and 2x
    True
    >>> spatial_factor((8, 8), (32, 32)) is None  # smaller, not larger
    True
    """
    (big_h, big_w), (small_h, small_w) = larger, smaller
    if big_h % small_h or big_w % small_w:
        return None
    k = big_h // small_h
    return k if k == big_w // small_w else None


class EmbeddingHead(keras.layers.Layer):
    """CRD's embedding: flatten, `Dense(feature_dim)`, L2-normalise."""

    def __init__(self, feature_dim, **kwargs):
        super().__init__(**kwargs)
        self.feature_dim = int(feature_dim)
        self.dense = keras.layers.Dense(
            self.feature_dim, dtype=self.dtype_policy, name="dense"
        )

    def build(self, input_shape):
        self.dense.build((input_shape[0], math.prod(input_shape[1:])))
        self.built = True

    def call(self, x):
        x = ops.reshape(x, (ops.shape(x)[0], -1))
        x = ops.cast(self.dense(x), "float32")
        return x / ops.maximum(_safe_norm(x), 1e-12)

    def get_config(self):
        config = super().get_config()
        config.update(feature_dim=self.feature_dim)
        return config


def _safe_norm(x):
    """The L2 norm of each row (`keras_kd.losses.pairwise.safe_norm`)."""
    from keras_kd.losses import pairwise

    return pairwise.safe_norm(x, -1, keepdims=True)
