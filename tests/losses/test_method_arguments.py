"""Bad arguments to the new methods fail at once, saying what to do."""

import keras
import numpy as np
import pytest
from backend_utils import to_numpy

from keras_kd import Distiller
from keras_kd import losses as L
from keras_kd.models import conv_net


def _pair():
    teacher = conv_net((8, 8, 3), 5, (8, 16), name="teacher")
    student = conv_net((8, 8, 3), 5, (4, 8), name="student")
    return teacher, student


RELUS = ["stage1_relu", "stage2_relu"]


def test_fsp_needs_two_layers_and_equal_widths_without_a_connector():
    with pytest.raises(ValueError, match="at least two layers"):
        L.FlowOfSolution("stage1_relu", "stage1_relu")
    with pytest.raises(ValueError, match="at least two layers"):
        L.FlowOfSolution(["stage1_relu"], ["stage1_relu"])
    with pytest.raises(ValueError, match="connector='auto'.*not in the paper"):
        Distiller(*_pair(), [L.FlowOfSolution(RELUS, RELUS)])
    fsp = L.FlowOfSolution(RELUS, RELUS, connector="auto")
    distiller = Distiller(*_pair(), [fsp])
    assert len(fsp.connectors) == 2  # both student taps are narrower
    assert fsp.num_terms == 1 and fsp.term_log_name(0) == (
        "flow_of_solution_stage2_relu"
    )
    assert distiller.loss_weights["flow_of_solution"] == 1.0


def test_fsp_pair_weights_are_one_per_matrix():
    layers = RELUS + ["stage2_relu"]
    assert L.FlowOfSolution(layers, layers).pair_weights == [1.0, 1.0]
    with pytest.raises(ValueError, match="2"):
        L.FlowOfSolution(layers, layers, pair_weights=[1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "build",
    [
        lambda: L.RelationalKnowledge("pool", "pool", mode="mean"),
        lambda: L.ProbabilisticKnowledgeTransfer("pool", "pool", mode="x"),
        lambda: L.FlowOfSolution(RELUS, RELUS, mode="sum"),
    ],
)
def test_unknown_mode_is_refused(build):
    with pytest.raises(ValueError, match="`mode` must be one of"):
        build()


def test_rkd_weights_must_be_non_negative():
    with pytest.raises(ValueError, match="angle_weight"):
        L.RelationalKnowledge("pool", "pool", angle_weight=-1.0)


def test_crd_arguments():
    with pytest.raises(TypeError, match="num_examples"):
        L.ContrastiveRepresentation("pool", "pool")
    with pytest.raises(ValueError, match="`num_examples` must be an integer"):
        L.ContrastiveRepresentation("pool", "pool", num_examples=1)
    with pytest.raises(ValueError, match="one layer per network"):
        L.ContrastiveRepresentation(RELUS, RELUS, num_examples=10)
    with pytest.raises(ValueError, match="example_labels.*y_train"):
        L.ContrastiveRepresentation(
            "pool", "pool", num_examples=10, negatives="other_class"
        )
    with pytest.raises(ValueError, match="shape \\(10,\\)"):
        L.ContrastiveRepresentation(
            "pool",
            "pool",
            num_examples=10,
            negatives="other_class",
            example_labels=np.arange(5),
        )
    with pytest.raises(ValueError, match="`negatives` must be one of"):
        L.ContrastiveRepresentation(
            "pool", "pool", num_examples=10, negatives="hard"
        )


def test_crd_needs_a_layer_of_fixed_size():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    out = keras.layers.Dense(5)(keras.layers.GlobalAveragePooling2D()(x))
    model = keras.Model(inputs, out)
    other = keras.models.clone_model(model)
    with pytest.raises(ValueError, match="known size"):
        Distiller(
            model,
            other,
            [L.ContrastiveRepresentation("conv", "conv", num_examples=10)],
        )


def test_logit_standardisation_presets():
    kd = L.get("kd_ls", preset="paper")
    assert kd.standardize and kd.name == "kd_ls"
    assert float(to_numpy(kd.temperature)) == 2.0
    assert kd.default_weight == 9.0
    plain = L.LogitsDistillation(preset="paper")
    assert plain.default_weight == 0.9 and not plain.standardize
    with pytest.raises(ValueError, match="ddof"):
        L.LogitsDistillation(standardize=True, ddof=2)
    with pytest.raises(TypeError, match="standardize"):
        L.LogitsDistillation(standardize="yes")
