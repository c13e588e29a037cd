"""keras_kd.losses.registry: a method registers once, everything reads it."""

import pytest

from keras_kd import losses
from keras_kd.losses import registry


def test_the_methods_and_their_variants_are_registered():
    assert set(registry.names()) >= {
        "kd",
        "kd_ls",
        "ab",
        "nst",
        "at",
        "fitnets",
        "fsp",
        "rkd",
        "sp",
        "pkt",
        "crd",
    }


def test_every_registered_class_is_exported_and_serialisable():
    import keras

    for method in registry.methods():
        assert getattr(losses, method.cls.__name__) is method.cls
        assert (
            keras.saving.get_registered_object(
                f"keras_kd>{method.cls.__name__}"
            )
            is method.cls
        )


def test_variant_fixes_its_arguments():
    kd = losses.get("kd_ls", temperature=2.0)
    assert type(kd) is losses.LogitsDistillation and kd.standardize
    with pytest.raises(ValueError, match="standardize=True.*received"):
        losses.get("kd_ls", standardize=False)


@pytest.mark.parametrize("name", registry.names())
def test_default_taps_build_every_method_for_keras_kd_models(name):
    loss = registry.build(name, stages=3, facts={"num_examples": 100})
    assert isinstance(loss, losses.DistillationLoss)
    for teacher_tap, student_tap in loss.pair_taps:
        for tap in (teacher_tap, student_tap):
            assert tap is None or tap.layer_name in (
                "pool",
                *(f"stage{i}_relu" for i in (1, 2, 3)),
            ), (name, tap)


def test_build_names_the_facts_a_method_needs():
    assert registry.required_facts("crd") == ["num_examples"]
    assert registry.required_facts("kd") == []
    with pytest.raises(ValueError, match="num_examples.*facts="):
        registry.build("crd")


def test_unknown_family_and_method_without_family_taps():
    with pytest.raises(ValueError, match="Unknown model family 'timm'"):
        registry.default_taps("ab", family="timm")
    assert registry.default_taps("kd") == {}


def test_describe_has_one_line_per_method():
    lines = registry.describe()
    assert len(lines) == len(registry.names())
    assert any(line.startswith("crd (also contrastive") for line in lines)
    assert any(
        "kd_ls: LogitsDistillation(standardize=True)" in line for line in lines
    )


def test_a_method_registered_elsewhere_is_found_everywhere():
    """What adding a method means: its module registers it, and `get`,
    `build` and `describe` know it without any other edit."""

    @registry.register(
        "toy",
        taps={
            "keras_kd": lambda n: dict(
                teacher_layer_name="pool", student_layer_name="pool"
            )
        },
    )
    class ToyDistillation(losses.DistillationLoss):
        """A toy method for this test."""

        def pair_loss(self, index, teacher, student):
            return teacher[:, 0] * 0.0

    try:
        assert type(losses.get("toy", "a", "b")) is ToyDistillation
        assert type(losses.get("ToyDistillation", "a", "b")) is ToyDistillation
        assert registry.build("toy").pair_taps[0][0].layer_name == "pool"
        assert "toy: A toy method for this test" in registry.describe()
    finally:
        registry._METHODS[:] = [
            m for m in registry._METHODS if m.cls is not ToyDistillation
        ]
        for key in ("toy", "ToyDistillation"):
            registry._BY_NAME.pop(key, None)


def test_a_name_taken_by_another_class_is_refused():
    with pytest.raises(ValueError, match="'kd' is registered twice"):

        @registry.register("kd")
        class Other(losses.DistillationLoss):
            pass
