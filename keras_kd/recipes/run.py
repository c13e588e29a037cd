"""Running a recipe: a record beside the outputs, progress, resume, seeds.

`run(path, seeds=None, overrides=())` checks the recipe whole, then writes
into its output folder (`outputs.directory`, default `runs/<name>`):

- `recipe.yaml`: the resolved recipe (every default filled in, overrides
  applied), and `run.json`: package versions, machine, seeds, the data's
  checksum and when the run started;
- for `experiment: distill`, per seed `seed-<s>/`: the training log
  (`log.csv`), an atomic backup of the last finished epoch, the result
  (`result.json`) and the student (`student.keras`, optionally exported);
  then `results.md` / `results.json`: test accuracy per seed, mean ± std;
  a `data_free` run also keeps its synthesised pool (`synthesized.npz`,
  made once, read back by every seed and by a resumed run).

A run killed mid-way resumes when run again with the same recipe: finished
seeds are read back, the interrupted one continues from its last finished
epoch. A folder that holds another recipe's run, or files that are not a
run's, is refused: keras_kd never writes over what it did not write.
"""

import datetime
import json
import os
import pathlib
import platform
import sys
import time

from keras_kd.recipes import build
from keras_kd.recipes import experiment as kd_experiment
from keras_kd.recipes import whole_run
from keras_kd.recipes.schema import RecipeError

RUN_FILES = {"recipe.yaml", "run.json", "results.md", "results.json"}


def _versions():
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for name in ("keras", "tensorflow", "tensorflow-cpu", "jax", "torch"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    import keras

    import keras_kd

    versions["keras_kd"] = getattr(keras_kd, "__version__", "unknown")
    versions["keras backend"] = keras.backend.backend()
    return versions


def _machine():
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu cores": os.cpu_count(),
    }


def _yaml(recipe):
    import yaml

    return yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True)


