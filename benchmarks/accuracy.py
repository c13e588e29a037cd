"""CIFAR-10 reproduction of the KD / AB / NST / AT results with keras_kd.

Trains a ResNet teacher once (cached under `benchmarks/results/cache/`), then
a several-times-smaller ResNet student alone and distilled with each method,
for several seeds, in two regimes:

- `full`: every training image, a short schedule (a fixed number of steps);
- `reduced`: 10% of the training images, class-balanced (the regime where
  the AB paper reports its largest gains), the same number of steps.

Prints a table of test accuracy (mean +- std over seeds) and writes it, with
every single run, the exact command, the machine and the versions, to
`benchmarks/results/accuracy[_<scale>].md` (rewritten after every run, so a
partial run is visible), `.jsonl` (one line per run) and `.png`.

    # ~45 min on 2 CPU cores:
    python benchmarks/accuracy.py path/to/cifar10.npz
    # 1-2 min pipeline check:
    python benchmarks/accuracy.py path/to/cifar10.npz --smoke
    # GPU: hours
    python benchmarks/accuracy.py path/to/cifar10.npz --scale full

The archive holds `x_train, y_train, x_test, y_test` (uint8 NHWC, int labels),
as read by `keras_kd.data.load_arrays`.

Loss settings are keras_kd 0.1's defaults, the official code's, kept here
so that the committed results reproduce: KD T=4 weight 1 (with T^2), AB
`preset="paper"` (3e-3 on the sum, pair weights 1/4, 1/2, 1) and the
two-stage schedule (AB initialisation, then cross-entropy [+ KD]) with one
optimizer state across both stages, NST `preset="paper"` (50, polynomial
kernel), AT `preset="paper"` (1000). The library defaults are measured by
`panel.py`. AB and NST read the pre-activation
(`stage{i}_add` outputs), AT the post-activation (`stage{i}_relu`).
"""

import argparse
import datetime
import hashlib
import json
import math
import os
import sys
import time

import common

common.quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import losses  # noqa: E402
from keras_kd.models import resnet  # noqa: E402

# name -> description; the order of the table.
CONFIGS = {
    "student": "student alone (cross-entropy)",
    "kd": "KD (T=4, weight 1)",
    "ab": "AB, 3 pairs (init stage, then CE)",
    "nst": "NST (poly kernel, 50), last stage",
    "ab_kd": "AB init, then CE + KD",
    "nst_kd": "NST + KD",
    "at": "AT (1000), 3 stages",
}
REGIMES = ("full", "reduced")

# Sizes and schedules. `steps` is per student run, split in `chunks` Keras
# "epochs" (AB initialisation adds `ab_init_chunks` more); the learning rate
# follows a cosine over the `steps` (constant during AB initialisation).
SCALES = {
    "smoke": dict(
        teacher_widths=(16, 32, 64),
        teacher_blocks=1,
        teacher_steps=20,
        student_widths=(8, 16, 32),
        student_blocks=1,
        train_images=2000,
        test_images=1000,
        reduced_fraction=0.1,
        steps=6,
        chunks=2,
        ab_init_chunks=1,
        seeds=1,
        batch_size=64,
    ),
    "default": dict(
        teacher_widths=(16, 32, 64),
        teacher_blocks=1,
        teacher_steps=1170,
        student_widths=(8, 16, 32),
        student_blocks=1,
        train_images=None,
        test_images=None,
        reduced_fraction=0.1,
        steps=250,
        chunks=5,
        ab_init_chunks=1,
        seeds=3,
        batch_size=128,
    ),
    "full": dict(  # for a GPU: ResNet-32x2 teacher, ResNet-8 student.
        teacher_widths=(32, 64, 128),
        teacher_blocks=5,
        teacher_steps=390 * 160,
        student_widths=(16, 32, 64),
        student_blocks=1,
        train_images=None,
        test_images=None,
        reduced_fraction=0.1,
        steps=390 * 120,
        chunks=120,
        ab_init_chunks=15,
        seeds=5,
        batch_size=128,
    ),
}
LEARNING_RATE = 0.1
MOMENTUM = 0.9
WEIGHT_DECAY = 5e-4
TEACHER_SEED = 0
SUBSET_SEED = 0


