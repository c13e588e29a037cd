"""Distillation into a new domain: clothes on natural-image backgrounds.

The domain-shift pair, built from the offline data sets:

- **source** (labelled): Fashion-MNIST training images 0..29,999, as they are;
- **target** (unlabelled in training): Fashion-MNIST training images
  30,000..59,999, each composited onto a CIFAR-10 training image made grey
  and resized to 28x28 (`keras_kd.data.domains.on_backgrounds`: the
  brighter of the garment and the background scaled by `BACKGROUND`), so
  the garments are the same kind of thing and the pixels around them are
  not;
- **target test**: the Fashion-MNIST test images on CIFAR-10 test
  backgrounds (labels used only to score).

A source-only teacher (trained once, cached) is well above chance on the
target and well below its source accuracy (both printed; `--shift` prints
its target accuracy for several background strengths, from which
`BACKGROUND` was chosen). Then, for each
seed, with the same student initialisation, optimizer, batch size and number
of steps: the student trained on the source alone (`alone`), KD from the
source-only teacher on the source alone (`kd_source`), and the joint method
(`joint`: `keras_kd.procedures.DomainAdaptiveDistiller`, which adapts a copy
of the teacher to the target with MMD while distilling the student on both
domains). Reports target test accuracy mean +- std over seeds, paired gains,
and the source-only teacher beside each adapted teacher.

    python benchmarks/domain_adaptation.py --data-dir DIR
    python benchmarks/domain_adaptation.py --smoke --data-dir DIR
    python benchmarks/domain_adaptation.py --shift --data-dir DIR  # the
        # source-only teacher on the target for several background strengths

Runs are appended to `results/domain_adaptation.jsonl` at once; a stopped
run resumes. `results/domain_adaptation.png` shows test garments of each
class in both domains.
"""

import argparse
import datetime
import json
import os
import time

import common

common.quiet_tensorflow()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from accuracy import CosineAfterHold  # noqa: E402
from accuracy import cross_entropy  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.data.domains import BACKGROUND_STRENGTH  # noqa: E402
from keras_kd.data.domains import grey_resized  # noqa: E402
from keras_kd.data.domains import on_backgrounds  # noqa: E402
from keras_kd.models import conv_net  # noqa: E402
from keras_kd.procedures import DomainAdaptiveDistiller  # noqa: E402
from keras_kd.procedures import paired_domains  # noqa: E402
from keras_kd.procedures import trainable_copy  # noqa: E402

ARMS = ("alone", "kd_source", "joint")
BACKGROUND = BACKGROUND_STRENGTH  # 0.4 of the garment's brightness
TEACHER = dict(widths=(32, 64, 128), steps=900, batch=128, lr=2e-3)
STUDENT_WIDTHS = (8, 16, 32)
SETTINGS = {
    "full": dict(steps=600, epochs=6, batch=64, teacher_steps=900),
    "smoke": dict(steps=20, epochs=2, batch=64, teacher_steps=20),
}
LR = 2e-3
SEEDS = (0, 1, 2)


def load(data_dir, smoke, strength=BACKGROUND):
    fm = keras_kd.data.load_arrays(os.path.join(data_dir, "fashion_mnist.npz"))
    cifar = keras_kd.data.load_arrays(os.path.join(data_dir, "cifar10.npz"))
    x = fm["x_train"].astype("float32")
    y = np.asarray(fm["y_train"])
    half = len(x) // 2
    rng = np.random.default_rng(0)
    train_bg = grey_resized(
        cifar["x_train"][rng.permutation(len(cifar["x_train"]))], (28, 28)
    )
    test_bg = grey_resized(cifar["x_test"], (28, 28))
    target = on_backgrounds(x[half:], train_bg[: len(x) - half], strength)
    test = on_backgrounds(
        fm["x_test"].astype("float32"), test_bg[: len(fm["x_test"])], strength
    )
    data = dict(
        source=(x[:half], y[:half]),
        target=target,
        source_test=(fm["x_test"].astype("float32"), np.asarray(fm["y_test"])),
        target_test=(test, np.asarray(fm["y_test"])),
    )
    if smoke:
        data["source"] = (x[:2000], y[:2000])
        data["target"] = target[:2000]
        data["source_test"] = tuple(a[:500] for a in data["source_test"])
        data["target_test"] = tuple(a[:500] for a in data["target_test"])
    data["stats"] = keras_kd.data.channel_stats(
        np.clip(np.round(data["source"][0]), 0, 255).astype("uint8")
    )
    return data


def accuracy(model, images, labels):
    logits = model.predict(images, batch_size=500, verbose=0)
    return float(np.mean(np.argmax(logits, -1) == labels))


def batches(x, y, steps, batch, seed):
    rng = np.random.default_rng(seed)
    order = common.repeated_permutations(rng, len(y), steps * batch)
    if isinstance(x, dict):
        return {k: v[order] for k, v in x.items()}, y[order]
    return x[order], y[order]