def _write(path, text):
    """Atomic write: a temporary file, then a rename."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def prepare_directory(directory, recipe):
    """Creates the run folder, or accepts it when it holds a run of the
    same resolved recipe (a resume; a `compare` run, which does not resume,
    replaces its own record there). Refuses anything else."""
    directory = pathlib.Path(directory)
    text = _yaml(recipe)
    if directory.exists():
        if not directory.is_dir():
            raise RecipeError(
                f"outputs.directory: {str(directory)!r} is a file; name a "
                "folder for the run."
            )
        saved = directory / "recipe.yaml"
        ours = saved.is_file() and (directory / "run.json").is_file()
        if ours and recipe["experiment"] == "compare":
            previous = json.loads((directory / "run.json").read_text())
            if previous.get("experiment") == "compare":
                _write(saved, text)
                return True
        if saved.is_file():
            if saved.read_text(encoding="utf-8") != text:
                raise RecipeError(
                    f"outputs.directory: {str(directory)!r} holds a run of "
                    "another recipe (its recipe.yaml differs). Choose another "
                    "outputs.directory (--set outputs.directory=...), or "
                    "remove that folder yourself."
                )
            return False
        if any(directory.iterdir()):
            raise RecipeError(
                f"outputs.directory: {str(directory)!r} exists and holds "
                "files that are not a keras_kd run; keras_kd does not write "
                "into it. Choose another outputs.directory."
            )
    directory.mkdir(parents=True, exist_ok=True)
    _write(directory / "recipe.yaml", text)
    return True


def _record(directory, recipe, base, seeds, started):
    record = {
        "recipe": recipe["name"],
        "experiment": recipe["experiment"],
        "seeds": seeds,
        "started": started,
        "command": " ".join(sys.argv),
        "data": build.checksum(recipe, base),
        **(
            {"target": build.checksum(recipe, base, key="target")}
            if recipe["data"]["target"] is not None
            else {}
        ),
        "versions": _versions(),
        "machine": _machine(),
    }
    _write(pathlib.Path(directory) / "run.json", json.dumps(record, indent=2))
    return record


def run(path, seeds=None, overrides=(), verbose=True):
    """Runs a recipe (see the module docstring); returns its results dict.

    Args:
        path: the recipe file.
        seeds: seeds to run instead of the recipe's (`--seeds 0 1 2`).
        overrides: `"key=value"` strings applied before validation
            (`--set training.epochs=5`).
        verbose: print progress (a line per stage, one per epoch).
    """
    if seeds:
        overrides = [*overrides, f"seeds={list(seeds)}"]
    recipe, base = kd_experiment.resolve(path, overrides)
    kd_experiment.check_resolved(recipe, base, step=False)
    directory = pathlib.Path(kd_experiment.default_directory(recipe))
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    fresh = prepare_directory(directory, recipe)
    _record(directory, recipe, base, recipe["seeds"], started)
    if recipe["experiment"] == "compare":
        # Prints exactly what the main job prints.
        return _run_compare(recipe, base, directory)
    if verbose:
        print(
            f"keras-kd run: {recipe['name']} -> {directory}"
            + ("" if fresh else " (resuming)"),
            flush=True,
        )
    return _run_distill(recipe, base, directory, verbose)


def _run_compare(recipe, base, directory):
    from keras_kd.recipes import compare

    arguments = compare.argv(recipe, base)
    if recipe["outputs"]["save_student"]:
        arguments += ["--output", str(directory / "models")]
    from keras_kd.cli.main_job import distill

    results = distill(arguments)
    _write(directory / "results.json", json.dumps(results, indent=2))
    return results


def _epochs_done(log):
    if not log.is_file():
        return 0
    lines = log.read_text(encoding="utf-8").strip().splitlines()
    return max(0, len(lines) - 1)


def _run_distill(recipe, base, directory, verbose):
    import keras

    from keras_kd.backup import AtomicBackupAndRestore

    started = time.time()
    arrays = build.load_arrays(recipe, base)
    target = (  # read once, for every seed
        build.load_arrays(recipe, base, key="target")
        if recipe["data"]["target"] is not None
        else None
    )
    teacher_file = directory / "teacher.keras"
    if teacher_file.is_file():
        teacher = keras.saving.load_model(teacher_file)
        if verbose:
            print(f"[teacher] read back from {teacher_file}", flush=True)
    else:
        teacher = kd_experiment.teacher_for(
            recipe, base, recipe["seeds"][0], arrays, verbose
        )
        if recipe["teacher"]["epochs"] and not recipe["teacher"]["file"]:
            tmp = directory / f"teacher.tmp-{os.getpid()}.keras"
            teacher.save(tmp)
            os.replace(tmp, teacher_file)
    scores = {}
    for seed in recipe["seeds"]:
        seed_dir = directory / f"seed-{seed}"
        result_file = seed_dir / "result.json"
        if result_file.is_file():
            scores[seed] = json.loads(result_file.read_text())["accuracy"]
            if verbose:
                print(
                    f"[seed {seed}] done before: test accuracy "
                    f"{scores[seed]:.4f}",
                    flush=True,
                )
            continue
        seed_dir.mkdir(exist_ok=True)
        run = kd_experiment._build(
            recipe,
            base,
            seed,
            teacher=teacher,
            arrays=arrays,
            verbose=verbose,
            pool_path=directory / whole_run.POOL_FILE,
            target=target,
        )
        log = seed_dir / "log.csv"
        done = _epochs_done(log)
        if verbose:
            print(
                f"[seed {seed}] {run.epochs} epochs"
                + (f", resuming after epoch {done}" if done else ""),
                flush=True,
            )
        callbacks = [
            *run.callbacks,
            AtomicBackupAndRestore(str(seed_dir / "backup")),
            keras.callbacks.CSVLogger(str(log), append=True),
        ]
        if recipe["outputs"]["tensorboard"]:
            callbacks.append(
                keras.callbacks.TensorBoard(str(seed_dir / "tensorboard"))
            )
        run.distiller.fit(
            run.train,
            epochs=run.epochs,
            steps_per_epoch=run.steps_per_epoch,
            validation_data=run.test,
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles, seeded per epoch
            verbose=2 if verbose else 0,
        )
        student = run.distiller.student
        student.compile(
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        accuracy = float(
            student.evaluate(run.test, verbose=0, return_dict=True)["accuracy"]
        )
        if recipe["outputs"]["save_student"]:
            tmp = seed_dir / f"student.tmp-{os.getpid()}.keras"
            student.save(tmp)
            os.replace(tmp, seed_dir / "student.keras")
        if recipe["outputs"]["export"]:
            from keras_kd.export import export_student

            fmt = recipe["outputs"]["export"]
            name = (
                "student_saved_model"
                if fmt == "saved_model"
                else f"student_{fmt}.tflite"
            )
            export_student(
                run.distiller,
                seed_dir / name,
                format=recipe["outputs"]["export"],
                representative_data=run.images,
                check_data=run.test,
                overwrite=True,
                verbose=verbose,
            )
        _write(result_file, json.dumps({"seed": seed, "accuracy": accuracy}))
        scores[seed] = accuracy
        if verbose:
            print(f"[seed {seed}] test accuracy {accuracy:.4f}", flush=True)
    return _results(recipe, directory, scores, time.time() - started, verbose)


def _results(recipe, directory, scores, seconds, verbose):
    from keras_kd.cli.summary import _mean_std  # the main job's statistics

    values = [scores[s] for s in recipe["seeds"]]
    mean, std = _mean_std(values)
    results = {
        "recipe": recipe["name"],
        "methods": [m["name"] for m in recipe["methods"]],
        "seeds": recipe["seeds"],
        "accuracy_by_seed": values,
        "accuracy": mean,
        "accuracy_std": std,
        "seconds_this_run": seconds,
        "reference": recipe["reference"],
    }
    lines = [
        f"# {recipe['name']}: test accuracy of the distilled student",
        "",
        "| seed | test accuracy |",
        "| --- | --- |",
        *[f"| {s} | {scores[s]:.4f} |" for s in recipe["seeds"]],
        f"| mean ± std | {mean:.4f} ± {std:.4f} |",
        "",
    ]
    if recipe["reference"]:
        lines += [f"Reference: {recipe['reference']}", ""]
    _write(directory / "results.md", "\n".join(lines))
    _write(directory / "results.json", json.dumps(results, indent=2))
    if verbose:
        print(
            f"\nTest accuracy over {len(values)} seed(s): {mean:.4f} ± "
            f"{std:.4f} -> {directory / 'results.md'}",
            flush=True,
        )
    return results
