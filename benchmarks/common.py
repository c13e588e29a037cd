"""Shared helpers for the benchmark scripts: machine, versions, markdown.

Not part of keras_kd and not a test: the scripts in this folder print
measured numbers and write them under `benchmarks/results/`.
"""

import os
import platform
import shlex
import sys
import time

RESULTS_DIR = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results"
)


def quiet_tensorflow():
    """Hides TensorFlow's C++ start-up chatter (set before importing it)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def select_backend(argv=None):
    """Sets KERAS_BACKEND from `--backend NAME` in `argv` (before Keras is
    imported).

    Returns the backend name: the flag's value, else KERAS_BACKEND, else
    `tensorflow`.
    """
    argv = sys.argv[1:] if argv is None else argv
    for i, arg in enumerate(argv):
        if arg == "--backend" and i + 1 < len(argv):
            os.environ["KERAS_BACKEND"] = argv[i + 1]
        elif arg.startswith("--backend="):
            os.environ["KERAS_BACKEND"] = arg.split("=", 1)[1]
    quiet_tensorflow()
    return os.environ["KERAS_BACKEND"]


def command_line():
    """The exact command that ran this script, relative to the repository."""
    return "python " + " ".join(shlex.quote(a) for a in sys.argv)


def machine():
    """Cores, CPU model (from /proc/cpuinfo) and RAM, as a dict of strings."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    ram = "unknown"
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    ram = f"{int(line.split()[1]) / 2**20:.1f} GiB"
                    break
    except OSError:
        pass
    try:
        load = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load = "unknown"
    return {
        "cores": str(os.cpu_count()),
        "cpu": model,
        "ram": ram,
        "os": platform.platform(),
        "load average at start (1, 5, 15 min)": load,
    }


def versions():
    """Python, Keras backend, TensorFlow / JAX / PyTorch, Keras and keras_kd
    versions."""
    import importlib.metadata

    import keras

    import keras_kd

    def installed(dist):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"

    try:
        from importlib.metadata import version

        kd_version = version("keras-kd")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        kd_version = getattr(keras_kd, "__version__", "unknown")
    tensorflow = installed("tensorflow-cpu")
    if tensorflow == "not installed":
        tensorflow = installed("tensorflow")
    return {
        "python": platform.python_version(),
        "keras backend": keras.backend.backend(),
        "tensorflow": tensorflow,
        "jax": installed("jax"),
        "jaxlib": installed("jaxlib"),
        "torch": installed("torch"),
        "keras": keras.__version__,
        "keras_kd": kd_version,
        "numpy": __import__("numpy").__version__,
    }


