"""`keras-kd run RECIPE` and `keras-kd validate RECIPE`."""

import argparse
import sys

from keras_kd.recipes.schema import RecipeError


def _recipe_path(name):
    """A file path, or the name of a bundled recipe (`main_job`,
    `paper/cifar100_resnet56_resnet20_kd`)."""
    import pathlib

    from keras_kd.recipes.experiment import bundled

    if pathlib.Path(name).is_file() or name.endswith((".yaml", ".yml")):
        return name
    return str(bundled(name))


def _parser(prog, description):
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "recipe",
        help="a recipe file (.yaml), or the name of a recipe shipped with "
        "keras_kd: main_job, paper/cifar100_resnet56_resnet20_kd, ...",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a key without editing the file, e.g. --set "
        "training.epochs=5 --set methods.0.weight=2 (the value is read as "
        "YAML); repeat for several keys",
    )
    return parser


def run_command(argv=None):
    parser = _parser(
        "keras-kd run",
        "Run a recipe: check it whole, then train, writing the resolved "
        "recipe, the run record (versions, machine, seeds, data checksum), "
        "logs, students and a results table (mean ± std over seeds) to its "
        "output folder. Run it again to resume after a crash.",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="run these seeds instead of the recipe's (one results table)",
    )
    args = parser.parse_args(argv)
    from keras_kd.recipes.run import run

    try:
        run(_recipe_path(args.recipe), args.seeds, args.overrides)
    except RecipeError as error:
        print(f"keras-kd run: error: {error}", file=sys.stderr)
        return 2
    return 0


def validate_command(argv=None):
    parser = _parser(
        "keras-kd validate",
        "Check a recipe without running it: the schema, files, models, "
        "each method's arguments and layers, the procedure, and one "
        "training step on stand-in data of the data's shapes. Writes "
        "nothing.",
    )
    parser.add_argument(
        "--no-step",
        action="store_true",
        help="skip the training step on stand-in data",
    )
    args = parser.parse_args(argv)
    from keras_kd.recipes.experiment import check

    try:
        recipe = check(
            _recipe_path(args.recipe), args.overrides, step=not args.no_step
        )
    except RecipeError as error:
        print(f"keras-kd validate: error: {error}", file=sys.stderr)
        return 2
    methods = ", ".join(m["name"] for m in recipe["methods"])
    print(
        f"keras-kd validate: {recipe['name']} is valid "
        f"({recipe['experiment']}: {methods}; seeds {recipe['seeds']})."
    )
    return 0
