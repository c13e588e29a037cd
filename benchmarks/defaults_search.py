"""Search for library defaults: variants of each method on panel cells.

Runs the panel's machinery (`panel.py`: same cells, seeds, initial weights,
optimizer, schedule and data order) on *variants* of the methods' weights,
temperatures and schedules, and writes their gains over the student alone to
`benchmarks/results/defaults_search.{md,json,jsonl,png}`.
The panel itself (`panel.py`) then measures the defaults chosen here on every
cell; this file is the evidence for the choice.

    python benchmarks/defaults_search.py --cells fm_red_adam_short_tiny \\
        --configs alone,kd_t1,kd_t2 --data-dir path/to/data
    python benchmarks/defaults_search.py --report

Arguments are those of `panel.py`; `--output` defaults to
`benchmarks/results/defaults_search`.
"""

import os
import sys

import panel

from keras_kd import losses


def _one(name):
    """One method with the registry's default layers (the panel's wiring)."""
    return lambda n: panel._methods(name)(n)[0]


_ab, _nst, _at = _one("ab"), _one("nst"), _one("at")


def _ab_sum(n):
    # keras_kd 0.1's AB: the official sum over elements (weight 3e-3).
    return losses.registry.build("ab", stages=n, normalize=False)


def _kd(temperature):
    return lambda n: [losses.LogitsDistillation(temperature=temperature)]


VARIANTS = {
    # KD: temperature and weight (student loss weight 1).
    "kd_t4": dict(
        description="KD T=4, weight 1 (keras_kd 0.1 default)",
        losses=_kd(4.0),
        weights=None,
    ),
    "kd_t1": dict(
        description="KD T=1, weight 1", losses=_kd(1.0), weights=None
    ),
    "kd_t2": dict(
        description="KD T=2, weight 1", losses=_kd(2.0), weights=None
    ),
    "kd_t4_w1_16": dict(
        description="KD T=4, weight 1/16", losses=_kd(4.0), weights=[1 / 16]
    ),
    "kd_t4_w0.25": dict(
        description="KD T=4, weight 0.25", losses=_kd(4.0), weights=[0.25]
    ),
    "kd_t2_w0.25": dict(
        description="KD T=2, weight 0.25", losses=_kd(2.0), weights=[0.25]
    ),
    "kd_t1_w2": dict(
        description="KD T=1, weight 2", losses=_kd(1.0), weights=[2.0]
    ),
    "kd_t1_w0.5": dict(
        description="KD T=1, weight 0.5", losses=_kd(1.0), weights=[0.5]
    ),
    # AB schedule: optimizer restarted at stage 2 (the new default) or not.
    "ab_norestart": dict(
        description="AB schedule, then CE; one optimizer state",
        losses=lambda n: [_ab_sum(n)],
        ab_schedule=True,
        weights=[3e-3],
        restart_optimizer=False,
    ),
    "ab_restart": dict(
        description="AB schedule, then CE; optimizer restarted",
        losses=lambda n: [_ab_sum(n)],
        ab_schedule=True,
        weights=[3e-3],
    ),
    # Combinations with KD at T=1 (weight 1).
    "ab_kd_t1": dict(
        description="AB schedule (restart), then CE + KD T=1",
        losses=lambda n: [
            _ab_sum(n),
            losses.LogitsDistillation(temperature=1.0),
        ],
        ab_schedule=True,
        weights=[3e-3, 1.0],
    ),
    "nst5_kd_t1": dict(
        description="NST weight 5 + KD T=1",
        losses=lambda n: [_nst(n), losses.LogitsDistillation(temperature=1.0)],
        weights=[5.0, 1.0],
    ),
    # NST alone and AT alone at lower weights (defaults: 50 and 1000).
    "nst_w5": dict(
        description="NST alone, weight 5",
        losses=lambda n: [_nst(n)],
        weights=[5.0],
    ),
    "nst_w10": dict(
        description="NST alone, weight 10",
        losses=lambda n: [_nst(n)],
        weights=[10.0],
    ),
    # AB normalised per element (H*W*C of each pair), weight 1: about a raw
    # (summed) weight of 1e-4 on these students, 30x below the official 3e-3.
    "ab_norm": dict(
        description=(
            "AB schedule (restart), per-element mean, weight 1, then CE"
        ),
        losses=lambda n: [
            losses.registry.build("ab", stages=n, normalize=True)
        ],
        ab_schedule=True,
        weights=[1.0],
    ),
    "ab_norm_kd_t1": dict(
        description="AB schedule (restart), per-element mean, weight 1, "
        "then CE + KD T=1",
        losses=lambda n: [
            losses.registry.build("ab", stages=n, normalize=True),
            losses.LogitsDistillation(temperature=1.0),
        ],
        ab_schedule=True,
        weights=[1.0, 1.0],
    ),
    "nst_w1": dict(
        description="NST alone, weight 1",
        losses=lambda n: [_nst(n)],
        weights=[1.0],
    ),
    "at_w25": dict(
        description="AT alone, weight 25",
        losses=lambda n: [_at(n)],
        weights=[25.0],
    ),
    "nst1_kd_t1": dict(
        description="NST weight 1 + KD T=1",
        losses=lambda n: [_nst(n), losses.LogitsDistillation(temperature=1.0)],
        weights=[1.0, 1.0],
    ),
    "at_w100": dict(
        description="AT alone, weight 100",
        losses=lambda n: [_at(n)],
        weights=[100.0],
    ),
    "at_w250": dict(
        description="AT alone, weight 250",
        losses=lambda n: [_at(n)],
        weights=[250.0],
    ),
}

for _name, _spec in VARIANTS.items():
    _spec.setdefault("ab_schedule", False)
    _spec.setdefault("group", "search")
    panel.CONFIGS[_name] = _spec


HEADER = """# Defaults search: variants of each method on panel cells

Evidence for the library defaults: the panel's machinery
(`benchmarks/panel.py`: same cells, seeds, initial weights, optimizer,
schedule and data order) run on *variants* of weights, temperatures and
schedules, each named in the configs table below. It is not the panel of the
chosen defaults (that is `panel.md`), and "planned runs" below counts the
panel's plan, not this search's. Runs marked `copied_from` in the JSONL were
run by `panel.py` with the same code path.

Command (from the repository root):

```bash
python benchmarks/defaults_search.py --report
```
"""


def _retitle(path):
    """Replaces the panel's title block, which would claim library defaults."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    start = text.find("Started ")
    if start < 0:
        return
    text = HEADER + "\n" + text[start:]
    text = text.replace(
        "- Distillation losses use the library defaults (no weight, "
        "temperature or margin passed).",
        "- Distillation losses use the weights and temperatures each config's "
        "description gives.",
    )
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--output" not in argv:
        argv += [
            "--output",
            os.path.join(panel.common.RESULTS_DIR, "defaults_search"),
        ]
    status = panel.main(argv)
    _retitle(argv[argv.index("--output") + 1] + ".md")
    return status


if __name__ == "__main__":
    sys.exit(main())
