"""The `keras-kd` command (also `python -m keras_kd`).

`keras-kd` (or `keras-kd distill`) distils a small teacher into a smaller
student on real data and prints what each achieved: the teacher, the
student trained alone, and the distilled student, all on the test split.
With no `--data` it uses the Fashion-MNIST subset bundled with keras_kd
(6,000 train / 1,000 test images), so it runs offline; a TensorFlow Datasets
name is read from `--data-dir` and downloaded only with `--download`. The
models take raw pixels (0..255): each starts with a `Normalization` layer
holding the training set's statistics, and the input pipeline does not
normalise, so a student saved with `--output` exports as it is.

`keras-kd export ...` writes a distilled student to SavedModel or TFLite
(see `keras-kd export --help`). `keras-kd run RECIPE` runs a recipe file
and `keras-kd validate RECIPE` checks one (`keras_kd.recipes`); with no
arguments at all, `keras-kd` runs the bundled `main_job` recipe, which runs
the main job with its defaults.

`main` dispatches on the first argument: a name of `COMMANDS` runs that
command on the arguments after it, anything else runs the main job on all
of them. The main job is `keras_kd.cli.main_job` (its options in
`keras_kd.cli.options`, its last stage in `keras_kd.cli.summary`); the
export command is `keras_kd.export.command`, which parses its own
arguments.
"""

import sys

from keras_kd.cli.main_job import distill


def _distill(argv):
    distill(argv)
    return 0


def _run(argv):
    from keras_kd.recipes.command import run_command

    return run_command(argv)


def _validate(argv):
    from keras_kd.recipes.command import validate_command

    return validate_command(argv)


def _export(argv):
    from keras_kd.export.command import export_command

    return export_command(argv)


# `keras-kd NAME ARGS...` runs COMMANDS[NAME](ARGS), which returns the exit
# status (or raises SystemExit); without a command name, the default one
# (the main job) runs on all the arguments.
COMMANDS = {
    "distill": _distill,
    "export": _export,
    "run": _run,
    "validate": _validate,
}
DEFAULT_COMMAND = "distill"


def main(argv=None):
    """Entry point of the `keras-kd` command."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        # The main job is a recipe: `keras-kd` is `keras-kd run main_job`.
        return _run(["main_job"])
    if argv[0] in COMMANDS:
        name, argv = argv[0], argv[1:]
    else:
        name = DEFAULT_COMMAND
    return COMMANDS[name](argv)
