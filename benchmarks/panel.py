"""Panel benchmark: does distillation beat the student trained alone, regime
by regime?

For each *cell* of a panel of training regimes (data set, full or reduced
training set, optimizer, short or long schedule, small or tiny student), trains
the student alone and distilled with each method, for 3 seeds, with the *same*
optimizer, schedule, seed, initial weights and data order, and reports each
method's test-accuracy gain over the student alone (paired by seed: mean +-
sample std), marking gains that lie inside the noise.

The 8 cells form a 2^(5-2) fractional factorial design: every level of every
factor appears in 4 cells, and no two factors always move together. Methods use
the LIBRARY DEFAULTS (no loss weight, temperature or margin passed): the panel
measures the defaults as they are, so that a change of default can be judged
by rerunning it. Variants (e.g. KD at T=1) are added as rows of `CONFIGS`.

The panel runs in parts (`--part N`, or `--cells a,b`) of at most ~45 minutes on
2 idle CPU cores. Every finished run is appended at once to
`benchmarks/results/panel.jsonl`; a part that is stopped resumes where it
stopped (runs already in the file are skipped). The report
(`panel.md`, `panel.json`, `panel.png`) is rebuilt from the file after every
run and by `--report`.

    python benchmarks/panel.py --plan      # cells, parts, estimated minutes
    python benchmarks/panel.py --smoke     # ~2-5 min pipeline check
                                           # -> results/panel_smoke.*
    python benchmarks/panel.py --part 1    # one part (resumable)
                                           # -> results/panel.*
    python benchmarks/panel.py --cells fm_red_adam_short_tiny --configs alone,kd
    python benchmarks/panel.py --report    # rebuild panel.md/.json/.png
                                           # from panel.jsonl

Data: `fashion_mnist.npz` and `cifar10.npz` (`x_train, y_train, x_test, y_test`,
as read by `keras_kd.data.load_arrays`) in `--data-dir` (default `data`, in
the directory the script runs from). The benchmark only reads
them; keras_kd never depends on them. Teachers are trained once per data set
and cached in `benchmarks/results/cache/` (not committed).
"""

import argparse
import datetime
import glob
import hashlib
import json
import os
import platform
import subprocess
import sys
import time

import common

common.quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from accuracy import CosineAfterHold  # noqa: E402
from accuracy import cross_entropy  # noqa: E402
from accuracy import evaluate  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import recipes  # noqa: E402
from keras_kd.models import conv_net  # noqa: E402
from keras_kd.models import resnet  # noqa: E402
from keras_kd.recipes import build as recipe_build  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA_DIR = "data"  # relative to the working directory

# ---------------------------------------------------------------------------
# Data sets, teachers and students.
# `train_batch` is the students' batch size; the teacher has its own settings
# (it is trained once per data set on the full training set and cached).
DATASETS = {
    "fmnist": dict(
        file="fashion_mnist.npz",
        augment=None,
        train_batch=64,
        sgd_lr=0.05,
        teacher=dict(
            arch="conv_net",
            widths=(32, 64, 128),
            blocks=None,
            steps=938,
            batch_size=128,
            optimizer="adam",
            lr=2e-3,
        ),
        students={
            "small": dict(arch="conv_net", widths=(8, 16, 32), blocks=None),
            "tiny": dict(arch="conv_net", widths=(4, 8, 16), blocks=None),
        },
    ),
    "cifar10": dict(
        file="cifar10.npz",
        augment="crop_flip",
        train_batch=128,
        sgd_lr=0.1,
        teacher=dict(
            arch="resnet",
            widths=(16, 32, 64),
            blocks=1,
            steps=1950,
            batch_size=128,
            optimizer="sgd",
            lr=0.1,
        ),
        students={
            "small": dict(arch="resnet", widths=(8, 16, 32), blocks=1),
            "tiny": dict(arch="resnet", widths=(4, 8, 16), blocks=1),
        },
    ),
}
REDUCED_FRACTION = (
    0.1  # class-balanced, keras_kd.data.balanced_subset(seed=SUBSET_SEED)
)
SUBSET_SEED = 0
TEACHER_SEED = 0
ADAM_LR = 2e-3
SGD_MOMENTUM = 0.9  # Nesterov
SGD_WEIGHT_DECAY = 5e-4  # decoupled (keras.optimizers.SGD(weight_decay=...))
# Student steps per run (batch `train_batch`), split in CHUNKS Keras epochs; the
# learning rate follows a cosine to 0 over them. Configs with the AB schedule
# first run AB_INIT_CHUNKS extra chunks of AB initialisation at constant rate
# (RepDistiller: 30 initialisation epochs before its 240).
STEPS = {
    ("fmnist", "short"): 300,
    ("fmnist", "long"): 1800,  # long: 1.9 epochs of 60k
    ("cifar10", "short"): 300,
    ("cifar10", "long"): 800,
}  # long: 20 epochs of 5k
CHUNKS = 5
AB_INIT_CHUNKS = 1
SEEDS = (0, 1, 2)

# ---------------------------------------------------------------------------
# The cells: a 2^(5-2) design (schedule = data x train set, student = data x
# optimizer), so each level of each factor is in 4 cells. Each cell is a
# recipe file in benchmarks/recipes/panel/ (data, teacher, student,
# optimizer, schedule: validated by keras_kd.recipes), which this script
# reads; the four short cells also run the single feature methods (AB, NST,
# AT alone).
RECIPES_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "recipes", "panel"
)
DATA_NAMES = {"fashion_mnist.npz": "fmnist", "cifar10.npz": "cifar10"}


def _refuse(path, key, value, expected):
    raise SystemExit(
        f"panel: {os.path.basename(path)}: {key} is {value!r}; the panel "
        f"runs {expected!r} there (its teachers are cached by those settings)."
    )


def cell_of(path):
    """A cell's settings, read from its recipe and checked against what the
    panel's loop runs."""
    recipe, _ = recipes.resolve(path)
    source = recipe["data"]["source"]
    if source not in DATA_NAMES:
        _refuse(path, "data.source", source, sorted(DATA_NAMES))
    data = DATA_NAMES[source]
    d = DATASETS[data]
    training = recipe["training"]
    optimizer = training["optimizer"]
    student = recipe["student"]
    names = [
        n
        for n, s in d["students"].items()
        if s["arch"] == student["build"]
        and list(s["widths"]) == student["widths"]
        and (s["blocks"] or 1) == student["blocks"]
    ]
    if not names:
        _refuse(path, "student", student, d["students"])
    schedules = [
        k[1]
        for k, steps in STEPS.items()
        if k[0] == data and steps == training["steps"]
    ]
    if not schedules:
        _refuse(path, "training.steps", training["steps"], STEPS)
    fraction = recipe["data"]["train_fraction"]
    if fraction not in (1.0, REDUCED_FRACTION):
        _refuse(path, "data.train_fraction", fraction, REDUCED_FRACTION)
    lr = ADAM_LR if optimizer["name"] == "adam" else d["sgd_lr"]
    for key, value, expected in (
        ("data.batch_size", recipe["data"]["batch_size"], d["train_batch"]),
        ("data.augment", recipe["data"]["augment"], d["augment"] or "none"),
        ("training.epochs", training["epochs"], CHUNKS),
        ("training.optimizer.learning_rate", optimizer["learning_rate"], lr),
        (
            "procedure.init_epochs",
            recipe["procedure"]["init_epochs"],
            AB_INIT_CHUNKS,
        ),
        (
            "teacher.widths",
            recipe["teacher"]["widths"],
            list(d["teacher"]["widths"]),
        ),
        ("teacher.steps", recipe["teacher"]["steps"], d["teacher"]["steps"]),
        (
            "teacher.batch_size",
            recipe["teacher"]["batch_size"],
            d["teacher"]["batch_size"],
        ),
        (
            "teacher.optimizer.name",
            recipe["teacher"]["optimizer"]["name"],
            d["teacher"]["optimizer"],
        ),
        (
            "teacher.optimizer.learning_rate",
            recipe["teacher"]["optimizer"]["learning_rate"],
            d["teacher"]["lr"],
        ),
    ):
        if value != expected:
            _refuse(path, key, value, expected)
    if optimizer["name"] == "sgd" and (
        optimizer["weight_decay"] != SGD_WEIGHT_DECAY
        or optimizer["momentum"] != SGD_MOMENTUM
        or not optimizer["nesterov"]
    ):
        _refuse(path, "training.optimizer", optimizer, "Nesterov 0.9, wd 5e-4")
    schedule = schedules[0]
    return dict(
        data=data,
        train="full" if fraction == 1.0 else "reduced",
        optimizer=optimizer["name"],
        schedule=schedule,
        student=names[0],
        extras=schedule == "short",
        recipe=os.path.relpath(path, REPO),
    )