def teacher_for(data, settings, cache, smoke):
    path = os.path.join(
        cache,
        f"domain_teacher_{settings['teacher_steps']}"
        f"{'_smoke' if smoke else ''}.keras",
    )
    if os.path.exists(path):
        print(f"teacher: cached {path}", flush=True)
        return keras.saving.load_model(path, compile=False)
    keras.utils.set_random_seed(0)
    mean, std = data["stats"]
    teacher = conv_net(
        (28, 28, 1), 10, TEACHER["widths"], mean=mean, std=std, name="teacher"
    )
    steps = settings["teacher_steps"]
    teacher.compile(
        optimizer=keras.optimizers.Adam(
            CosineAfterHold(TEACHER["lr"], 0, steps)
        ),
        loss=cross_entropy(),
    )
    x, y = batches(*data["source"], steps, TEACHER["batch"], 0)
    start = time.time()
    teacher.fit(x, y, batch_size=TEACHER["batch"], epochs=1, verbose=2)
    print(f"teacher: trained in {time.time() - start:.0f} s", flush=True)
    os.makedirs(cache, exist_ok=True)
    teacher.save(path)
    return teacher


def run_arm(arm, seed, data, teacher, settings):
    keras.utils.set_random_seed(seed)
    mean, std = data["stats"]
    student = conv_net(
        (28, 28, 1), 10, STUDENT_WIDTHS, mean=mean, std=std, name="student"
    )
    steps, batch = settings["steps"], settings["batch"]
    optimizer = keras.optimizers.Adam(CosineAfterHold(LR, 0, steps))
    record = dict(arm=arm, seed=seed, steps=steps)
    start = time.time()
    if arm in ("alone", "kd_source"):
        x, y = batches(*data["source"], steps, batch, seed)
        if arm == "alone":
            model = student
        else:
            model = keras_kd.Distiller(
                teacher, student, [keras_kd.losses.LogitsDistillation()]
            )
        model.compile(optimizer=optimizer, loss=cross_entropy())
        model.fit(x, y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    else:
        adapted = trainable_copy(teacher, "adapted_teacher")
        paired, labels = paired_domains(
            *data["source"], data["target"], seed=seed
        )
        x, y = batches(paired, labels, steps, batch, seed)
        model = DomainAdaptiveDistiller(adapted, student)
        model.compile(optimizer=optimizer)
        # One fit, `epochs` Keras epochs walking through the prepared
        # batches (the distillation weight grows per epoch).
        model.fit(
            x,
            y,
            batch_size=batch,
            epochs=settings["epochs"],
            steps_per_epoch=steps // settings["epochs"],
            shuffle=False,
            verbose=0,
        )
        record["teacher_target"] = accuracy(adapted, *data["target_test"])
        record["teacher_source"] = accuracy(adapted, *data["source_test"])
    record["seconds"] = time.time() - start
    record["target"] = accuracy(student, *data["target_test"])
    record["source"] = accuracy(student, *data["source_test"])
    return record


def shift(args):
    """The source-only teacher on the target test set, per background
    strength: how far the target lies from the source."""
    settings = SETTINGS["smoke" if args.smoke else "full"]
    cache = os.path.join(common.RESULTS_DIR, "cache")
    data = load(args.data_dir, args.smoke)
    teacher = teacher_for(data, settings, cache, args.smoke)
    print(f"source test: {100 * accuracy(teacher, *data['source_test']):.2f}%")
    for strength in (0.4, 0.6, 0.8, 1.0):
        test = load(args.data_dir, args.smoke, strength)["target_test"]
        print(f"background x{strength}: {100 * accuracy(teacher, *test):.2f}%")


def report(records, meta, output, started):
    by_arm = {a: {} for a in ARMS}
    for r in records:
        by_arm[r["arm"]][r["seed"]] = r
    rows = []
    for arm in ARMS:
        runs = by_arm[arm].values()
        target = common.mean_std([r["target"] for r in runs])
        source = common.mean_std([r["source"] for r in runs])
        rows.append(
            [
                arm,
                f"{100 * target[0]:.2f} ± {100 * target[1]:.2f}",
                f"{100 * source[0]:.2f} ± {100 * source[1]:.2f}",
                str(len(by_arm[arm])),
            ]
        )
    gains = []
    for treated, baseline in (
        ("joint", "alone"),
        ("joint", "kd_source"),
        ("kd_source", "alone"),
    ):
        mean, std, n = common.paired_gain(
            {k: r["target"] for k, r in by_arm[treated].items()},
            {k: r["target"] for k, r in by_arm[baseline].items()},
        )
        gains.append(
            [
                f"{treated} − {baseline}",
                f"{100 * mean:+.2f} ± {100 * std:.2f}",
                "yes" if n > 1 and abs(mean) > std else "no (inside the noise)",
                str(n),
            ]
        )
    adapted = common.mean_std(
        [r["teacher_target"] for r in by_arm["joint"].values()]
    )
    adapted_source = common.mean_std(
        [r["teacher_source"] for r in by_arm["joint"].values()]
    )
    lines = common.header_markdown(
        "Distillation with domain adaptation: Fashion-MNIST onto natural-"
        "image backgrounds",
        started,
    )
    lines += [
        "Source: Fashion-MNIST training images 0..29,999. Target: training "
        "images 30,000..59,999 on grey CIFAR-10 training backgrounds (the "
        f"brighter of garment and {BACKGROUND} x background), unlabelled. "
        "Target test: the Fashion-MNIST test set on CIFAR-10 test "
        "backgrounds.",
        "",
        f"Teacher `conv_net{TEACHER['widths']}` trained on the source only: "
        f"{100 * meta['teacher_source']:.2f}% on the source test set, "
        f"{100 * meta['teacher_target']:.2f}% on the target test set. "
        f"Adapted by the joint method: {100 * adapted[0]:.2f} ± "
        f"{100 * adapted[1]:.2f}% on the target "
        f"({100 * adapted_source[0]:.2f} ± {100 * adapted_source[1]:.2f}% "
        "on the source).",
        "",
        f"Students `conv_net{STUDENT_WIDTHS}`: "
        f"{records[0]['steps'] if records else '?'} steps of batch "
        f"{SETTINGS['full']['batch']}, Adam {LR} with a cosine to 0, same "
        "initialisation per seed. The joint method runs "
        f"{SETTINGS['full']['epochs']} Keras epochs over those steps "
        "(library defaults: T 20, alpha 0.3, beta 0.1 -> 0.9, DANN's ramp "
        "of the MMD weight over the whole run).",
        "",
        "Accuracy (%), mean ± std over seeds:",
        "",
    ]
    lines += common.markdown_table(
        ["student", "target test", "source test", "seeds"], rows
    )
    lines += ["", "Paired gains on the target test set (points):", ""]
    lines += common.markdown_table(
        ["comparison", "gain", "beyond the noise", "seeds"], gains
    )
    common.write_text(output + ".md", lines)
    with open(output + ".json", "w", encoding="utf-8") as f:
        json.dump(
            {"runs": records, "teacher": meta}, f, indent=1, sort_keys=True
        )
    print("\n".join(lines), flush=True)


def figure(data, output, per_row=8):
    """The same test garments in both domains: `<output>.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = keras_kd.data.load_bundled()["class_names"]
    labels = data["source_test"][1]
    # The first test image of each of `per_row` classes.
    chosen = [int(np.flatnonzero(labels == c)[0]) for c in range(per_row)]
    rows = [
        ("source", data["source_test"][0]),
        ("target", data["target_test"][0]),
    ]
    fig, axes = plt.subplots(
        2, per_row, figsize=(per_row * 1.1, 2 * 1.25), squeeze=False
    )
    for r, (name, images) in enumerate(rows):
        for c, i in enumerate(chosen):
            ax = axes[r, c]
            ax.imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(str(names[labels[i]]), fontsize=7)
        axes[r, 0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    plt.savefig(output + ".png", dpi=110)
    plt.close(fig)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--shift", action="store_true")
    args = parser.parse_args(argv)
    if args.shift:
        return shift(args)
    started = datetime.datetime.now(datetime.timezone.utc)
    settings = SETTINGS["smoke" if args.smoke else "full"]
    output = os.path.join(
        common.RESULTS_DIR,
        "domain_adaptation" + ("_smoke" if args.smoke else ""),
    )
    cache = os.path.join(common.RESULTS_DIR, "cache")
    data = load(args.data_dir, args.smoke)
    figure(data, output)
    teacher = teacher_for(data, settings, cache, args.smoke)
    meta = dict(
        teacher_source=accuracy(teacher, *data["source_test"]),
        teacher_target=accuracy(teacher, *data["target_test"]),
    )
    print(
        f"teacher: source {100 * meta['teacher_source']:.2f}%, target "
        f"{100 * meta['teacher_target']:.2f}%",
        flush=True,
    )
    records = [
        r
        for r in common.read_jsonl(output + ".jsonl")
        if r.get("background") == BACKGROUND
    ]
    done = {(r["arm"], r["seed"]) for r in records}
    for seed in args.seeds:
        for arm in ARMS:
            if (arm, seed) in done:
                continue
            print(f"run {arm} seed {seed}", flush=True)
            record = run_arm(arm, seed, data, teacher, settings)
            record.update(
                background=BACKGROUND,
                load_average=common.load_average(),
                command=common.command_line(),
            )
            common.append_jsonl(output + ".jsonl", record)
            records.append(record)
            print(
                f"  {arm} seed {seed}: target {100 * record['target']:.2f}% "
                f"in {record['seconds']:.0f} s",
                flush=True,
            )
            report(records, meta, output, started)
    report(records, meta, output, started)


if __name__ == "__main__":
    main()
