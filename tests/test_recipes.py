"""Recipes: a misspelt key, a wrong type, a missing file or an unknown layer
fails before anything is written, with the closest name; the bundled
recipes check whole; `keras-kd run` on the main job's recipe runs the main
job; a run records what it ran, reads back finished seeds, resumes after
a kill, and never writes into a folder that is not its own."""

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from builders import tiny_npz

from keras_kd import recipes
from keras_kd.recipes import compare
from keras_kd.recipes import schema
from keras_kd.recipes.command import run_command
from keras_kd.recipes.command import validate_command
from keras_kd.recipes.experiment import apply_overrides
from keras_kd.recipes.experiment import resolve

ROOT = pathlib.Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "keras_kd" / "recipes" / "bundled"


def _recipe(tmp_path, **changes):
    """A small distill recipe on a tiny .npz beside it."""
    tiny_npz(tmp_path / "tiny.npz")
    recipe = {
        "version": 1,
        "name": "tiny",
        "data": {"source": "tiny.npz", "batch_size": 16},
        "teacher": {"widths": [8, 8, 8], "epochs": 1},
        "student": {"widths": [4, 4, 4]},
        "methods": [{"name": "kd"}, {"name": "nst"}],
        "training": {"epochs": 2},
        "seeds": [0],
        "outputs": {"directory": str(tmp_path / "run")},
    }
    for key, value in changes.items():
        apply_overrides(recipe, [f"{key}={yaml.safe_dump(value).strip()}"])
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


# --- errors before anything runs ---------------------------------------------


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("trainng", {"epochs": 1}, "Did you mean 'training'"),
        ("training.epochz", 1, "Did you mean 'epochs'"),
        ("training.epochs", "ten", "expected an integer"),
        ("training.epochs", 0, "expected a value >= 1"),
        ("data.train_fraction", 1.5, "fraction in (0, 1]"),
        ("training.optimizer.name", "adamm", "Did you mean 'adam'"),
        ("methods.0.temprature", 2.0, "Did you mean 'temperature'"),
        ("methods.1.name", "nts", "Did you mean 'nst'"),
        ("seeds", [0, 0], "each seed once"),
        ("data.source", "missing.npz", "no file"),
        ("teacher.file", "teacher.keras", "no file"),
        ("methods.1.teacher_layer_name", "stage9_relu", "stage3_relu"),
        (
            "training.function_matching",
            {"mixup_alfa": 1.0},
            "Did you mean 'mixup_alpha'",
        ),
        ("training.function_matching", {"crop_padding": -1}, ">= 0"),
    ],
)
def test_a_bad_recipe_fails_before_anything_is_written(
    tmp_path, capsys, key, value, message
):
    path = _recipe(tmp_path, **{key: value})
    assert run_command([str(path)]) == 2
    error = capsys.readouterr().err
    assert message in error, error
    assert key.split(".")[0] in error or "step" in error
    assert not (tmp_path / "run").exists()


def test_version_is_required_and_checked(tmp_path):
    raw = yaml.safe_load(_recipe(tmp_path).read_text())
    del raw["version"]
    with pytest.raises(recipes.RecipeError, match="version: 1"):
        schema.validate(raw)
    raw["version"] = 2
    with pytest.raises(recipes.RecipeError, match="Upgrade keras_kd"):
        schema.validate(raw)


def test_defaults_are_filled_in_and_overrides_win(tmp_path):
    path = _recipe(tmp_path)
    recipe, base = resolve(path, ["training.epochs=5", "methods.0.weight=2"])
    assert base == tmp_path
    assert recipe["training"]["epochs"] == 5
    assert recipe["methods"][0] == {"name": "kd", "weight": 2}
    assert recipe["training"]["optimizer"]["name"] == "sgd"
    assert recipe["outputs"]["save_student"] is True
    with pytest.raises(recipes.RecipeError, match="KEY=VALUE"):
        resolve(path, ["training.epochs"])
    with pytest.raises(recipes.RecipeError, match="index 0 to 1"):
        resolve(path, ["methods.5.weight=1"])


def test_function_matching_is_built_from_the_recipe(tmp_path):
    from keras_kd.recipes import build

    path = _recipe(tmp_path, **{"training.function_matching": {"flip": False}})
    recipe = recipes.check(path)
    matching = build.function_matching(recipe, seed=7)
    assert (matching.flip, matching.crop_padding, matching.seed) == (
        False,
        4,
        7,
    )
    recipe["training"]["function_matching"]["seed"] = 3
    assert build.function_matching(recipe, seed=7).seed == 3
    recipe["training"]["function_matching"] = None
    assert build.function_matching(recipe, seed=7) is None