class CosineAfterHold(keras.optimizers.schedules.LearningRateSchedule):
    """Constant `base` for `hold` steps, then a cosine from `base` to 0."""

    def __init__(self, base, hold, decay_steps):
        self.base = float(base)
        self.hold = int(hold)
        self.decay_steps = int(decay_steps)

    def __call__(self, step):
        ops = keras.ops
        t = ops.clip(
            (ops.cast(step, "float32") - self.hold) / self.decay_steps, 0.0, 1.0
        )
        return self.base * 0.5 * (1.0 + ops.cos(math.pi * t))

    def get_config(self):
        return {
            "base": self.base,
            "hold": self.hold,
            "decay_steps": self.decay_steps,
        }


def sgd(hold, decay_steps):
    return keras.optimizers.SGD(
        CosineAfterHold(LEARNING_RATE, hold, decay_steps),
        momentum=MOMENTUM,
        nesterov=True,
        weight_decay=WEIGHT_DECAY,
    )


def cross_entropy():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def train_dataset(x, y, stats, batch_size, seed):
    ds = keras_kd.data.make_dataset(
        x,
        y,
        batch_size=batch_size,
        training=True,
        augment="crop_flip",
        mean=stats[0],
        std=stats[1],
        seed=seed,
        drop_remainder=True,
    )
    return ds.repeat()


def evaluate(model, test):
    model.compile(loss=cross_entropy(), metrics=["accuracy"])
    return float(model.evaluate(test, verbose=0, return_dict=True)["accuracy"])


def teacher_model(s, arrays, stats, test, cache_dir, data_key):
    settings = {
        k: s[k]
        for k in (
            "teacher_widths",
            "teacher_blocks",
            "teacher_steps",
            "train_images",
            "batch_size",
        )
    }
    settings.update(
        data=data_key, seed=TEACHER_SEED, lr=LEARNING_RATE, wd=WEIGHT_DECAY
    )
    key = hashlib.sha256(
        json.dumps(settings, sort_keys=True).encode()
    ).hexdigest()[:12]
    path = os.path.join(cache_dir, f"teacher_{key}.keras")
    return common.cached_model(
        path,
        lambda: train_teacher(s, arrays, stats, test, settings),
        "teacher",
    )


def train_teacher(s, arrays, stats, test, settings):
    """`(teacher, meta)`: the ResNet teacher trained from its seed."""
    keras.utils.set_random_seed(TEACHER_SEED)
    teacher = resnet(
        arrays["x_train"].shape[1:],
        10,
        widths=s["teacher_widths"],
        blocks=s["teacher_blocks"],
        name="teacher",
    )
    teacher.compile(
        optimizer=sgd(0, s["teacher_steps"]),
        loss=cross_entropy(),
        metrics=["accuracy"],
    )
    chunks = 4
    start = time.time()
    teacher.fit(
        train_dataset(
            arrays["x_train"],
            arrays["y_train"],
            stats,
            s["batch_size"],
            TEACHER_SEED,
        ),
        steps_per_epoch=s["teacher_steps"] // chunks,
        epochs=chunks,
        verbose=2,
    )
    seconds = time.time() - start
    return teacher, dict(
        settings,
        test_accuracy=evaluate(teacher, test),
        train_seconds=seconds,
        params=teacher.count_params(),
    )


def distillation_losses(config):
    adds = ["stage1_add", "stage2_add", "stage3_add"]
    relus = ["stage1_relu", "stage2_relu", "stage3_relu"]
    outputs = dict(teacher_tap="output", student_tap="output")
    ab = losses.get("ab", adds, adds, preset="paper", **outputs)
    nst = losses.get(
        "nst", "stage3_add", "stage3_add", preset="paper", **outputs
    )
    kd = losses.get("kd", temperature=4.0)
    return {
        "kd": [kd],
        "ab": [ab],
        "nst": [nst],
        "ab_kd": [ab, kd],
        "nst_kd": [nst, kd],
        "at": [losses.get("at", relus, relus, preset="paper")],
    }[config]