# The cells in the order of the report's tables.
ORDER = (
    "fm_red_adam_short_tiny",
    "fm_red_sgd_short_small",
    "c10_full_adam_short_small",
    "c10_full_sgd_short_tiny",
    "fm_full_adam_long_tiny",
    "fm_full_sgd_long_small",
    "c10_red_adam_long_small",
    "c10_red_sgd_long_tiny",
)


def load_cells():
    paths = glob.glob(os.path.join(RECIPES_DIR, "*.yaml"))
    names = {os.path.splitext(os.path.basename(p))[0]: p for p in paths}
    if sorted(names) != sorted(ORDER):
        raise SystemExit(
            f"panel: {RECIPES_DIR} holds {sorted(names)}; the panel's cells "
            f"are {list(ORDER)}."
        )
    return {name: cell_of(names[name]) for name in ORDER}


CELLS = load_cells()
# Parts of <= ~45 min each on 2 idle cores (see --plan for the estimate):
# "cell" runs every seed of a cell, "cell@0,1" only those seeds. Part 1 holds
# the cheapest cells; the long Fashion-MNIST cells are split by seed.
PARTS = {
    1: ["fm_red_adam_short_tiny", "fm_red_sgd_short_small"],
    2: ["c10_full_adam_short_small@0,1"],  # + the CIFAR-10 teacher (~15-25 min)
    3: ["c10_full_adam_short_small@2", "c10_full_sgd_short_tiny"],
    4: ["fm_full_adam_long_tiny@0,1"],
    5: ["fm_full_adam_long_tiny@2", "fm_full_sgd_long_small@0"],
    6: ["fm_full_sgd_long_small@1,2"],
    7: ["c10_red_adam_long_small"],
    8: ["c10_red_sgd_long_tiny"],
}


def part_entries(entries):
    """[(cell, seeds)] of a part's entries ("cell" or "cell@0,1")."""
    out = []
    for entry in entries:
        cell, _, seeds = entry.partition("@")
        out.append(
            (cell, tuple(int(x) for x in seeds.split(",")) if seeds else SEEDS)
        )
    return out


# ---------------------------------------------------------------------------
# The method configs. Each lists methods as a recipe's `methods:` does and
# is built by the recipe builder (keras_kd.recipes.build.losses: the method
# registry's default layers for the student's stage count, library defaults
# unless the row says otherwise). To compare a variant, add a row (e.g.
# "kd_t1": _methods({"name": "kd", "temperature": 1.0}), or
# weights={"logits_distillation": 0.1}) and run it with --configs.
def _methods(*methods):
    entries = [m if isinstance(m, dict) else {"name": m} for m in methods]
    return lambda stages, facts: recipe_build.losses(
        {"methods": entries}, stages, facts
    )


def _function_matching(mixup_alpha, crop=True):
    """Distiller arguments of function matching for a cell's data set and
    seed: in-step flips, and crops unless `crop=False`, where the data
    pipeline has none (Fashion-MNIST; CIFAR-10's pipeline already crops and
    flips, the same batch for both networks), mixup with `mixup_alpha`."""

    def arguments(data_name, seed):
        spatial = DATASETS[data_name]["augment"] is None
        return dict(
            function_matching=keras_kd.FunctionMatching(
                crop_padding=4 if spatial and crop else 0,
                flip=spatial,
                mixup_alpha=mixup_alpha,
                seed=seed,
            )
        )

    return arguments


def _config(description, losses, group, weights=None, **extra):
    """A config row without the AB schedule (see CONFIGS)."""
    return dict(
        description=description,
        losses=losses,
        ab_schedule=False,
        weights=weights,
        group=group,
        **extra,
    )


