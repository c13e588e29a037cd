"""Writes the README's generated tables from the method registry and the
results files in benchmarks/results/.

The blocks of README.md are generated, each between a `<!-- begin NAME -->`
and an `<!-- end NAME -->` line:

- `methods`: "which method?": one row per registered method (the registry
  in `keras_kd.losses.registry`, so a new method adds its row) and one per
  training procedure, with what it reads, its step time against each
  backend's floor (`speed.py`'s results) and its gain on the panel
  (`panel.py`'s results; "not measured" until the panel runs it);
- `results`: one row per result, each read from its results file, which
  the row names;
- `main_job`: what `keras-kd` printed, from `main_job.py`'s record;
- `guide`: "which method, where?": per panel regime, the method with the
  largest gain beyond the noise (`panel.py`'s results), and the regimes
  where none gains beyond it.

benchmarks/README.md's panel tables are generated the same way
(`PANEL_TABLES`: gain over the student alone per cell, from `panel.json`).

    python benchmarks/readme_tables.py           # rewrite both files
    python benchmarks/readme_tables.py --check   # exit 1 if one is stale
"""

import argparse
import functools
import glob
import json
import os
import re
import statistics
import sys

import common

common.quiet_tensorflow()

from keras_kd import procedures  # noqa: E402
from keras_kd.losses import registry  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
RESULTS = common.RESULTS_DIR
BACKENDS = (("tensorflow", ""), ("jax", "_jax"), ("torch", "_torch"))

# The configuration of speed.py that times each method, and the floor it
# is divided by (AB's connectors are compute the method asks for).
SPEED = {
    "kd": ("speed", "kd", "floor"),
    "ab": ("speed", "ab_kd", "floor_with_connectors"),
    "nst": ("speed", "nst_kd", "floor"),
    "at": ("speed", "at", "floor"),
    "fitnets": ("speed", "mse", "floor"),
}
# What a speed configuration runs besides the method, when not alone.
SPEED_WITH = {"ab": "with KD", "nst": "with KD"}
# Panel configurations by method: (config, label).
PANEL = {
    "kd": [("kd", "")],
    "kd_ls": [("kd_ls", "")],
    "dkd": [("dkd", "")],
    "dkd_ls": [("dkd_ls", "")],
    "ab": [("ab_kd", "with KD"), ("ab", "alone")],
    "nst": [("nst_kd", "with KD"), ("nst", "alone")],
    "at": [("at", "")],
    "fitnets": [("fitnets", "")],
    "fsp": [("fsp", "")],
    "rkd": [("rkd", "")],
    "sp": [("sp", "")],
    "pkt": [("pkt", "")],
    "crd": [("crd", "")],
}
# Training procedures (keras_kd.procedures): (name, class, what it does,
# speed and panel configuration).
PROCEDURES = [
    (
        "BoundarySupportingSamples",
        "adversarial samples near the teacher's decision boundary, "
        "distilled too",
        "bss_kd",
    ),
    (
        "RouteConstrainedOptimization",
        "the teacher's training route, easiest anchor first",
        "rco_kd",
    ),
]


