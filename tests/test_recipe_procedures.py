"""Recipes of data-free distillation and of distillation into a new domain:
their keys fail before anything is written; a data-free run distils on its
synthesised pool only (made once, read back) and leaves the teacher as it
is; a domain-adaptation run adapts a copy of the teacher per seed. And the
bundled domain-shift pair those recipes read."""

import json

import keras
import numpy as np
import pytest
from builders import tiny_npz
from test_recipes import _recipe

from keras_kd import data
from keras_kd import recipes
from keras_kd.data import domains
from keras_kd.recipes import experiment as kd_experiment
from keras_kd.recipes.command import run_command


def _target_npz(path, shape=(12, 12, 1), offset=60):
    """The tiny archive's images brightened by `offset`: a shifted domain."""
    tiny = np.load(tiny_npz(path.with_name("source_for_target.npz")))
    x_train = np.clip(tiny["x_train"].astype(int) + offset, 0, 255)
    x_test = np.clip(tiny["x_test"].astype(int) + offset, 0, 255)
    if shape != x_train.shape[1:]:
        x_train = np.zeros((len(x_train), *shape), "uint8")
        x_test = np.zeros((len(x_test), *shape), "uint8")
    np.savez(
        path,
        x_train=x_train.astype("uint8"),
        y_train=tiny["y_train"],
        x_test=x_test.astype("uint8"),
        y_test=tiny["y_test"],
    )
    return path


SYNTHESIS = {"images": 8, "iterations": 2, "batch_size": 8}


def _data_free(tmp_path, **changes):
    return _recipe(
        tmp_path,
        **{
            "methods": [{"name": "kd"}],
            "procedure": {"name": "data_free", "arguments": SYNTHESIS},
            **changes,
        },
    )


def _domain(tmp_path, **changes):
    _target_npz(tmp_path / "target.npz")
    return _recipe(
        tmp_path,
        **{
            "methods": [{"name": "kd"}],
            "data.target": "target.npz",
            "procedure": {"name": "domain_adaptation"},
            **changes,
        },
    )


# --- errors before anything runs ---------------------------------------------


@pytest.mark.parametrize(
    "kind, changes, message",
    [
        (
            "data_free",
            {"procedure.arguments.imagess": 4},
            "Did you mean 'images'",
        ),
        ("data_free", {"procedure.arguments.images": 0}, "positive integer"),
        ("data_free", {"methods": [{"name": "crd"}]}, "example ids"),
        (
            "data_free",
            {"procedure.arguments.iteratons": 3},
            "Did you mean 'iterations'",
        ),
        ("domain", {"data.target": None}, "data.target: missing"),
        (
            "domain",
            {"procedure.arguments": {"temprature": 2.0}},
            "Did you mean 'temperature'",
        ),
        ("domain", {"methods": [{"name": "nst"}]}, "its own KD"),
        ("domain", {"data.augment": "flip"}, "augment: none"),
        ("domain", {"data.target": "other.npz"}, "one input shape"),
        ("plain", {"data.target": "target.npz"}, "only `procedure"),
    ],
)
def test_a_bad_procedure_recipe_fails_before_anything_is_written(
    tmp_path, capsys, kind, changes, message
):
    _target_npz(tmp_path / "other.npz", shape=(8, 8, 1))
    _target_npz(tmp_path / "target.npz")
    make = {"data_free": _data_free, "domain": _domain, "plain": _recipe}[kind]
    path = make(tmp_path, **changes)
    assert run_command([str(path)]) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert not (tmp_path / "run").exists()


# --- data-free ---------------------------------------------------------------


def test_a_data_free_run_distils_on_one_pool_and_keeps_the_teacher(
    tmp_path, capsys
):
    path = _data_free(tmp_path)
    first = recipes.run(path, seeds=[0, 1], verbose=True)
    printed = capsys.readouterr().out
    # Synthesised once, for the first seed; the second reads it back.
    assert printed.count("[data-free] synthesising 8 images") == 1
    assert printed.count("[data-free] pool read back") == 1
    run = tmp_path / "run"
    pool_file = run / "synthesized.npz"
    pool = np.load(pool_file)
    assert pool["images"].shape == (8, 12, 12, 1)
    made = pool_file.stat().st_mtime_ns
    for seed in (0, 1):
        log = (run / f"seed-{seed}" / "log.csv").read_text().splitlines()
        assert len(log) == 1 + 2  # header + 2 epochs
        assert "accuracy" not in log[0].split(",")  # no labels to score
    # Run again: finished seeds are read back, the pool is left as it is.
    again = recipes.run(path, seeds=[0, 1], verbose=False)
    assert pool_file.stat().st_mtime_ns == made
    assert again["accuracy_by_seed"] == first["accuracy_by_seed"]

    # In Python: the pipeline yields pool images only (no labels), and a
    # fit changes the student, never the teacher.
    experiment = recipes.load(path, verbose=False)
    batch = next(iter(experiment.train))
    assert not isinstance(batch, (tuple, dict))
    teacher = [w.copy() for w in experiment.teacher.get_weights()]
    student = [w.copy() for w in experiment.student.get_weights()]
    experiment.distiller.fit(
        experiment.train, epochs=1, shuffle=False, verbose=0
    )
    for before, after in zip(teacher, experiment.teacher.get_weights()):
        np.testing.assert_array_equal(before, after)
    assert any(
        not np.array_equal(b, a)
        for b, a in zip(student, experiment.student.get_weights())
    )