def test_validate_writes_nothing(tmp_path, capsys):
    path = _recipe(tmp_path)
    before = sorted(os.listdir(tmp_path))
    assert validate_command([str(path)]) == 0
    assert "tiny is valid" in capsys.readouterr().out
    assert sorted(os.listdir(tmp_path)) == before


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    sorted(
        p.relative_to(BUNDLED).with_suffix("").as_posix()
        for p in BUNDLED.rglob("*.yaml")
    ),
)
def test_bundled_recipes_check_whole_with_one_step(name):
    """Schema, models built, each method with its layers, one step on
    stand-in data of the data's shapes (CIFAR-100's for the paper
    recipes, which are meant for a GPU)."""
    recipe = recipes.check(recipes.bundled(name), step=True)
    assert recipe["name"] == pathlib.Path(name).name
    if name.startswith("paper/"):
        assert recipe["reference"] and recipe["data"]["source"] == "cifar100"
        assert recipe["training"]["epochs"] == 240
        assert all(m.get("preset") == "paper" for m in recipe["methods"])


# --- the main job as a recipe ------------------------------------------------


def test_the_main_job_recipe_runs_the_main_job():
    """`keras-kd run main_job` runs `keras-kd` with its defaults: the
    recipe's arguments parse to what no arguments parse to."""
    from keras_kd.cli import options

    recipe, base = resolve(recipes.bundled("main_job"))
    arguments = compare.argv(recipe, base)
    parser = options.build_parser()
    assert vars(parser.parse_args(arguments)) == vars(parser.parse_args([]))


def test_compare_refuses_what_the_main_job_cannot_do(tmp_path):
    path = recipes.bundled("main_job")
    for override, key in (
        ("student.widths=[4, 8, 16]", "student.widths"),
        ("methods.0.weight=2", "methods[0]"),
        ("seeds=[0, 2]", "seeds"),
    ):
        recipe, base = resolve(path, [override])
        with pytest.raises(recipes.RecipeError, match=re.escape(key)):
            compare.check_compare(recipe)


@pytest.mark.slow
def test_compare_prints_what_keras_kd_prints(tmp_path, capsys):
    from keras_kd import cli

    path = tiny_npz(tmp_path / "tiny.npz")
    recipe_path = recipes.bundled("main_job")
    overrides = [
        f"data.source={path}",
        "data.batch_size=16",
        "training.epochs=1",
        "teacher.epochs=1",
        "seeds=[0]",
        f"outputs.directory={tmp_path / 'run'}",
    ]
    by_recipe = recipes.run(recipe_path, overrides=overrides, verbose=False)
    printed_recipe = capsys.readouterr().out
    by_flags = cli.distill(
        [
            "--data",
            str(path),
            "--batch-size",
            "16",
            "--epochs",
            "1",
            "--teacher-epochs",
            "1",
            "--seeds",
            "1",
        ]
    )
    printed_flags = capsys.readouterr().out

    def body(text):
        return [line for line in text.splitlines() if "wall time" not in line]

    assert body(printed_recipe) == body(printed_flags)
    for key in ("teacher", "alone_by_seed", "distilled_by_seed"):
        assert by_recipe[key] == by_flags[key]
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert saved["distilled_by_seed"] == by_flags["distilled_by_seed"]


# --- a distill run: record, read back, refusals, resume ----------------------


@pytest.mark.slow
def test_a_run_records_what_it_ran_and_reads_back_finished_seeds(tmp_path):
    path = _recipe(tmp_path)
    first = recipes.run(path, seeds=[0, 1], verbose=False)
    run = tmp_path / "run"
    record = json.loads((run / "run.json").read_text())
    assert record["seeds"] == [0, 1]
    assert record["data"]["file"] == "tiny.npz"
    assert len(record["data"]["sha256"]) == 64
    assert {"keras", "keras_kd", "python"} <= set(record["versions"])
    resolved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert resolved["training"]["optimizer"]["learning_rate"] == 0.05
    table = (run / "results.md").read_text()
    assert "mean ± std" in table
    assert first["accuracy_by_seed"] == [
        json.loads((run / f"seed-{s}" / "result.json").read_text())["accuracy"]
        for s in (0, 1)
    ]
    for seed in (0, 1):
        assert (run / f"seed-{seed}" / "student.keras").is_file()
        lines = (run / f"seed-{seed}" / "log.csv").read_text().splitlines()
        assert len(lines) == 1 + 2  # header + 2 epochs
    # Run again: both seeds are read back, nothing retrains.
    again = recipes.run(path, seeds=[0, 1], verbose=False)
    assert again["accuracy_by_seed"] == first["accuracy_by_seed"]
    # Python users continue from load().
    experiment = recipes.load(path)
    history = experiment.distiller.fit(
        experiment.train, epochs=1, callbacks=experiment.callbacks, verbose=0
    )
    assert np.isfinite(history.history["loss"][-1])