def run_one(config, teacher, s, x, y, stats, test, seed):
    keras.utils.set_random_seed(seed)
    student = resnet(
        x.shape[1:],
        10,
        widths=s["student_widths"],
        blocks=s["student_blocks"],
        name="student",
    )
    chunk = s["steps"] // s["chunks"]
    init = s["ab_init_chunks"] if config.startswith("ab") else 0
    optimizer = sgd(init * chunk, s["chunks"] * chunk)
    callbacks = []
    if config == "student":
        model = student
        model.compile(optimizer=optimizer, loss=cross_entropy())
    else:
        model = keras_kd.Distiller(
            teacher, student, distillation_losses(config)
        )
        model.compile(optimizer=optimizer, loss=cross_entropy())
        if init:
            callbacks.append(
                keras_kd.callbacks.ActivationBoundarySchedule(
                    init_epochs=init, restart_optimizer=False
                )
            )
    start = time.time()
    history = model.fit(
        train_dataset(x, y, stats, s["batch_size"], seed),
        steps_per_epoch=chunk,
        epochs=init + s["chunks"],
        callbacks=callbacks,
        verbose=0,
    )
    seconds = time.time() - start
    accuracy = evaluate(student, test)
    last = {k: float(v[-1]) for k, v in history.history.items()}
    return accuracy, seconds, last


def mean_std(values):
    if not values:
        return ""
    values = 100 * np.asarray(values)
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def summary_rows(records):
    rows = []
    for config, description in CONFIGS.items():
        row = [config, description]
        for regime in REGIMES:
            acc = [
                r["test_accuracy"]
                for r in records
                if r["config"] == config and r["regime"] == regime
            ]
            row += [mean_std(acc), len(acc)]
        rows.append(row)
    return rows


HEADER = [
    "config",
    "method",
    "full: test acc. %",
    "n",
    "reduced 10%: test acc. %",
    "n",
]


def write_results(
    paths, s, started, teacher_meta, data_info, records, done, wall
):
    status = (
        f"**Complete**: {len(records)} runs, wall time {wall / 60:.1f} min "
        "(teacher included, or loaded from the cache)."
        if done
        else f"**Partial** (run in progress): {len(records)} runs so far, "
        f"{wall / 60:.1f} min elapsed."
    )
    lines = common.header_markdown(
        "CIFAR-10 accuracy: keras_kd distillation methods",
        started,
        [status, ""],
    )
    lines += [
        "## Setup",
        "",
        f"- Data: {data_info}.",
        f"- Teacher: `resnet(widths={s['teacher_widths']}, "
        f"blocks={s['teacher_blocks']})`, "
        f"{teacher_meta['params']:,} parameters, {s['teacher_steps']} steps of "
        f"batch {s['batch_size']} on the full training set, test accuracy "
        f"**{100 * teacher_meta['test_accuracy']:.2f}%** "
        f"(seed {TEACHER_SEED}).",
        f"- Student: `resnet(widths={s['student_widths']}, "
        f"blocks={s['student_blocks']})`, "
        f"{data_info_student_params(s):,} parameters.",
        f"- Each student run: {s['steps']} steps of batch {s['batch_size']} "
        f"(pad-4 crop + flip), SGD lr {LEARNING_RATE} Nesterov momentum "
        f"{MOMENTUM}, "
        f"decoupled weight decay {WEIGHT_DECAY}, cosine to 0 over the "
        f"{s['steps']} steps; "
        "AB configs first run "
        f"{s['ab_init_chunks'] * (s['steps'] // s['chunks'])} extra "
        "steps of AB initialisation (AB loss only, constant lr), as "
        "RepDistiller's "
        "30 initialisation epochs come before its 240.",
        "- Regimes: `full` draws batches from every training image; `reduced` "
        "from a "
        f"class-balanced {100 * s['reduced_fraction']:.0f}% subset (fixed, "
        "subset seed "
        f"{SUBSET_SEED}), same number of steps. The teacher always saw the "
        "full set.",
        f"- Seeds {', '.join(str(i) for i in range(s['seeds']))} (student "
        "initialisation, "
        "data order, augmentation); mean ± sample std over seeds.",
        "- Loss weights: keras_kd 0.1's defaults (official code; "
        "preset='paper'): KD T=4 weight 1 "
        "(T²·KL); AB 3e-3, pair weights 1/4, 1/2, 1 on `stage{1,2,3}_add` "
        "(pre-activation), connectors 1x1 conv + BN; NST 50, polynomial kernel "
        "(d=2, c=0) on `stage3_add` (pre-activation); AT 1000 on "
        "`stage{1,2,3}_relu`. "
        "Task loss weight 1.",
        "",
        "## Test accuracy (%)",
        "",
    ]
    lines += common.markdown_table(HEADER, summary_rows(records))
    lines += ["", "## Every run", ""]
    lines += common.markdown_table(
        [
            "regime",
            "config",
            "seed",
            "test acc. %",
            "train s",
            "last logged losses",
        ],
        [
            [
                r["regime"],
                r["config"],
                r["seed"],
                f"{100 * r['test_accuracy']:.2f}",
                f"{r['seconds']:.0f}",
                ", ".join(f"{k} {v:.3g}" for k, v in sorted(r["last"].items())),
            ]
            for r in records
        ],
    )
    if os.path.exists(paths["png"]):
        lines += ["", f"![accuracy]({os.path.basename(paths['png'])})"]
    common.write_text(paths["md"], lines)


