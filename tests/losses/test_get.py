"""keras_kd.losses.get: one lookup from a method's name to its loss class."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402

from keras_kd import losses  # noqa: E402

CLASSES = {
    "kd": losses.LogitsDistillation,
    "ab": losses.ActivationBoundary,
    "nst": losses.NeuronSelectivityTransfer,
    "at": losses.AttentionTransfer,
    "fitnets": losses.FitNetsHint,
}
LAYERS = {"kd": ()}


@pytest.mark.parametrize("short", sorted(CLASSES))
def test_short_log_and_class_names_build_the_class(short):
    cls = CLASSES[short]
    args = LAYERS.get(short, ("t_layer", "s_layer"))
    default_log_name = cls(*args).name
    for name in (short, default_log_name, cls.__name__):
        loss = losses.get(name, *args)
        assert type(loss) is cls, name
        assert loss.name == default_log_name


def test_hint_is_the_command_line_name_of_fitnets():
    assert type(losses.get("hint", "t", "s")) is losses.FitNetsHint


def test_arguments_reach_the_class():
    ab = losses.get(
        "ab",
        ["t1", "t2"],
        ["s1", "s2"],
        connector="never",
        margin=0.5,
        name="my_ab",
    )
    reference = losses.ActivationBoundary(
        ["t1", "t2"], ["s1", "s2"], connector="never", margin=0.5, name="my_ab"
    )
    assert ab.get_config() == reference.get_config()
    kd = losses.get("kd", temperature=4.0)
    assert float(kd.temperature.numpy()) == 4.0
    # The class's own checks still apply.
    with pytest.raises(ValueError, match="temperature"):
        losses.get("kd", temperature=-1.0)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        losses.get("nts", "t", "s")
    message = str(info.value)
    assert "'nts'" in message and "Did you mean 'nst'?" in message
    for name in (
        "'kd'",
        "'ab'",
        "'nst'",
        "'at'",
        "'fitnets'",
        "'ActivationBoundary'",
        "'FitNetsHint'",
    ):
        assert name in message


def test_names_are_case_sensitive():
    with pytest.raises(ValueError, match="Unknown distillation loss 'KD'"):
        losses.get("KD")


@pytest.mark.parametrize("bad", [None, losses.LogitsDistillation, 3])
def test_name_must_be_a_string(bad):
    with pytest.raises(TypeError, match="a string.*get\\('kd'\\)"):
        losses.get(bad)


def test_requirements_is_the_union_of_what_the_losses_read():
    kd, dkd = losses.get("kd"), losses.get("dkd")
    crd = losses.registry.lookup("crd").cls
    assert losses.requirements([]) == frozenset()
    assert losses.requirements([kd]) == frozenset()
    assert losses.requirements([kd, dkd]) == {"labels"}
    # Instances and classes mix; the union keeps each name once.
    assert losses.requirements([dkd, crd, type(dkd)]) == {
        "labels",
        "example_ids",
    }


def test_requirements_rejects_what_is_not_a_loss():
    with pytest.raises(TypeError, match="received 'kd' \\(str\\)"):
        losses.requirements(["kd"])