def _json(name):
    path = os.path.join(RESULTS, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _runs(stem, suffix):
    """The results of a speed benchmark on one backend: every run's file
    (`speed_torch.json`, `speed_torch_run2.json`, ...)."""
    name = stem + suffix
    paths = sorted(glob.glob(os.path.join(RESULTS, name + ".json")))
    paths += sorted(glob.glob(os.path.join(RESULTS, name + "_run*.json")))
    runs = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            runs.append(json.load(f))
    return runs


def speed_ratio(stem, config, floor="floor"):
    """`{backend: median ratio over runs}` of one speed configuration."""
    ratios = {}
    for backend, suffix in BACKENDS:
        values = [
            run["medians"][config] / (run.get(floor) or run["floor"])
            for run in _runs(stem, suffix)
            if config in run.get("medians", {})
        ]
        if values:
            ratios[backend] = statistics.median(values)
    return ratios


def _ratios_text(ratios):
    if not ratios:
        return "not measured"
    return " / ".join(
        f"{ratios[b]:.2f}" if b in ratios else "–" for b, _ in BACKENDS
    )


def _method_speed(name):
    if name in SPEED:
        stem, config, floor = SPEED[name]
        text = _ratios_text(speed_ratio(stem, config, floor))
        return f"{text} ({SPEED_WITH[name]})" if name in SPEED_WITH else text
    return _ratios_text(speed_ratio("speed_methods", name))


#: A panel cell counts in the README's gains only with this many seeds.
MIN_SEEDS = 2


def panel_gain(config, panel):
    """'+2.2 (6/8)': the mean gain in points over the cells that ran
    `config` with at least `MIN_SEEDS` seeds, and in how many of them it
    lies beyond the noise."""
    cells = [
        s["gains"][config]
        for s in panel["summary"]
        if config in s.get("gains", {}) and s["gains"][config]["n"] >= MIN_SEEDS
    ]
    if not cells:
        return None
    mean = sum(c["gain"] for c in cells) / len(cells)
    better = sum(c["verdict"] == "better" for c in cells)
    worse = sum(c["verdict"].lower() == "worse" for c in cells)
    text = f"{mean:+.1f} ({better}/{len(cells)} better"
    return text + (f", {worse} worse)" if worse else ")")


GUIDE_NAMES = common.PANEL_CONFIG_NAMES


def _group(panel, group):
    return {c for c, g in panel.get("groups", {}).items() if g == group}


def guide_controls(panel):
    """Never recommended by the method guide: the student alone on function
    matching's inputs (a control), and a defaults search's variants
    (settings a user must pass; the winner becomes the default)."""
    return {"fm_alone"} | _group(panel, "search")


def options(panel):
    """Configs of options a user turns on (function matching) or passes (a
    search's variants), not of the library's defaults: left out of the
    defaults' count of worse pairs."""
    return _group(panel, "function_matching") | _group(panel, "search")


_DATA_NAMES = {"fmnist": "Fashion-MNIST", "cifar10": "CIFAR-10"}


def _regime(cell):
    train = "all" if cell["train"] == "full" else cell["train"].split()[0]
    return (
        f"{_DATA_NAMES.get(cell['data'], cell['data'])}, {train} of the "
        f"training set, {cell['optimizer'].split()[0]}, "
        f"{cell['schedule'].split(':')[0]} schedule, "
        f"{cell['student'].split(':')[0]} student"
    )


def _gain(g):
    return f"{g['gain']:+.1f} ± {g['gain_std']:.1f}"


def method_guide():
    """ "Which method, where?": per panel regime, the method with the largest
    gain beyond the noise, its share of the teacher's lead, and the regimes
    where no method gains beyond the noise."""
    panel = _json("panel")
    lines = [
        "| regime (panel cell) | teacher − alone | recommended | gain, "
        "points | share of the lead |",
        "| --- | --- | --- | --- | --- |",
    ]
    nothing = []
    controls = guide_controls(panel)
    for cell in panel["summary"]:
        lead = cell["teacher"] - cell["alone"]
        gains = {
            c: g
            for c, g in cell["gains"].items()
            if c not in controls and g["n"] >= MIN_SEEDS
        }
        better = {c: g for c, g in gains.items() if g["verdict"] == "better"}
        regime = f"{_regime(cell)} (`{cell['cell']}`)"
        if not better:
            best = max(gains, key=lambda c: gains[c]["gain"])
            g = gains[best]
            nothing.append(
                f"- {regime}: teacher ahead by {lead:.1f} points; best "
                f"{GUIDE_NAMES.get(best, best)} {_gain(g)}, inside the noise "
                f"({len(gains)} methods tried)."
            )
            continue
        best = max(better, key=lambda c: better[c]["gain"])
        g = better[best]
        lines.append(
            f"| {regime} | {lead:+.1f} | {GUIDE_NAMES.get(best, best)} | "
            f"{_gain(g)} | {100 * g['gain'] / lead:.0f}% |"
        )
    if nothing:
        lines += ["", "Where no method gained beyond the noise:", "", *nothing]
    return lines


def _reads(method):
    taps = registry.default_taps(method.name)
    level = getattr(method.cls, "level", "example")
    if not taps:
        what = "logits"
    elif level == "batch":
        what = "features, across the batch"
    else:
        what = "features"
    requires = [r.replace("_", " ") for r in method.cls.requires]
    return ", ".join([what, *requires])


def _with_kd(gain):
    return f"{gain} with KD" if gain else "not on the panel yet"


def methods_table():
    panel = _json("panel")
    lines = [
        "| method | name | what it transfers | reads | step × floor, "
        "TF / JAX / PyTorch | panel gain, points (cells better) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for method in registry.methods():
        gains = [
            (panel_gain(config, panel), label)
            for config, label in PANEL.get(method.name, [])
        ]
        gain = (
            "; ".join(f"{g} {label}".strip() for g, label in gains if g)
            or "not on the panel yet"
        )
        summary = (
            method.summary.split(": ", 1)[-1]
            if method.fixed
            else (method.summary)
        )
        title = method.cls.__name__
        if method.fixed:
            title += (
                "("
                + ", ".join(f"{k}={v!r}" for k, v in method.fixed.items())
                + ")"
            )
        lines.append(
            f"| `{title}` | `{method.name}` | {summary} | "
            f"{_reads(method)} | {_method_speed(method.name)} | {gain} |"
        )
    for name, what, config in PROCEDURES:
        cls = getattr(procedures, name)
        reads = ["logits"] if cls.needs_logits else []
        reads += [r.replace("_", " ") for r in cls.requires]
        if name == "RouteConstrainedOptimization":
            reads.append("the teacher's checkpoints")
        lines.append(
            f"| `procedures.{name}` | procedure | {what} | "
            f"{', '.join(reads) or '—'} | "
            f"{_ratios_text(speed_ratio('speed_procedures', config))} "
            f"(with KD) | {_with_kd(panel_gain(config, panel))} |"
        )
    fm_gain = _with_kd(panel_gain("fm_kd", panel))
    fm_sp = panel_gain("fm_sp", panel)
    if fm_sp:
        fm_gain += f"; {fm_sp} with SP"
    lines.append(
        "| `FunctionMatching(mixup_alpha=1.0)` | option | the same batch, "
        "augmented inside the step (crops, flips, mixup), for both networks "
        "| inputs | "
        + _ratios_text(speed_ratio("speed_function_matching", "fm_kd"))
        + " (with KD) | "
        + fm_gain
        + " |"
    )
    return lines


def _main_job_text():
    with open(os.path.join(RESULTS, "main_job.md"), encoding="utf-8") as f:
        return f.read()


def main_job_printout():
    """What `keras-kd` printed, as recorded by main_job.py."""
    text = _main_job_text()
    printout = re.search(r"^```\n(keras-kd:.*?)^```", text, re.S | re.M)
    return ["```", *printout.group(1).rstrip().splitlines(), "```"]


def _main_job():
    text = _main_job_text()

    def line(label):
        match = re.search(rf"^\s*{label}\s+(.+)$", text, re.M)
        return match.group(1).strip() if match else "?"

    alone = line("student alone").split("  ")[0]
    distilled = line("student distilled").split("  ")[0]
    gain = line("gain").split(" (")[0]
    wall = re.search(r"Wall time (\d+) s", text).group(1)
    return (
        "the main job (`keras-kd`: Fashion-MNIST subset, KD, 3 seeds)",
        f"student alone {alone}, distilled {distilled}: gain {gain}, "
        f"beyond the noise; {wall} s on 2 CPU cores, start-up included",
        "main_job.md",
    )


def _panel():
    panel = _json("panel")
    gains = {c: panel_gain(c, panel) for c in ("kd", "ab_kd", "nst_kd")}
    left_out = options(panel)
    pairs = [
        g
        for s in panel["summary"]
        for c, g in s["gains"].items()
        if c not in left_out and g["n"] >= MIN_SEEDS
    ]
    below = sum(g["verdict"].lower() == "worse" for g in pairs)
    runs = len(pairs)
    return (
        f"the panel: {len(panel['summary'])} training regimes, 3 seeds, "
        "library defaults",
        f"mean gain KD {gains['kd']}, AB + KD {gains['ab_kd']}, NST + KD "
        f"{gains['nst_kd']}; {below} of {runs} method-regime pairs worse "
        "than the student alone",
        "panel.md",
    )


def _speed():
    kd = speed_ratio("speed", "kd")
    keras_feature = speed_ratio("speed", "keras_feature")
    ours = speed_ratio("speed", "mse")
    return (
        "step time, ResNet-32 → ResNet-8, batch 128, TF / JAX / PyTorch",
        f"KD {_ratios_text(kd)} × the floor; a FitNets-style MSE on one "
        f"feature pair {_ratios_text(ours)}, `keras.distillation`'s "
        f"FeatureDistillation on the same pair {_ratios_text(keras_feature)}",
        "speed_backends.md",
    )


def _export():
    path = os.path.join(RESULTS, "export.md")
    with open(path, encoding="utf-8") as f:
        rows = {
            cells[1].strip(): [c.strip() for c in cells[2:-1]]
            for cells in (
                line.split("|") for line in f if line.startswith("| tflite")
            )
        }
    size, diff, agreement = rows["tflite_int8"]
    f32 = rows["tflite_float32"]
    return (
        "export of a small student",
        f"TFLite float32 within {f32[1]} of Keras; int8 {size}, top-1 "
        f"agreement {agreement}",
        "export.md",
    )


def _points(pair):
    mean, std = pair
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


_DATA_FREE = {  # data set: (its name, the other data set's images)
    "fmnist": ("Fashion-MNIST", "CIFAR-10 images"),
    "cifar10": ("CIFAR-10", "Fashion-MNIST images"),
}


def _data_free(dataset):
    """The data-free row of `dataset`, once every arm has all its seeds."""
    result = _json(f"data_free_{dataset}")
    if result is None:
        return None
    seeds = max(len(runs) for runs in result["arms"].values())
    if seeds < 3 or any(len(r) < seeds for r in result["arms"].values()):
        return None  # still running
    arms = {
        arm: common.mean_std(list(runs.values()))
        for arm, runs in result["arms"].items()
    }
    share = result["share_recovered"]
    name, other = _DATA_FREE[dataset]
    return (
        f"data-free distillation: {name}, KD on images synthesised "
        f"from the teacher only (DeepInversion), {seeds} seeds",
        f"{_points(arms['data_free'])}% test accuracy; KD on the real images "
        f"{_points(arms['kd_real'])}%, floors: KD on noise "
        f"{_points(arms['kd_noise'])}%, on {other} "
        f"{_points(arms['kd_other'])}%; {100 * share[0]:.0f}% of real-data "
        "KD recovered",
        f"data_free_{dataset}.md",
    )


def _domain_adaptation():
    result = _json("domain_adaptation")
    if result is None:
        return None
    by_arm = {}
    for run in result["runs"]:
        by_arm.setdefault(run["arm"], []).append(run)
    if not all(by_arm.get(arm) for arm in ("alone", "kd_source", "joint")):
        return None
    target = {
        arm: common.mean_std([r["target"] for r in runs])
        for arm, runs in by_arm.items()
    }
    adapted = common.mean_std([r["teacher_target"] for r in by_arm["joint"]])
    return (
        "distillation into a new domain: Fashion-MNIST onto natural-image "
        "backgrounds, unlabelled target, 3 seeds",
        f"student on the target: joint adaptation + KD "
        f"{_points(target['joint'])}%, KD on the source "
        f"{_points(target['kd_source'])}%, source alone "
        f"{_points(target['alone'])}%; teacher "
        f"{100 * result['teacher']['teacher_target']:.1f}% before adaptation,"
        f" {_points(adapted)}% after",
        "domain_adaptation.md",
    )


#: The results block: one function per row, each reading its own file (a
#: row whose file does not exist yet is left out).
RESULT_ROWS = [
    _main_job,
    _panel,
    _speed,
    _export,
    lambda: _data_free("fmnist"),
    lambda: _data_free("cifar10"),
    _domain_adaptation,
]


def results_table():
    lines = ["| result | measured | source |", "| --- | --- | --- |"]
    for row in RESULT_ROWS:
        cells = row()
        if cells is None:
            continue
        what, measured, source = cells
        lines.append(
            f"| {what} | {measured} | "
            f"[`{source}`](benchmarks/results/{source}) |"
        )
    return lines


def test_commands_table():
    """The README's test commands as fast_check.py measured them."""
    lines = [
        "| command | backends | environment | install | tests | result |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for name, label in (("fast_check", "fast check"), ("full", "full")):
        name = "full_suite" if name == "full" else name
        path = os.path.join(RESULTS, name + ".md")
        if not os.path.exists(path):
            lines.append(f"| {label} | not measured yet | | | | |")
            continue
        with open(path, encoding="utf-8") as f:
            text = f.read()
        install = re.search(r"^\| install \|.*\| (\d+) s", text, re.M)
        tests = re.search(r"^\| tests \|.*\| (\d+) s \|", text, re.M)
        result = re.search(r"^Tests: `(.*)`", text, re.M)
        backends = re.search(r"^Backends installed: (.*?)\. ", text, re.M)
        size = re.search(r"environment: (\d+) MiB", text)
        lines.append(
            f"| {label} | {backends.group(1)} | "
            f"{int(size.group(1)) / 1024:.1f} GiB | {install.group(1)} s "
            f"(cached) | {int(tests.group(1)) / 60:.1f} min | "
            f"{result.group(1)} ([`{name}.md`](benchmarks/results/{name}.md)) |"
        )
    return lines


BLOCKS = {
    "test_commands": test_commands_table,
    "main_job": main_job_printout,
    "methods": methods_table,
    "guide": method_guide,
    "results": results_table,
}

# benchmarks/README.md's panel tables: (which cells of panel.json's
# summary, configs), gain over the student alone per cell.
PANEL_TABLES = {
    "panel_function_matching": (
        lambda cell: "fm_alone" in cell["gains"],  # where it ran
        ["kd", "fm_alone", "fm_kd", "fm_kd_mild", "fm_sp"],
    ),
    "panel_short": (
        lambda cell: cell["schedule"].startswith("short"),
        "kd nst_kd ab_kd dkd dkd_ls kd_ls nst_dkd fitnets fsp rkd sp pkt crd "
        "rco_kd bss_kd".split(),
    ),
    "panel_long": (
        lambda cell: cell["schedule"].startswith("long"),
        ["kd", "nst_kd", "ab_kd", "sp"],
    ),
}


def _signed(value, digits=2):
    return f"{value:+.{digits}f}".replace("-", "\N{MINUS SIGN}")


def panel_table(select, configs):
    """Over the cells of the panel's summary that `select` keeps, in its
    order: gain over the student alone, points, mean ± std over seeds; bold
    when the panel's verdict is "better" (beyond both stds); the number of
    seeds when fewer than the panel's; empty where the config did not run
    (or ran fewer than `MIN_SEEDS` seeds)."""
    panel = _json("panel")
    cells = [s for s in panel["summary"] if select(s)]
    rows = [
        "| method | " + " | ".join(c["cell"] for c in cells) + " |",
        "| --- |" + " --- |" * len(cells),
        "| teacher − alone (alone std) | "
        + " | ".join(
            f"{_signed(c['teacher'] - c['alone'], 1)} ({c['alone_std']:.2f})"
            for c in cells
        )
        + " |",
    ]
    for config in configs:
        entries = []
        for cell in cells:
            g = cell["gains"].get(config)
            if g is None or g["n"] < MIN_SEEDS:
                entries.append("")
                continue
            text = f"{_signed(g['gain'])} ± {g['gain_std']:.2f}"
            if g["verdict"] == "better":
                text = f"**{text}**"
            if g["n"] < len(panel["seeds"]):
                text += f" ({g['n']} seeds)"
            entries.append(text)
        rows.append(f"| `{config}` | " + " | ".join(entries) + " |")
    return rows


BENCHMARK_BLOCKS = {
    block: functools.partial(panel_table, select, configs)
    for block, (select, configs) in PANEL_TABLES.items()
}


def render(text, blocks=None, filename="README.md"):
    """`text` with every generated block of `blocks` (default: the
    README's) rewritten."""
    for block, table in (BLOCKS if blocks is None else blocks).items():
        pattern = re.compile(
            rf"(<!-- begin {block} [^\n]*-->\n).*?(<!-- end {block} -->)",
            re.S,
        )
        if not pattern.search(text):
            raise ValueError(
                f"{filename} has no '<!-- begin {block} ...' block"
            )
        body = "\n".join(table()) + "\n"
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    return text


# file -> its generated blocks
FILES = {
    README: BLOCKS,
    os.path.join(ROOT, "benchmarks", "README.md"): BENCHMARK_BLOCKS,
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args(argv)
    stale = []
    for path, blocks in FILES.items():
        name = os.path.relpath(path, ROOT)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        new = render(text, blocks, name)
        if new == text:
            continue
        stale.append(name)
        if not args.check:
            common.write_text(path, new.rstrip("\n").splitlines())
            print(f"rewrote {name}")
    if args.check and stale:
        print(
            f"{', '.join(stale)}: generated tables are stale: run "
            "python benchmarks/readme_tables.py"
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