def header_markdown(title, started, extra=()):
    """Title, command, machine and versions as markdown lines."""
    lines = [
        f"# {title}",
        "",
        "Command (from the repository root):",
        "",
        "```bash",
        command_line(),
        "```",
        "",
        f"Started {started} UTC.",
        "",
    ]
    lines += ["| machine | |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in machine().items()]
    lines += ["", "| package | version |", "| --- | --- |"]
    lines += [f"| {k} | {v} |" for k, v in versions().items()]
    lines += [""] + list(extra)
    return lines


def markdown_table(header, rows):
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def print_table(header, rows):
    widths = [
        max(len(str(h)), *(len(str(r[i])) for r in rows))
        if rows
        else len(str(h))
        for i, h in enumerate(header)
    ]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for row in rows:
        print(fmt.format(*(str(c) for c in row)))
    sys.stdout.flush()


def write_text(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    os.replace(tmp, path)


def median_seconds(call, repeats, warmup=2):
    """Median wall time of `call()` over `repeats` calls, after `warmup` calls.

    `call` must block until its work is done (e.g. end in `.numpy()`).
    """
    for _ in range(warmup):
        call()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    times.sort()
    mid = len(times) // 2
    return times[mid] if len(times) % 2 else 0.5 * (times[mid - 1] + times[mid])


def load_average():
    """The 1-minute load average (None where the OS has none)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def append_jsonl(path, record):
    """Appends one JSON line to `path` and flushes it to disk at once."""
    import json

    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def cached_model(path, train, label):
    """`(model, meta)`: a trained model cached at `path` (a `.keras` file)
    with its metadata at `path + ".json"`. Loaded when both exist;
    otherwise `train()` -> `(model, meta)` runs (`meta` holds at least
    `test_accuracy` and `train_seconds`) and both are saved there."""
    import json

    import keras

    meta_path = path + ".json"
    if os.path.exists(path) and os.path.exists(meta_path):
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
        print(
            f"{label}: cached {path} (test accuracy "
            f"{100 * meta['test_accuracy']:.2f}%)",
            flush=True,
        )
        return keras.saving.load_model(path, compile=False), meta
    model, meta = train()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    model.save(path)
    with open(meta_path, "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    print(
        f"{label}: trained in {meta['train_seconds']:.0f} s, test accuracy "
        f"{100 * meta['test_accuracy']:.2f}%, saved {path}",
        flush=True,
    )
    return model, meta


def read_jsonl(path):
    """The records of a JSON-lines file (an empty list if it does not exist)."""
    import json

    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def mean_std(values):
    """`(mean, sample std)` of a sequence; std is nan for fewer than 2
    values."""
    import numpy as np

    values = np.asarray(values, dtype=float)
    if values.size == 0:
        return float("nan"), float("nan")
    std = float(values.std(ddof=1)) if values.size > 1 else float("nan")
    return float(values.mean()), std


def paired_gain(treated, baseline):
    """Mean and sample std of `treated[k] - baseline[k]` over the shared keys.

    `treated` and `baseline` map a seed to a score; only seeds present in both
    count (a paired comparison: same seed, same initialisation and data order).
    Returns `(mean, std, n)`.
    """
    seeds = sorted(set(treated) & set(baseline))
    mean, std = mean_std([treated[s] - baseline[s] for s in seeds])
    return mean, std, len(seeds)


def repeated_permutations(rng, size, count):
    """`count` indices into `size` items: whole permutations drawn from
    `rng`, one after another, cut to length (every item once per pass)."""
    import numpy as np

    passes = -(-count // size)
    return np.concatenate([rng.permutation(size) for _ in range(passes)])[
        :count
    ]


# Short names of the panel's method configs (panel.py's tables, the README's
# method guide).
PANEL_CONFIG_NAMES = {
    "kd": "KD",
    "ab_kd": "AB + KD",
    "nst_kd": "NST + KD",
    "ab": "AB",
    "nst": "NST",
    "at": "AT",
    "kd_ls": "KD + LS",
    "dkd": "DKD",
    "dkd_ls": "DKD + LS",
    "fitnets": "FitNets",
    "fsp": "FSP",
    "rkd": "RKD",
    "sp": "SP",
    "pkt": "PKT",
    "crd": "CRD",
    "dkd_t1": "DKD, T 1",
    "dkd_imagenet": "DKD, α 0.5, β 0.5, T 1",
    "dkd_imagenet_a1": "DKD, α 1, β 0.5, T 1 (ImageNet values)",
    "dkd_b1": "DKD, β 1",
    "fitnets_w01": "FitNets, weight 10",
    "rkd_w01": "RKD, weight 0.1",
    "sp_w01": "SP, weight 300",
    "pkt_w01": "PKT, weight 3000",
    "crd_w01": "CRD, weight 0.08",
    "fitnets_paper": "FitNets, weight 100 (official)",
    "rkd_paper": "RKD, weight 1 (official)",
    "sp_paper": "SP, weight 3000 (official)",
    "pkt_paper": "PKT, weight 30000 (official)",
    "crd_paper": "CRD, weight 0.8 (official)",
    "rco_kd": "RCO + KD",
    "bss_kd": "BSS + KD",
    "fm_alone": "alone, function matching's inputs",
    "fm_kd": "function matching + KD",
    "fm_kd_mild": "function matching (mild) + KD",
    "fm_sp": "function matching + SP",
    "nst_dkd": "NST + DKD",
}