CONFIGS = {
    # name: description, losses (None: the student alone), ab_schedule,
    # weights (Distiller distillation_loss_weights; None: defaults), group,
    # distiller_kwargs (a dict, or a function of the data set and seed).
    "alone": _config("student alone (cross-entropy)", None, "core"),
    "kd": _config("KD, library defaults", _methods("kd"), "core"),
    "ab_kd": dict(
        description="AB schedule (AB init, then CE + KD), defaults",
        losses=_methods("ab", "kd"),
        ab_schedule=True,
        weights=None,
        group="core",
    ),
    "nst_kd": _config(
        "NST (last stage, pre-act.) + KD, defaults",
        _methods("nst", "kd"),
        "core",
    ),
    "ab": dict(
        description="AB schedule (AB init, then CE), defaults",
        losses=_methods("ab"),
        ab_schedule=True,
        weights=None,
        group="extra",
    ),
    "nst": _config(
        "NST alone (last stage, pre-act.), defaults", _methods("nst"), "extra"
    ),
    "at": _config(
        "attention transfer alone (every stage), defaults",
        _methods("at"),
        "extra",
    ),
    # Function matching (Beyer et al., 2022), run when named (--configs):
    # teacher and student see the same batch, augmented inside the step.
    "fm_alone": _config(
        "student alone on function matching's inputs (crops, "
        "flips, mixup 1.0; KD at weight 0)",
        _methods("kd"),
        "function_matching",
        weights=[0.0],
        distiller_kwargs=_function_matching(1.0),
    ),
    "fm_kd": _config(
        "function matching (crops, flips, mixup 1.0) + KD, defaults",
        _methods("kd"),
        "function_matching",
        distiller_kwargs=_function_matching(1.0),
    ),
    # Methods added since the panel's first runs, library defaults (default
    # layers for the student's stage count, default weights), with the task
    # loss; run when named (--configs).
    **{
        name: _config(f"{label}, defaults", _methods(name), "new")
        for name, label in (
            ("kd_ls", "KD with logit standardisation"),
            ("dkd", "DKD"),
            ("dkd_ls", "DKD with logit standardisation"),
            ("fitnets", "FitNets hints"),
            ("fsp", "FSP"),
            ("rkd", "RKD (distance + angle)"),
            ("sp", "similarity-preserving"),
            ("pkt", "PKT"),
            ("crd", "CRD (example ids)"),
        )
    },
    # NST beside DKD instead of KD (both at their defaults), tried for the
    # goal on the four short cells (on CIFAR-10 NST + KD leads and DKD gains
    # more than KD). In the search group, an option the guide does not
    # recommend: it never passed NST + KD beyond the noise.
    "nst_dkd": _config(
        "NST (last stage, pre-act.) + DKD, defaults",
        _methods("nst", "dkd"),
        "search",
    ),
    # Defaults search for DKD (mdistiller's CIFAR-100 values, beta 8 and
    # T 4, fell far below the student alone): T 1 as KD's search chose;
    # mdistiller's ImageNet values (alpha 1, beta 0.5, T 1), and the same
    # with alpha halved; beta 1.
    **{
        name: _config(
            f"DKD, {label}", _methods({"name": "dkd", **arguments}), "search"
        )
        for name, label, arguments in (
            ("dkd_t1", "T 1", dict(temperature=1.0)),
            (
                "dkd_imagenet",
                "alpha 0.5, beta 0.5, T 1 (mdistiller's ImageNet beta and T, "
                "alpha halved)",
                dict(alpha=0.5, beta=0.5, temperature=1.0),
            ),
            (
                "dkd_imagenet_a1",
                "alpha 1, beta 0.5, T 1 (mdistiller's ImageNet values)",
                dict(alpha=1.0, beta=0.5, temperature=1.0),
            ),
            ("dkd_b1", "beta 1", dict(beta=1.0)),
        )
    },
    # Defaults search for the relation- and contrast-based methods, whose
    # official weights fell below the student alone at seed 0, and for
    # FitNets (below it on fm_red_sgd_short_small): a tenth of the official
    # weight (as AT's search chose).
    **{
        f"{name}_w01": _config(
            f"{label}, a tenth of the default weight ({weight:g})",
            _methods(name),
            "search",
            weights=[weight],
        )
        for name, label, weight in (
            ("fitnets", "FitNets hints", 10.0),
            ("rkd", "RKD", 0.1),
            ("sp", "similarity-preserving", 300.0),
            ("pkt", "PKT", 3000.0),
            ("crd", "CRD", 0.08),
        )
    },
    # The official weights of FitNets, RKD, SP, PKT and CRD (their library
    # defaults before the search above; the panel's first runs of them).
    **{
        f"{name}_paper": _config(
            f"{label}, official weight ({weight})",
            _methods({"name": name, "preset": "paper"}),
            "search",
        )
        for name, label, weight in (
            ("fitnets", "FitNets hints", "100"),
            ("rkd", "RKD", "1"),
            ("sp", "similarity-preserving", "3000"),
            ("pkt", "PKT", "30000"),
            ("crd", "CRD", "0.8"),
        )
    },
    # Training procedures beside KD, library defaults, at KD's number of
    # student steps: route-constrained optimisation (5 stages, one per
    # epoch, on anchors of the teacher's recorded route) and
    # boundary-supporting samples (its official schedule).
    "rco_kd": _config(
        "route-constrained optimisation (5 stages on the teacher's route of "
        "8 anchors) + KD, defaults",
        _methods("kd"),
        "new",
        procedures=lambda data, seed: [
            keras_kd.procedures.RouteConstrainedOptimization(
                data.route, stages=5, verbose=0
            )
        ],
    ),
    "bss_kd": _config(
        "boundary-supporting samples + KD, defaults",
        _methods("kd"),
        "new",
        procedures=lambda data, seed: [
            keras_kd.procedures.BoundarySupportingSamples(seed=seed)
        ],
    ),
    # Function matching with the best of the new methods on the panel's
    # short cells (SP: the largest gain, beyond the noise, on
    # fm_red_sgd_short_small); its control is fm_alone.
    "fm_sp": _config(
        "function matching (crops, flips, mixup 1.0) + SP, defaults",
        _methods("sp"),
        "function_matching",
        distiller_kwargs=_function_matching(1.0),
    ),
    # Milder: mixup 0.2 and flips, no crops.
    "fm_kd_mild": _config(
        "function matching (flips, mixup 0.2) + KD, defaults",
        _methods("kd"),
        "function_matching",
        distiller_kwargs=_function_matching(0.2, crop=False),
    ),
}

# Seconds per training step (AB initialisation steps included), used by --plan
# where panel.jsonl holds no measurement for that data set / student / config
# yet. Fashion-MNIST: part 1's first runs (batch 64, load average 3.5-5 on 2
# cores); CIFAR-10: benchmarks/results/accuracy.md (batch 128, ResNet-8
# teacher, load 5-6), tiny students guessed. An idle machine is faster.
FALLBACK_SECONDS_PER_STEP = {
    ("fmnist", "tiny", "alone"): 0.076,
    ("fmnist", "tiny", "distill"): 0.15,
    ("fmnist", "tiny", "ab"): 0.25,
    ("fmnist", "small", "alone"): 0.10,
    ("fmnist", "small", "distill"): 0.18,
    ("fmnist", "small", "ab"): 0.30,
    ("cifar10", "small", "alone"): 0.18,
    ("cifar10", "small", "distill"): 0.21,
    ("cifar10", "small", "ab"): 0.37,
    ("cifar10", "tiny", "alone"): 0.13,
    ("cifar10", "tiny", "distill"): 0.17,
    ("cifar10", "tiny", "ab"): 0.30,
}
FALLBACK_TEACHER_SECONDS_PER_STEP = {"fmnist": 0.73, "cifar10": 0.74}
RUN_OVERHEAD_SECONDS = 15  # build, trace, evaluate

SMOKE = dict(
    train_images=2000, test_images=1000, teacher_steps=20, steps=10, seeds=(0,)
)


# ---------------------------------------------------------------------------
def cell_configs(cell, only=None):
    """The configs a cell runs, core group first."""
    names = [
        c
        for c, spec in CONFIGS.items()
        if spec["group"] == "core"
        or (spec["group"] == "extra" and CELLS[cell]["extras"])
    ]
    if only:
        names = [c for c in only if c in CONFIGS]
    return names


def build(spec, input_shape, name):
    if spec["arch"] == "conv_net":
        return conv_net(input_shape, 10, widths=spec["widths"], name=name)
    return resnet(
        input_shape, 10, widths=spec["widths"], blocks=spec["blocks"], name=name
    )


def make_optimizer(kind, data, hold, decay_steps):
    if kind == "adam":
        return keras.optimizers.Adam(
            CosineAfterHold(ADAM_LR, hold, decay_steps)
        )
    if kind == "sgd":
        return keras.optimizers.SGD(
            CosineAfterHold(DATASETS[data]["sgd_lr"], hold, decay_steps),
            momentum=SGD_MOMENTUM,
            nesterov=True,
            weight_decay=SGD_WEIGHT_DECAY,
        )
    raise ValueError(f"unknown optimizer {kind!r}; expected 'adam' or 'sgd'.")


def describe_cell(cell, steps=None):
    c = CELLS[cell]
    d = DATASETS[c["data"]]
    s = d["students"][c["student"]]
    steps = steps or STEPS[(c["data"], c["schedule"])]
    lr = ADAM_LR if c["optimizer"] == "adam" else d["sgd_lr"]
    opt = (
        f"Adam {lr:g}"
        if c["optimizer"] == "adam"
        else f"SGD {lr:g} Nesterov {SGD_MOMENTUM}, wd {SGD_WEIGHT_DECAY:g}"
    )
    return dict(
        cell=cell,
        data=c["data"],
        train="full"
        if c["train"] == "full"
        else f"{100 * REDUCED_FRACTION:.0f}% balanced",
        optimizer=opt,
        schedule=f"{c['schedule']}: {steps} steps x {d['train_batch']}",
        student=f"{c['student']}: {s['arch']}{tuple(s['widths'])}"
        + (f" blocks={s['blocks']}" if s["blocks"] else ""),
        configs=",".join(cell_configs(cell)),
    )