# --- domain adaptation -------------------------------------------------------


def test_a_domain_adaptation_run_adapts_a_copy_of_the_teacher_per_seed(
    tmp_path,
):
    path = _domain(tmp_path)
    result = recipes.run(path, seeds=[0], verbose=False)
    run = tmp_path / "run"
    assert 0.0 <= result["accuracy"] <= 1.0
    record = json.loads((run / "run.json").read_text())
    assert record["target"]["file"] == "target.npz"
    assert record["target"]["sha256"] != record["data"]["sha256"]
    assert (run / "seed-0" / "student.keras").is_file()

    recipe, base = kd_experiment.resolve(path)
    arrays = kd_experiment.build.load_arrays(recipe, base)
    teacher = kd_experiment.teacher_for(recipe, base, 0, arrays, False)
    before = [w.copy() for w in teacher.get_weights()]
    experiment = kd_experiment._build(
        recipe, base, 0, teacher=teacher, arrays=arrays, verbose=False
    )
    assert experiment.teacher is not teacher
    x, _ = next(iter(experiment.train))
    assert set(x) == {"source", "target"}
    experiment.distiller.fit(
        experiment.train, epochs=1, shuffle=False, verbose=0
    )
    for b, a in zip(before, teacher.get_weights()):
        np.testing.assert_array_equal(b, a)  # the next seed's teacher
    assert any(
        not np.array_equal(b, a)
        for b, a in zip(before, experiment.teacher.get_weights())
    )  # the copy was adapted


# --- the bundled domain-shift pair -------------------------------------------


def test_on_backgrounds_is_the_brighter_of_image_and_scaled_background():
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (4, 6, 6, 1)).astype("float64")
    backgrounds = rng.integers(0, 256, (4, 6, 6, 1)).astype("float64")
    expected = np.where(images >= 0.4 * backgrounds, images, 0.4 * backgrounds)
    np.testing.assert_allclose(
        domains.on_backgrounds(images, backgrounds, 0.4), expected, rtol=1e-6
    )
    np.testing.assert_array_equal(
        domains.on_backgrounds(images, backgrounds, 0.0), images
    )
    with pytest.raises(ValueError, match="same shape"):
        domains.on_backgrounds(images, backgrounds[:, :4])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        domains.on_backgrounds(images, backgrounds, 1.5)


def test_grey_resized_weights_the_channels_and_keeps_a_constant_image():
    rgb = np.zeros((1, 8, 8, 3), "float32")
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100.0, 50.0, 200.0
    grey = domains.grey_resized(rgb, (4, 4))
    assert grey.shape == (1, 4, 4, 1)
    np.testing.assert_allclose(
        grey, 0.299 * 100 + 0.587 * 50 + 0.114 * 200, rtol=1e-5
    )
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        domains.grey_resized(np.zeros((8, 8, 3)), (4, 4))


def test_bundled_fashion_mnist_on_cifar10_is_the_garments_on_backgrounds():
    fashion = data.load_bundled("fashion_mnist")
    shifted = data.load_bundled("fashion_mnist_on_cifar10")
    for split in ("train", "test"):
        x, garments = shifted[f"x_{split}"], fashion[f"x_{split}"]
        assert x.dtype == np.uint8 and x.shape == garments.shape
        np.testing.assert_array_equal(
            shifted[f"y_{split}"], fashion[f"y_{split}"]
        )
        assert np.all(x >= garments)  # never darker than the garment
        assert np.mean(x > garments) > 0.2  # the background shows
    np.testing.assert_array_equal(
        shifted["x_train"],
        data.load_bundled("fashion_mnist_on_cifar10")["x_train"],
    )  # the same every time
    assert keras.backend.backend()  # backend-neutral: NumPy and keras.ops
