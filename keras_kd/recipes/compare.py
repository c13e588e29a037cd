"""`experiment: compare`: the main job as a recipe.

A compare recipe trains a teacher, then the student alone and distilled
with the same initial weights and data order for each seed, and prints the
paired gain: what `keras-kd` prints. It runs the main job itself, so the
two print the same digits; the recipe can say what the main job's options
say (data, fractions, augmentation, epochs, batch size, learning rate,
methods by name, initialisation epochs, seeds), and the models, optimiser
and schedule are the main job's (`conv_net(32, 64, 128)` teacher,
`conv_net(8, 16, 32)` student, SGD with Nesterov momentum 0.9 and a cosine
decay). Anything else is refused before the run: use `experiment: distill`.
"""

from keras_kd.recipes.schema import RecipeError

# What the main job fixes, as the schema spells it.
FIXED = {
    ("teacher", "file"): None,
    ("teacher", "build"): "conv_net",
    ("teacher", "widths"): [32, 64, 128],
    ("student", "file"): None,
    ("student", "build"): "conv_net",
    ("student", "widths"): [8, 16, 32],
    ("training", "optimizer", "name"): "sgd",
    ("training", "optimizer", "momentum"): 0.9,
    ("training", "optimizer", "nesterov"): True,
    ("training", "optimizer", "weight_decay"): None,
    ("training", "schedule", "name"): "cosine",
    ("training", "student_loss_weight"): 1.0,
    ("procedure", "name"): "plain",
    ("outputs", "tensorboard"): False,
    ("outputs", "export"): None,
}


def _get(recipe, keys):
    for key in keys:
        recipe = recipe[key]
    return recipe


def check_compare(recipe):
    """Refuses what the main job cannot do, naming the key."""
    for keys, value in FIXED.items():
        if _get(recipe, keys) != value:
            raise RecipeError(
                f"{'.'.join(keys)}: received {_get(recipe, keys)!r}; a "
                f"`compare` recipe runs the main job, which uses {value!r}. "
                "Use `experiment: distill` for other settings."
            )
    for i, method in enumerate(recipe["methods"]):
        extra = sorted(set(method) - {"name"})
        if extra:
            raise RecipeError(
                f"methods[{i}]: {extra[0]}: a `compare` recipe uses each "
                "method's library defaults (the main job's); use "
                "`experiment: distill` to pass arguments."
            )
    if recipe["data"]["source"].startswith("bundled:"):
        raise RecipeError(
            f"data.source: received {recipe['data']['source']!r}; the main "
            "job reads 'bundled' (the Fashion-MNIST subset), a .npz archive "
            "or a TensorFlow Datasets name."
        )
    seeds = recipe["seeds"]
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise RecipeError(
            f"seeds: received {seeds}; the main job runs consecutive seeds "
            "(its first seed also draws the teacher and the subsets), e.g. "
            "[0, 1, 2]."
        )


def argv(recipe, base):
    """The `keras-kd` arguments that run `recipe`."""
    from keras_kd.recipes import build

    check_compare(recipe)
    data = recipe["data"]
    source = build.data_source(recipe, base)
    arguments = []
    if source is not None:
        arguments += ["--data", str(source)]
    if data["data_dir"]:
        arguments += ["--data-dir", data["data_dir"]]
    if data["download"]:
        arguments.append("--download")
    arguments += [
        "--methods",
        ",".join(m["name"] for m in recipe["methods"]),
        "--epochs",
        str(recipe["training"]["epochs"]),
        "--teacher-epochs",
        str(recipe["teacher"]["epochs"]),
        "--ab-epochs",
        str(recipe["procedure"]["init_epochs"]),
        "--batch-size",
        str(data["batch_size"]),
        "--learning-rate",
        repr(recipe["training"]["optimizer"]["learning_rate"]),
        "--train-fraction",
        repr(data["train_fraction"]),
        "--augment",
        data["augment"],
        "--student-fraction",
        repr(data["student_fraction"]),
        "--seeds",
        str(len(recipe["seeds"])),
        "--seed",
        str(recipe["seeds"][0]),
    ]
    return arguments