class Data:
    """Arrays, normalisation and test set of one data set (loaded once)."""

    def __init__(self, name, data_dir, smoke):
        path = os.path.join(data_dir, DATASETS[name]["file"])
        if not os.path.exists(path):
            raise SystemExit(
                f"panel: {path} not found; pass --data-dir, the folder "
                f"holding {DATASETS[name]['file']}."
            )
        arrays = keras_kd.data.load_arrays(path)
        x, y = arrays["x_train"], arrays["y_train"]
        x_test, y_test = arrays["x_test"], arrays["y_test"]
        if smoke:
            x, y = keras_kd.data.balanced_subset(
                x, y, SMOKE["train_images"] / len(y), seed=0
            )
            x_test, y_test = (
                x_test[: SMOKE["test_images"]],
                y_test[: SMOKE["test_images"]],
            )
        self.name, self.path = name, path
        self.full = (x, y)
        self.reduced = keras_kd.data.balanced_subset(
            x, y, REDUCED_FRACTION, seed=SUBSET_SEED
        )
        # The teacher and every student see inputs normalised the same way.
        self.stats = keras_kd.data.channel_stats(x)
        self.test = keras_kd.data.make_dataset(
            x_test,
            y_test,
            batch_size=500,
            mean=self.stats[0],
            std=self.stats[1],
        )
        self.shape = x.shape[1:]
        self.sizes = dict(
            full=len(y), reduced=len(self.reduced[1]), test=len(y_test)
        )
        self.key = f"{os.path.basename(path)}:{os.path.getsize(path)}:{len(y)}"

    def train(self, which, batch_size, seed, example_ids=False):
        x, y = self.full if which == "full" else self.reduced
        return keras_kd.data.make_dataset(
            x,
            y,
            batch_size=batch_size,
            training=True,
            augment=DATASETS[self.name]["augment"],
            mean=self.stats[0],
            std=self.stats[1],
            seed=seed,
            drop_remainder=True,
            example_ids=example_ids,
        ).repeat()


def teacher_settings(data, smoke):
    """`(spec, settings, key)` of the data set's teacher: its training
    spec, everything its weights depend on, and the hash of that (the
    cache key of the teacher and of its route)."""
    spec = dict(DATASETS[data.name]["teacher"])
    if smoke:
        spec["steps"] = SMOKE["teacher_steps"]
    settings = dict(
        spec,
        data=data.key,
        seed=TEACHER_SEED,
        augment=DATASETS[data.name]["augment"],
    )
    key = hashlib.sha256(
        json.dumps(settings, sort_keys=True).encode()
    ).hexdigest()[:12]
    return spec, settings, key


def teacher_for(data, cache_dir, smoke):
    spec, settings, key = teacher_settings(data, smoke)
    path = os.path.join(cache_dir, f"panel_teacher_{data.name}_{key}.keras")

    def train():
        print(f"teacher {data.name}: training {spec}", flush=True)
        start = time.time()
        teacher, steps = train_teacher(data, spec)
        seconds = time.time() - start
        return teacher, dict(
            settings,
            test_accuracy=evaluate(teacher, data.test),
            train_seconds=seconds,
            seconds_per_step=seconds / steps,
            params=teacher.count_params(),
            load_average=common.load_average(),
        )

    return common.cached_model(path, train, f"teacher {data.name}")


TEACHER_CHUNKS = 4  # the teacher trains in this many Keras epochs


