"""The one rule for feature maps of different resolutions.

`keras_kd.connectors.spatial_factor` decides both how NST / attention
transfer pool a pair (`spatial_pool_factors`) and which convolution a
FitNets regressor uses (`Connector(kind="regressor")`).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import pytest  # noqa: E402

from keras_kd.connectors import Connector  # noqa: E402
from keras_kd.connectors import spatial_factor  # noqa: E402
from keras_kd.losses.spatial import spatial_pool_factors  # noqa: E402


@pytest.mark.parametrize(
    "larger,smaller,expected",
    [
        ((8, 8), (8, 8), 1),
        ((16, 16), (8, 8), 2),
        ((32, 24), (8, 6), 4),
        ((16, 8), (8, 8), None),  # 2x in height, 1x in width
        ((12, 12), (8, 8), None),  # not an integer factor
        ((8, 8), (16, 16), None),  # smaller, not larger
    ],
)
def test_spatial_factor(larger, smaller, expected):
    assert spatial_factor(larger, smaller) == expected


@pytest.mark.parametrize(
    "teacher_hw,student_hw,expected",
    [
        ((8, 8), (8, 8), (1, 1)),
        ((16, 16), (8, 8), (2, 1)),
        ((8, 8), (32, 32), (1, 4)),
    ],
)
def test_pool_factors_pool_the_larger_map(teacher_hw, student_hw, expected):
    factors = spatial_pool_factors(
        (None, *teacher_hw, 3), (None, *student_hw, 5), "NST", "the pair"
    )
    assert factors == expected


def test_pool_factors_reject_different_factors():
    with pytest.raises(
        ValueError,
        match=r"\(16, 8\) vs \(8, 8\).*same "
        "integer factor",
    ):
        spatial_pool_factors((None, 16, 8, 3), (None, 8, 8, 3), "NST", "p")


@pytest.mark.parametrize(
    "student_hw,teacher_hw,layer,strides",
    [
        ((8, 8), (8, 8), keras.layers.Conv2D, (1, 1)),
        ((16, 16), (8, 8), keras.layers.Conv2D, (2, 2)),
        ((4, 4), (16, 16), keras.layers.Conv2DTranspose, (4, 4)),
    ],
)
def test_regressor_follows_the_same_rule(
    student_hw, teacher_hw, layer, strides
):
    connector = Connector(
        (None, *student_hw, 3), (None, *teacher_hw, 6), kind="regressor"
    )
    assert type(connector.projection) is layer
    assert tuple(connector.projection.strides) == strides
    assert tuple(connector.compute_output_shape((2, *student_hw, 3))) == (
        2,
        *teacher_hw,
        6,
    )


def test_regressor_rejects_different_factors():
    with pytest.raises(ValueError, match="same integer factor"):
        Connector((None, 16, 8, 3), (None, 8, 8, 6), kind="regressor")