def data_info_student_params(s):
    return resnet(
        (32, 32, 3), 10, widths=s["student_widths"], blocks=s["student_blocks"]
    ).count_params()


def plot(path, records, teacher_accuracy):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    fig, axes = plt.subplots(1, len(REGIMES), figsize=(11, 3.8), sharey=False)
    for ax, regime in zip(axes, REGIMES):
        names, means, stds = [], [], []
        for config in CONFIGS:
            acc = 100 * np.asarray(
                [
                    r["test_accuracy"]
                    for r in records
                    if r["config"] == config and r["regime"] == regime
                ]
            )
            if len(acc):
                names.append(config)
                means.append(acc.mean())
                stds.append(acc.std(ddof=1) if len(acc) > 1 else 0.0)
        if not names:
            continue
        colors = ["grey" if n == "student" else "C0" for n in names]
        ax.bar(names, means, yerr=stds, color=colors, capsize=3)
        ax.axhline(
            means[0] if names[0] == "student" else np.nan,
            color="grey",
            lw=0.8,
            ls="--",
        )
        lo = min(m - e for m, e in zip(means, stds))
        hi = max(m + e for m, e in zip(means, stds))
        ax.set_ylim(lo - 2, hi + 1)
        ax.set_title(f"{regime} (teacher {100 * teacher_accuracy:.1f}%)")
        ax.set_ylabel("test accuracy %")
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "data",
        help="path to a .npz archive with x_train, y_train, "
        "x_test, y_test (CIFAR-10)",
    )
    parser.add_argument(
        "--scale",
        choices=sorted(SCALES),
        default="default",
        help="sizes and schedule (default: ~45 min on 2 CPU cores; "
        "full: for a GPU)",
    )
    parser.add_argument(
        "--smoke", action="store_true", help="same as --scale smoke"
    )
    parser.add_argument(
        "--seeds", type=int, default=None, help="override the number of seeds"
    )
    parser.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help="comma-separated subset of " + ",".join(CONFIGS),
    )
    parser.add_argument("--regimes", default=",".join(REGIMES))
    parser.add_argument(
        "--output",
        default=None,
        help="results file stem (default: "
        "benchmarks/results/accuracy[_<scale>])",
    )
    args = parser.parse_args(argv)
    scale = "smoke" if args.smoke else args.scale
    s = dict(SCALES[scale])
    if args.seeds:
        s["seeds"] = args.seeds
    configs = [c for c in args.configs.split(",") if c]
    regimes = [r for r in args.regimes.split(",") if r]
    for c in configs:
        if c not in CONFIGS:
            parser.error(
                f"unknown config {c!r}; expected some of {list(CONFIGS)}"
            )
    for r in regimes:
        if r not in REGIMES:
            parser.error(
                f"unknown regime {r!r}; expected some of {list(REGIMES)}"
            )

    stem = args.output or os.path.join(
        common.RESULTS_DIR,
        "accuracy" if scale == "default" else f"accuracy_{scale}",
    )
    paths = {"md": stem + ".md", "jsonl": stem + ".jsonl", "png": stem + ".png"}
    started = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M"
    )
    wall_start = time.time()

    arrays = keras_kd.data.load_arrays(args.data)
    size = os.path.getsize(args.data)
    data_key = f"{os.path.basename(args.data)}:{size}"
    x_train, y_train = arrays["x_train"], arrays["y_train"]
    x_test, y_test = arrays["x_test"], arrays["y_test"]
    if s["train_images"]:
        x_train, y_train = keras_kd.data.balanced_subset(
            x_train, y_train, s["train_images"] / len(y_train), seed=SUBSET_SEED
        )
        arrays = dict(arrays, x_train=x_train, y_train=y_train)
    if s["test_images"]:
        x_test, y_test = x_test[: s["test_images"]], y_test[: s["test_images"]]
    stats = keras_kd.data.channel_stats(x_train)
    test = keras_kd.data.make_dataset(
        x_test, y_test, batch_size=500, mean=stats[0], std=stats[1]
    )
    reduced = keras_kd.data.balanced_subset(
        x_train, y_train, s["reduced_fraction"], seed=SUBSET_SEED
    )
    data_info = (
        f"`{os.path.basename(args.data)}`, {len(x_train):,} training images "
        f"(reduced: {len(reduced[1]):,}), {len(x_test):,} test images, "
        "normalised by the training set's channel mean and std"
    )
    print(f"scale {scale}: {json.dumps(s)}\n{data_info}", flush=True)

    teacher, teacher_meta = teacher_model(
        s,
        arrays,
        stats,
        test,
        os.path.join(common.RESULTS_DIR, "cache"),
        data_key,
    )

    records = []
    if os.path.exists(paths["jsonl"]):
        os.remove(paths["jsonl"])
    regime_data = {"full": (x_train, y_train), "reduced": reduced}
    for seed in range(s["seeds"]):
        for regime in regimes:
            x, y = regime_data[regime]
            for config in configs:
                accuracy, seconds, last = run_one(
                    config, teacher, s, x, y, stats, test, seed
                )
                record = dict(
                    regime=regime,
                    config=config,
                    seed=seed,
                    test_accuracy=accuracy,
                    seconds=seconds,
                    last=last,
                )
                records.append(record)
                with open(paths["jsonl"], "a", encoding="utf-8") as f:
                    f.write(json.dumps(record) + "\n")
                print(
                    f"[{(time.time() - wall_start) / 60:5.1f} min] seed {seed} "
                    f"{regime:7s} "
                    f"{config:8s} test accuracy {100 * accuracy:.2f}%  "
                    f"({seconds:.0f} s)",
                    flush=True,
                )
                write_results(
                    paths,
                    s,
                    started,
                    teacher_meta,
                    data_info,
                    records,
                    False,
                    time.time() - wall_start,
                )
        plot(paths["png"], records, teacher_meta["test_accuracy"])

    wall = time.time() - wall_start
    plot(paths["png"], records, teacher_meta["test_accuracy"])
    write_results(
        paths, s, started, teacher_meta, data_info, records, True, wall
    )
    print(
        f"\nteacher test accuracy {100 * teacher_meta['test_accuracy']:.2f}%; "
        f"wall time {wall / 60:.1f} min\n"
    )
    common.print_table(HEADER, summary_rows(records))
    print(f"\nwrote {paths['md']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