def test_a_run_never_writes_into_a_folder_that_is_not_its_own(tmp_path):
    path = _recipe(tmp_path)
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(recipes.RecipeError, match="not a keras_kd run"):
        recipes.run(path, verbose=False)
    assert os.listdir(run) == ["notes.txt"]
    (run / "notes.txt").unlink()
    other = _recipe(tmp_path, **{"training.epochs": 3})
    (run / "recipe.yaml").write_text(yaml.safe_dump({"another": "recipe"}))
    with pytest.raises(recipes.RecipeError, match="another recipe"):
        recipes.run(other, verbose=False)
    assert os.listdir(run) == ["recipe.yaml"]


RUN = """
import sys
from keras_kd import recipes
recipes.run(sys.argv[1])
"""


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_last_epoch(tmp_path):
    path = _recipe(tmp_path, **{"training.epochs": 4})
    log = tmp_path / "run" / "seed-0" / "log.csv"
    env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")
    child = subprocess.Popen(
        [sys.executable, "-c", RUN, str(path)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 600
    while time.time() < deadline and child.poll() is None:
        if log.is_file() and len(log.read_text().splitlines()) >= 3:
            break  # two epochs finished and backed up
        time.sleep(0.2)
    assert child.poll() is None, child.stdout.read()
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    done = len(log.read_text().splitlines()) - 1
    assert 2 <= done < 4
    resumed = subprocess.run(
        [sys.executable, "-c", RUN, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-3000:]
    assert "(resuming)" in resumed.stdout
    assert f"resuming after epoch {done}" in resumed.stdout
    epochs = [
        int(line.split(",")[0]) for line in log.read_text().splitlines()[1:]
    ]
    assert epochs == [0, 1, 2, 3]  # each epoch once: it continued
    assert (tmp_path / "run" / "results.md").is_file()


def test_keras_kd_without_arguments_runs_the_main_job_recipe(monkeypatch):
    from keras_kd import cli
    from keras_kd.recipes import command

    calls = []
    monkeypatch.setattr(
        command, "run_command", lambda argv: calls.append(argv) or 0
    )
    assert cli.main([]) == 0
    assert calls == [["main_job"]]
    assert set(cli.COMMANDS) >= {"run", "validate", "export", "distill"}


# --- the panel's cells are recipes -------------------------------------------

PANEL_RECIPES = sorted(
    (ROOT / "benchmarks" / "recipes" / "panel").glob("*.yaml")
)


def _panel():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import panel
    finally:
        sys.path.pop(0)
    return panel


def test_the_panel_reads_its_cells_from_recipe_files(tmp_path):
    panel = _panel()
    assert len(PANEL_RECIPES) == 8
    assert list(panel.CELLS) == list(panel.ORDER)
    for name, cell in panel.CELLS.items():
        assert cell["recipe"] == f"benchmarks/recipes/panel/{name}.yaml"
    # A recipe asking for what the panel's loop does not run is refused.
    text = PANEL_RECIPES[0].read_text().replace("steps: 300", "steps: 301")
    changed = tmp_path / PANEL_RECIPES[0].name
    changed.write_text(text)
    with pytest.raises(SystemExit, match="training.steps is 301"):
        panel.cell_of(str(changed))


@pytest.mark.slow
@pytest.mark.parametrize("path", PANEL_RECIPES, ids=lambda p: p.stem)
def test_panel_recipes_check_whole_with_one_step(tmp_path, path):
    """Each cell recipe also runs alone (`keras-kd run`): checked with one
    step on stand-in data of its data set's shapes."""
    cifar = "cifar10" in path.read_text()
    shape, classes = ((32, 32, 3), 10) if cifar else ((28, 28, 1), 10)
    rng = np.random.default_rng(0)
    y = np.arange(40) % classes
    x = rng.integers(0, 255, (40, *shape)).astype("uint8")
    data = tmp_path / "stand_in.npz"
    np.savez(data, x_train=x, y_train=y, x_test=x[:10], y_test=y[:10])
    recipe = recipes.check(path, [f"data.source={data}"], step=True)
    assert recipe["training"]["steps"] in (300, 800, 1800)


@pytest.mark.slow
def test_a_step_based_schedule_trains_that_many_steps(tmp_path):
    path = _recipe(
        tmp_path,
        **{
            "training.steps": 6,
            "training.epochs": 2,
            "teacher.steps": 4,
            "teacher.batch_size": 8,
        },
    )
    experiment = recipes.load(path, verbose=False)
    assert experiment.steps_per_epoch == 3
    history = experiment.distiller.fit(
        experiment.train,
        epochs=experiment.epochs,
        steps_per_epoch=experiment.steps_per_epoch,
        verbose=0,
    )
    assert len(history.history["loss"]) == 2
    assert int(experiment.distiller.optimizer.iterations) == 6