def teacher_steps(spec):
    """The teacher's training steps: its spec's, a multiple of the chunks."""
    return max(TEACHER_CHUNKS, spec["steps"] // TEACHER_CHUNKS * TEACHER_CHUNKS)


def train_teacher(data, spec, callbacks=()):
    """`(teacher, steps)`: the data set's teacher, trained from its seed
    (deterministic: the same weights each time)."""
    keras.utils.set_random_seed(TEACHER_SEED)
    teacher = build(spec, data.shape, "teacher")
    chunks = TEACHER_CHUNKS
    steps = teacher_steps(spec)
    if spec["optimizer"] == "adam":
        opt = keras.optimizers.Adam(CosineAfterHold(spec["lr"], 0, steps))
    else:
        opt = keras.optimizers.SGD(
            CosineAfterHold(spec["lr"], 0, steps),
            momentum=SGD_MOMENTUM,
            nesterov=True,
            weight_decay=SGD_WEIGHT_DECAY,
        )
    teacher.compile(optimizer=opt, loss=cross_entropy(), metrics=["accuracy"])
    teacher.fit(
        data.train("full", spec["batch_size"], TEACHER_SEED),
        steps_per_epoch=steps // chunks,
        epochs=chunks,
        verbose=2,
        callbacks=list(callbacks),
    )
    return teacher, steps


ROUTE_ANCHORS = 8  # anchors on the teacher's route, evenly spaced in steps


def route_for(data, teacher, cache_dir, smoke):
    """The teacher's route (for route-constrained optimisation): a
    directory of `ROUTE_ANCHORS` anchors, recorded by training the teacher
    again from its seed with a `RouteRecorder`, and kept only if that run
    ends on exactly the cached teacher's weights."""
    spec, settings, key = teacher_settings(data, smoke)
    directory = os.path.join(cache_dir, f"panel_route_{data.name}_{key}")
    if os.path.exists(os.path.join(directory, "done.json")):
        return directory
    steps = teacher_steps(spec)
    print(
        f"teacher {data.name}: training it again to record its route "
        f"({ROUTE_ANCHORS} anchors)",
        flush=True,
    )
    recorder = keras_kd.procedures.RouteRecorder(
        directory, every_steps=max(1, steps // ROUTE_ANCHORS), final=False
    )
    again, _ = train_teacher(data, spec, [recorder])
    differences = [
        float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
        for a, b in zip(again.get_weights(), teacher.get_weights())
    ]
    if max(differences) != 0.0:
        raise SystemExit(
            f"panel: the teacher trained again for its route differs from "
            f"the cached teacher (largest weight difference "
            f"{max(differences):.3g}); delete {directory} and the cached "
            "teacher to retrain both."
        )
    with open(os.path.join(directory, "done.json"), "w") as f:
        json.dump(dict(settings, anchors=ROUTE_ANCHORS), f, indent=1)
    return directory


def _distiller_kwargs(spec, data_name, seed):
    kwargs = spec.get("distiller_kwargs", {})
    return kwargs(data_name, seed) if callable(kwargs) else kwargs


def run_one(cell, config, seed, data, teacher, smoke):
    c = CELLS[cell]
    spec = CONFIGS[config]
    d = DATASETS[c["data"]]
    steps = SMOKE["steps"] if smoke else STEPS[(c["data"], c["schedule"])]
    chunk = steps // CHUNKS
    init = AB_INIT_CHUNKS if spec["ab_schedule"] else 0
    stages = len(d["students"][c["student"]]["widths"])
    load_start = common.load_average()
    keras.utils.set_random_seed(seed)  # same initial student for every config
    student = build(d["students"][c["student"]], data.shape, "student")
    # With the AB schedule the optimizer restarts when stage 2 begins (the
    # library default, as RepDistiller), so the schedule restarts too: stage 2
    # runs the same cosine as the student alone, and stage 1 its first steps.
    restart = spec.get("restart_optimizer", True)
    optimizer = make_optimizer(
        c["optimizer"],
        c["data"],
        0 if restart else init * chunk,
        CHUNKS * chunk,
    )
    callbacks = []
    example_ids = False
    if spec["losses"] is None:
        model = student
    else:
        # Facts a method may need about its training set (CRD: the number
        # of examples, for its memory bank, read through example ids).
        facts = {"num_examples": data.sizes[c["train"]]}
        losses = spec["losses"](stages, facts)
        example_ids = "example_ids" in keras_kd.losses.requirements(losses)
        model = keras_kd.Distiller(
            teacher,
            student,
            losses,
            distillation_loss_weights=spec["weights"],
            procedures=spec.get("procedures", lambda data, seed: [])(
                data, seed
            ),
            **_distiller_kwargs(spec, c["data"], seed),
        )
        if init:
            callbacks.append(
                keras_kd.callbacks.ActivationBoundarySchedule(
                    init_epochs=init, restart_optimizer=restart
                )
            )
        if spec.get("callbacks"):
            callbacks += spec["callbacks"](init, CHUNKS)
        if not init:
            # What the losses ask for, as a user is told to pass (DKD's
            # warm-up); nothing for KD, NST or AT.
            callbacks += keras_kd.callbacks.for_distiller(model)
    model.compile(optimizer=optimizer, loss=cross_entropy())
    # Route-constrained optimisation loads anchors into the teacher: give
    # the next run the teacher back as it was.
    teacher_weights = teacher.get_weights() if "procedures" in spec else None
    start = time.time()
    history = model.fit(
        # Same order per seed (example ids do not change it).
        data.train(c["train"], d["train_batch"], seed, example_ids),
        steps_per_epoch=chunk,
        epochs=init + CHUNKS,
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.time() - start
    if teacher_weights is not None:
        teacher.set_weights(teacher_weights)
    accuracy = evaluate(student, data.test)
    return dict(
        cell=cell,
        config=config,
        seed=seed,
        test_accuracy=accuracy,
        seconds=seconds,
        steps=(init + CHUNKS) * chunk,
        seconds_per_step=seconds / ((init + CHUNKS) * chunk),
        last={k: float(v[-1]) for k, v in history.history.items()},
        nonfinite=any(not np.isfinite(v[-1]) for v in history.history.values()),
        load_average=[load_start, common.load_average()],
        finished=datetime.datetime.now(datetime.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S"
        ),
        commit=git_commit(),
        command=common.command_line(),
        cpu=common.machine()["cpu"],
        cores=os.cpu_count(),
        host=platform.node(),
        smoke=bool(smoke),
    )


_COMMIT = None


def git_commit():
    """`<short hash>[+dirty]` of the repository (the library under test)."""
    global _COMMIT
    if _COMMIT is None:
        try:
            out = subprocess.run(
                ["git", "-C", REPO, "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", REPO, "status", "--porcelain", "keras_kd"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            _COMMIT = (out or "unknown") + ("+dirty keras_kd" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            _COMMIT = "unknown"
    return _COMMIT


# ---------------------------------------------------------------------------
# Report.
def latest(records):
    """(cell, config) -> {seed: accuracy}, and the matching records (last
    wins)."""
    acc, recs = {}, {}
    for r in records:
        acc.setdefault((r["cell"], r["config"]), {})[r["seed"]] = r[
            "test_accuracy"
        ]
        recs[(r["cell"], r["config"], r["seed"])] = r
    return acc, recs


def gain_stats(acc, cell, config):
    """Paired gain over the student alone (points), its std, n, alone std,
    verdict."""
    treated = {s: 100 * v for s, v in acc.get((cell, config), {}).items()}
    alone = {s: 100 * v for s, v in acc.get((cell, "alone"), {}).items()}
    mean, std, n = common.paired_gain(treated, alone)
    _, alone_std = common.mean_std(list(alone.values()))
    if n == 0:
        verdict = ""
    elif n < 2 or not np.isfinite(alone_std):
        verdict = "n<2"
    else:
        noise = max(std, alone_std)
        verdict = (
            "inside noise"
            if abs(mean) <= noise
            else ("better" if mean > 0 else "WORSE")
        )
    return dict(
        gain=mean, gain_std=std, n=n, alone_std=alone_std, verdict=verdict
    )


def fmt_gain(g):
    if g["n"] == 0:
        return ""
    if g["n"] < 2:
        return f"{g['gain']:+.2f} (n=1)"
    text = f"{g['gain']:+.2f} ± {g['gain_std']:.2f}"
    if g["verdict"] == "inside noise":
        return text + " ≈"
    text = f"**{text}**"
    return text + ("" if g["n"] >= len(SEEDS) else f" (n={g['n']})")


def fmt_gain_short(g):
    """One decimal, as in the README: '**+1.8 ± 0.2**', '+0.2 ± 0.1 ≈',
    '+1.1 (1 seed)'."""
    if g["n"] == 0:
        return "–"
    if g["n"] < 2:
        return f"{g['gain']:+.1f} (1 seed)"
    text = f"{g['gain']:+.1f} ± {g['gain_std']:.1f}"
    return text + " ≈" if g["verdict"] == "inside noise" else f"**{text}**"


# Shown beside each gain in the before/after table: the same cells with
# keras_kd 0.1's defaults (the papers' values), kept in this file.
BEFORE_STEM = "panel_v0_1"
SHORT_NAMES = common.PANEL_CONFIG_NAMES


def before_after_table(acc, before_acc, cells, methods):
    """Markdown rows: per cell, the student alone and each method's gain now
    and (in brackets) with keras_kd 0.1's defaults. The README's table."""
    rows = []
    for c in cells:
        row = [c, fmt_acc(list(acc.get((c, "alone"), {}).values()), digits=1)]
        for m in methods:
            now, was = gain_stats(acc, c, m), gain_stats(before_acc, c, m)
            row.append(
                ""
                if now["n"] == was["n"] == 0
                else f"{fmt_gain_short(now)} (was {fmt_gain_short(was)})"
            )
        rows.append(row)
    return common.markdown_table(
        ["cell", "alone %"] + [SHORT_NAMES.get(m, m) for m in methods], rows
    )


def fmt_acc(values, digits=2):
    mean, std = common.mean_std([100 * v for v in values])
    if not values:
        return ""
    return (
        f"{mean:.{digits}f}"
        if len(values) < 2
        else f"{mean:.{digits}f} ± {std:.{digits}f}"
    )


def build_report(paths, records, teachers, smoke=False):
    acc, recs = latest(records)
    cells = [c for c in CELLS if any(k[0] == c for k in acc)]
    methods = [
        m for m in CONFIGS if m != "alone" and any(k[1] == m for k in acc)
    ]
    methods += sorted(
        {k[1] for k in acc if k[1] not in CONFIGS and k[1] != "alone"}
    )
    planned = {
        (c, m, s)
        for c in (cells if smoke else CELLS)
        for m in cell_configs(c)
        for s in (SMOKE["seeds"] if smoke else SEEDS)
    }
    done = {k for k in recs if k in planned}
    commits = sorted({r.get("commit", "?") for r in records})
    commands = sorted({r.get("command", "?") for r in records})
    complete = len(done) == len(planned)
    status = (
        f"**Complete**: all {len(planned)} planned runs."
        if complete
        else f"**Partial**: {len(done)} of {len(planned)} planned runs "
        f"({len(cells)} of {len(CELLS)} cells started). Missing runs are "
        "listed at the end."
    )

    summary = []
    for c in cells:
        row = dict(describe_cell(c))
        t = teachers.get(CELLS[c]["data"])
        row["teacher"] = 100 * t["test_accuracy"] if t else None
        alone = list(acc.get((c, "alone"), {}).values())
        row["alone"], row["alone_std"] = common.mean_std(
            [100 * v for v in alone]
        )
        row["alone_n"] = len(alone)
        row["gains"] = {
            m: gain_stats(acc, c, m) for m in methods if (c, m) in acc
        }
        summary.append(row)

    if smoke:
        status = (
            "**Smoke run** (pipeline check, numbers meaningless): "
            f"{SMOKE['train_images']} training images, {SMOKE['test_images']} "
            f"test images, {SMOKE['steps']} steps per run, teacher of "
            f"{SMOKE['teacher_steps']} steps. " + status
        )
    lines = common.header_markdown(
        "Panel: distillation gain over the student alone, with library "
        "defaults",
        first_start(records),
        [
            status,
            "",
            "Runs came from (from the repository root):",
            "",
            "```bash",
            *commands,
            "```",
            "",
            "keras_kd commit(s) under test: "
            f"{', '.join(f'`{c}`' for c in commits)}. Machine and versions "
            "above are those of the process that wrote this report; every "
            "run's load average is in the table at the end.",
            "",
        ],
    )
    lines += [
        "## Setup",
        "",
        "- Each cell trains the student alone and distilled with each method "
        "from the same initial weights (`keras.utils.set_random_seed(seed)` "
        "before building it), with the same optimizer, learning-rate schedule "
        "(cosine to 0) and data order (seeded "
        "shuffle and augmentation); seeds " + ", ".join(map(str, SEEDS)) + ".",
        f"- Steps are split in {CHUNKS} Keras epochs; configs with the AB "
        f"schedule first run {AB_INIT_CHUNKS} extra epoch(s) of AB "
        "initialisation (AB loss only), as RepDistiller runs 30 initialisation "
        "epochs before its 240; then the optimizer restarts (library default) "
        "and the ordinary epochs run the same cosine schedule as the student "
        "alone (keras_kd 0.1's runs, in panel_v0_1, kept one optimizer: "
        "constant learning rate during initialisation, then the cosine).",
        "- Distillation losses use the library defaults (no weight, "
        "temperature or margin passed). Taps: AB on every stage's "
        "pre-activation (`stage{i}_relu`, default tap); NST on the last "
        "stage's pre-activation; AT on every stage's output.",
        f"- Reduced: a class-balanced {100 * REDUCED_FRACTION:.0f}% subset "
        f"(`keras_kd.data.balanced_subset`, seed {SUBSET_SEED}); teachers "
        "always saw the full set. Inputs normalised by the full training set's "
        "channel mean and std.",
        "- Test accuracy on the full test set. Gain = method − alone, paired "
        "by seed, in points: mean ± sample std over seeds. **Bold**: |gain| "
        "exceeds both the gain's std and the student alone's std; `≈`: inside "
        "that noise.",
        "",
    ]
    lines += ["### Cells", ""]
    lines += common.markdown_table(
        [
            "cell",
            "data",
            "train set",
            "optimizer",
            "schedule",
            "student",
            "configs",
        ],
        [
            [
                r["cell"],
                r["data"],
                r["train"],
                r["optimizer"],
                r["schedule"],
                r["student"],
                r["configs"],
            ]
            for r in map(describe_cell, CELLS)
        ],
    )
    lines += ["", "### Teachers", ""]
    lines += common.markdown_table(
        [
            "data",
            "teacher",
            "params",
            "steps x batch",
            "optimizer",
            "test acc. %",
            "train s",
        ],
        [
            [
                k,
                f"{t['arch']}{tuple(t['widths'])}"
                + (f" blocks={t['blocks']}" if t["blocks"] else ""),
                f"{t['params']:,}",
                f"{t['steps']} x {t['batch_size']}",
                f"{t['optimizer']} {t['lr']:g}",
                f"{100 * t['test_accuracy']:.2f}",
                f"{t['train_seconds']:.0f}",
            ]
            for k, t in teachers.items()
        ],
    )
    lines += ["", "## Summary: gain over the student alone (points)", ""]
    lines += common.markdown_table(
        ["cell", "teacher %", "alone %", "teacher − alone"] + methods,
        [
            [
                r["cell"],
                f"{r['teacher']:.2f}" if r["teacher"] else "",
                fmt_acc(list(acc.get((r["cell"], "alone"), {}).values())),
                f"{r['teacher'] - r['alone']:+.2f}"
                if r["teacher"] and np.isfinite(r["alone"])
                else "",
            ]
            + [
                fmt_gain(r["gains"][m]) if m in r["gains"] else ""
                for m in methods
            ]
            for r in summary
        ]
        + [
            ["**mean over cells**", "", "", ""]
            + [mean_over_cells(summary, m) for m in methods]
        ],
    )
    lines += [
        "",
        "### The rule the defaults must meet (on the cells measured so far)",
        "",
        "Rule: KD, AB + KD and NST + KD each beat the student alone (higher "
        "mean) in every cell where the teacher beats the student alone by 3 "
        "points or more, with a mean gain over the panel of at least +1 point "
        "each; no method's mean falls below the student alone's mean by more "
        "than the student alone's std in any cell. Cells with fewer than 2 "
        "seeds are left out.",
        "",
    ]
    lines += common.markdown_table(
        [
            "method",
            "cells",
            "mean gain",
            "loses where teacher − alone ≥ 3",
            "below alone by > 1 std",
            "rule holds",
        ],
        [rule_row(summary, m) for m in methods],
    )
    if os.path.exists(paths["png"]):
        lines += ["", f"![gains per cell]({os.path.basename(paths['png'])})"]
    before_path = os.path.join(
        os.path.dirname(paths["jsonl"]), BEFORE_STEM + ".jsonl"
    )
    if not smoke and os.path.exists(before_path):
        before_acc, _ = latest(common.read_jsonl(before_path))
        lines += [
            "",
            "### Before and after (the README's table)",
            "",
            "Gain over the student alone in points, one decimal, with the same "
            f"cell's gain under keras_kd 0.1's defaults (`{BEFORE_STEM}.md`) "
            "in brackets; – where that config was not run.",
            "",
        ]
        lines += before_after_table(acc, before_acc, cells, methods)
    lines += ["", "## Per cell", ""]
    for r in summary:
        c = r["cell"]
        gap = (
            (r["teacher"] - r["alone"])
            if r["teacher"] and np.isfinite(r["alone"])
            else None
        )
        lines += [
            f"### {c}",
            "",
            f"{r['data']}, {r['train']}, {r['optimizer']}, {r['schedule']}, "
            f"{r['student']}; teacher "
            + (f"{r['teacher']:.2f}%" if r["teacher"] else "not recorded")
            + (
                f" (teacher − alone: {gap:+.2f} points)"
                if gap is not None
                else ""
            ),
            "",
        ]
        rows = []
        for m in ["alone"] + methods:
            if (c, m) not in acc:
                continue
            seeds = acc[(c, m)]
            rr = [recs[(c, m, s)] for s in sorted(seeds)]
            g = gain_stats(acc, c, m) if m != "alone" else None
            rows.append(
                [
                    m,
                    CONFIGS.get(m, {}).get("description", m),
                    fmt_acc(list(seeds.values())),
                    " / ".join(f"{100 * seeds[s]:.2f}" for s in sorted(seeds)),
                    fmt_gain(g) if g else "",
                    g["verdict"] if g else "",
                    f"{np.mean([x['seconds'] for x in rr]):.0f}",
                    f"{1000 * np.mean([x['seconds_per_step'] for x in rr]):.0f}",  # noqa: E501
                ]
            )
        lines += common.markdown_table(
            [
                "config",
                "method",
                "test acc. %",
                "per seed",
                "gain",
                "verdict",
                "s / run",
                "ms / step",
            ],
            rows,
        )
        lines += [""]
    missing = sorted(
        planned - done, key=lambda k: (list(CELLS).index(k[0]), k[1], k[2])
    )
    if missing:
        by = {}
        for c, m, s in missing:
            by.setdefault(c, {}).setdefault(m, []).append(s)
        lines += ["## Not run yet", ""]
        for c, v in by.items():
            if c not in cells:
                lines.append(
                    f"- `{c}`: not started ({sum(map(len, v.values()))} runs)"
                )
            else:
                lines.append(
                    f"- `{c}`: "
                    + "; ".join(
                        f"{m} (seeds {', '.join(map(str, ss))})"
                        for m, ss in v.items()
                    )
                )
        lines += [""]
    if not smoke:
        lines += [
            "## Parts (`--part N`)",
            "",
            "Estimated minutes for the runs not done yet, from the median "
            "seconds per step measured here (same data set, student and "
            "config) or a fallback table, plus the teacher's training where it "
            "is not cached; measured on a shared machine, so an idle one is "
            "faster.",
            "",
        ]
        lines += common.markdown_table(
            PLAN_HEADER,
            plan_rows(
                records, os.path.join(common.RESULTS_DIR, "cache"), PARTS
            ),
        )
        lines += [""]
    lines += ["## Every run", ""]
    lines += common.markdown_table(
        [
            "finished (UTC)",
            "cell",
            "config",
            "seed",
            "test acc. %",
            "s",
            "ms / step",
            "load avg (start, end)",
            "last logged losses",
        ],
        [
            [
                r["finished"],
                r["cell"],
                r["config"],
                r["seed"],
                f"{100 * r['test_accuracy']:.2f}",
                f"{r['seconds']:.0f}",
                f"{1000 * r['seconds_per_step']:.0f}",
                ", ".join(str(x) for x in r["load_average"]),
                ", ".join(
                    f"{k} {v:.3g}"
                    for k, v in sorted(r["last"].items())
                    if "_stage" not in k
                ),
            ]
            for r in records
        ],
    )
    common.write_text(paths["md"], lines)

    payload = dict(
        title="keras_kd panel benchmark",
        status=status,
        complete=complete,
        commands=commands,
        commits=commits,
        machine=common.machine(),
        versions=common.versions(),
        seeds=list(SEEDS),
        steps={f"{k[0]}/{k[1]}": v for k, v in STEPS.items()},
        cells={c: dict(CELLS[c], **describe_cell(c)) for c in CELLS},
        configs={m: s["description"] for m, s in CONFIGS.items()},
        groups={m: s["group"] for m, s in CONFIGS.items()},
        teachers=teachers,
        summary=summary,
        runs=records,
    )
    tmp = paths["json"] + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(json_safe(payload), f, indent=1, allow_nan=False)
    os.replace(tmp, paths["json"])
    plot(paths["png"], summary, methods)


def first_start(records):
    """When the first run started (its finish time less its training time)."""
    if not records:
        return "-"
    fmt = "%Y-%m-%d %H:%M:%S"
    starts = [
        datetime.datetime.strptime(r["finished"], fmt)
        - datetime.timedelta(seconds=r["seconds"])
        for r in records
    ]
    return min(starts).strftime("%Y-%m-%d %H:%M")


def json_safe(value):
    """NaN -> None and tuples -> lists, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


# Config groups that are not library defaults: options a user turns on
# (function matching) and a defaults search's variants.
NOT_DEFAULTS = ("function_matching", "search")


def rule_row(summary, method):
    rows = [
        r
        for r in summary
        if method in r["gains"] and r["gains"][method]["n"] >= 2
    ]
    gap3 = [r for r in rows if r["teacher"] and r["teacher"] - r["alone"] >= 3]
    loses = [r["cell"] for r in gap3 if r["gains"][method]["gain"] <= 0]
    below = [
        r["cell"]
        for r in rows
        if np.isfinite(r["alone_std"])
        and r["gains"][method]["gain"] < -r["alone_std"]
    ]
    mean = (
        float(np.mean([r["gains"][method]["gain"] for r in rows]))
        if rows
        else float("nan")
    )
    needs_win = method in ("kd", "ab_kd", "nst_kd")
    holds = not below and (not needs_win or (not loses and mean >= 1.0))
    verdict = ("yes" if holds else "**no**") if rows else ""
    if rows and CONFIGS.get(method, {}).get("group") in NOT_DEFAULTS:
        verdict = "(not a default: the rule is for defaults)"
    return [
        method,
        len(rows),
        f"{mean:+.2f}" if rows else "",
        ", ".join(loses) if needs_win else "(not required)",
        ", ".join(below),
        verdict,
    ]


def mean_over_cells(summary, method):
    gains = [
        r["gains"][method]["gain"]
        for r in summary
        if method in r["gains"] and r["gains"][method]["n"] >= 2
    ]
    if not gains:
        return ""
    return f"{np.mean(gains):+.2f} ({len(gains)} cells)"


def plot(path, summary, methods):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    if not summary or not methods:
        return
    cols = min(4, len(summary))
    rows = -(-len(summary) // cols)
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(max(8.0, 3.6 * cols), 3.4 * rows + 0.4),
        squeeze=False,
    )
    for ax in axes.flat[len(summary) :]:
        ax.axis("off")
    for ax, r in zip(axes.flat, summary):
        names = [m for m in methods if m in r["gains"]]
        means = [r["gains"][m]["gain"] for m in names]
        errs = [np.nan_to_num(r["gains"][m]["gain_std"]) for m in names]
        colors = [
            "grey"
            if r["gains"][m]["verdict"] in ("inside noise", "n<2")
            else ("C2" if r["gains"][m]["gain"] > 0 else "C3")
            for m in names
        ]
        ax.bar(names, means, yerr=errs, color=colors, capsize=3)
        if np.isfinite(r["alone_std"]):
            ax.axhspan(
                -r["alone_std"], r["alone_std"], color="grey", alpha=0.15, lw=0
            )
        ax.axhline(0, color="black", lw=0.8)
        gap = (
            f", T−S {r['teacher'] - r['alone']:+.1f}"
            if r["teacher"] and np.isfinite(r["alone"])
            else ""
        )
        ax.set_title(f"{r['cell']}\nalone {r['alone']:.1f}%{gap}", fontsize=8)
        ax.set_ylabel("gain over alone (points)", fontsize=8)
        ax.tick_params(axis="x", rotation=45, labelsize=7)
    fig.suptitle(
        "Gain over the student alone, library defaults: mean ± std over seeds\n"
        "grey band: the student alone's std; grey bar: inside the noise",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def cached_teachers(cache_dir, smoke):
    """Teacher metadata of the cache, newest per data set (for --report /
    --plan)."""
    out = {}
    if not os.path.isdir(cache_dir):
        return out
    for name in sorted(
        os.listdir(cache_dir),
        key=lambda n: os.path.getmtime(os.path.join(cache_dir, n)),
    ):
        if name.startswith("panel_teacher_") and name.endswith(".keras.json"):
            with open(os.path.join(cache_dir, name), encoding="utf-8") as f:
                meta = json.load(f)
            if (meta["steps"] == SMOKE["teacher_steps"]) == bool(smoke):
                out[name.split("_")[2]] = meta
    return out


# ---------------------------------------------------------------------------
# Plan.
def seconds_per_step(records, data, student, config):
    measured = [
        r["seconds_per_step"]
        for r in records
        if CELLS.get(r["cell"], {}).get("data") == data
        and not r.get("smoke")
        and CELLS[r["cell"]]["student"] == student
        and r["config"] == config
    ]
    if measured:
        return float(np.median(measured)), "measured"
    kind = (
        "alone"
        if CONFIGS[config]["losses"] is None
        else "ab"
        if CONFIGS[config]["ab_schedule"]
        else "distill"
    )
    return FALLBACK_SECONDS_PER_STEP[(data, student, kind)], "fallback"


PLAN_HEADER = ["part", "cells", "runs", "to do", "est. min to do", "from"]


def plan_rows(records, cache_dir, parts):
    """Per part: runs, runs left, estimated minutes for those left, sources."""
    teachers = cached_teachers(cache_dir, False)
    acc, recs = latest(records)
    rows = []
    trained = set(teachers)
    for part, entries in parts.items():
        total, todo, sources = 0.0, 0, set()
        for cell, seeds in part_entries(entries):
            c = CELLS[cell]
            if c["data"] not in trained:
                t = DATASETS[c["data"]]["teacher"]
                total += (
                    t["steps"] * FALLBACK_TEACHER_SECONDS_PER_STEP[c["data"]]
                )
                trained.add(c["data"])
                sources.add("teacher")
            for config in cell_configs(cell):
                steps = STEPS[(c["data"], c["schedule"])]
                steps += (
                    (steps // CHUNKS)
                    * AB_INIT_CHUNKS
                    * CONFIGS[config]["ab_schedule"]
                )
                sps, src = seconds_per_step(
                    records, c["data"], c["student"], config
                )
                sources.add(src)
                for seed in seeds:
                    if (cell, config, seed) in recs:
                        continue
                    todo += 1
                    total += steps * sps + RUN_OVERHEAD_SECONDS
        runs = sum(
            len(cell_configs(c)) * len(ss) for c, ss in part_entries(entries)
        )
        rows.append(
            [
                part,
                " ".join(entries),
                runs,
                todo,
                f"{total / 60:.0f}",
                "+".join(sorted(sources)),
            ]
        )
    return rows


def plan(records, cache_dir, parts):
    print("Cells:")
    common.print_table(
        [
            "cell",
            "data",
            "train set",
            "optimizer",
            "schedule",
            "student",
            "configs",
        ],
        [
            [
                r["cell"],
                r["data"],
                r["train"],
                r["optimizer"],
                r["schedule"],
                r["student"],
                r["configs"],
            ]
            for r in map(describe_cell, CELLS)
        ],
    )
    print(
        "\nParts (estimated minutes; seconds per step measured in panel.jsonl "
        "where available, else the fallback table; + teacher training if not "
        "cached):"
    )
    common.print_table(PLAN_HEADER, plan_rows(records, cache_dir, parts))
    loads = [r["load_average"][0] for r in records if r.get("load_average")]
    if loads:
        print(
            f"\n(measured runs had a 1-min load average of {min(loads)} to "
            f"{max(loads)} on {os.cpu_count()} cores; an idle machine is "
            "faster)"
        )


# ---------------------------------------------------------------------------
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part", type=int, choices=sorted(PARTS), help="run one part"
    )
    parser.add_argument(
        "--cells",
        default=None,
        help="comma-separated cells (instead of --part)",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="comma-separated configs to run (default: each cell's own set)",
    )
    parser.add_argument(
        "--seeds", default=None, help="comma-separated seeds (default 0,1,2)"
    )
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_DATA_DIR,
        help="folder with fashion_mnist.npz and cifar10.npz (default: ./data)",
    )
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="pipeline check: 2,000 training images, 10 steps, 1 seed, "
        "teacher of 20 steps -> results/panel_smoke.*",
    )
    parser.add_argument(
        "--rerun",
        action="store_true",
        help="run again runs that the results file already holds",
    )
    parser.add_argument(
        "--report", action="store_true", help="only rebuild the report"
    )
    parser.add_argument(
        "--plan", action="store_true", help="print cells, parts and estimates"
    )
    parser.add_argument(
        "--output",
        default=None,
        help="results stem (default benchmarks/results/panel[_smoke])",
    )
    args = parser.parse_args(argv)

    stem = args.output or os.path.join(
        common.RESULTS_DIR, "panel_smoke" if args.smoke else "panel"
    )
    paths = {k: f"{stem}.{k}" for k in ("md", "json", "jsonl", "png")}
    cache_dir = os.path.join(common.RESULTS_DIR, "cache")
    records = common.read_jsonl(paths["jsonl"])

    if args.plan:
        plan(records, cache_dir, PARTS)
        return 0
    if args.report:
        build_report(
            paths, records, cached_teachers(cache_dir, args.smoke), args.smoke
        )
        print(f"wrote {paths['md']}, {paths['json']}, {paths['png']}")
        return 0

    if args.cells:
        work = [(c, SEEDS) for c in args.cells.split(",") if c]
    elif args.part:
        work = part_entries(PARTS[args.part])
    elif args.smoke:
        work = [("fm_red_adam_short_tiny", SEEDS)]
    else:
        parser.error(
            "pick what to run: --part N, --cells a,b, --smoke, --report or "
            "--plan"
        )
    for c, _ in work:
        if c not in CELLS:
            parser.error(f"unknown cell {c!r}; expected some of {list(CELLS)}")
    only = [c for c in args.configs.split(",") if c] if args.configs else None
    for c in only or []:
        if c not in CONFIGS:
            parser.error(
                f"unknown config {c!r}; expected some of {list(CONFIGS)}"
            )
    if args.seeds or args.smoke:
        override = (
            tuple(int(s) for s in args.seeds.split(","))
            if args.seeds
            else SMOKE["seeds"]
        )
        work = [(c, override) for c, _ in work]

    done = {(r["cell"], r["config"], r["seed"]) for r in records}
    wall = time.time()
    datasets, teachers = {}, cached_teachers(cache_dir, args.smoke)
    for cell, seeds in work:
        name = CELLS[cell]["data"]
        if name not in datasets:
            datasets[name] = Data(name, args.data_dir, args.smoke)
            teacher, meta = teacher_for(datasets[name], cache_dir, args.smoke)
            datasets[name].teacher = teacher
            teachers[name] = meta
        data = datasets[name]
        print(f"\ncell {cell}: {describe_cell(cell)}; {data.sizes}", flush=True)
        configs = cell_configs(cell, only)
        if "rco_kd" in configs and not hasattr(data, "route"):
            data.route = route_for(data, data.teacher, cache_dir, args.smoke)
        groups = [
            [m for m in configs if CONFIGS[m]["group"] == g]
            for g in ("core", "extra")
        ]
        groups.append(
            [m for m in configs if CONFIGS[m]["group"] not in ("core", "extra")]
        )
        for group in groups:
            for seed in seeds:
                for config in group:
                    if (cell, config, seed) in done and not args.rerun:
                        continue
                    record = run_one(
                        cell, config, seed, data, data.teacher, args.smoke
                    )
                    common.append_jsonl(paths["jsonl"], record)
                    records.append(record)
                    print(
                        f"[{(time.time() - wall) / 60:6.1f} min] {cell} "
                        f"{config:7s} seed {seed}: test acc. "
                        f"{100 * record['test_accuracy']:.2f}%  "
                        f"{record['seconds']:.0f} s "
                        f"({1000 * record['seconds_per_step']:.0f} ms/step, "
                        f"load {record['load_average'][0]})",
                        flush=True,
                    )
                    build_report(paths, records, teachers, args.smoke)
    build_report(paths, records, teachers, args.smoke)
    print(f"\ndone in {(time.time() - wall) / 60:.1f} min; wrote {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
