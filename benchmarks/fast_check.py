"""The README's test commands, timed in a fresh virtual environment.

Creates a new virtual environment, runs one of the README's test commands in
it (the fast check: `pip install -e ".[cpu,jax,test]"`, then `python -m
pytest -m quick tests -q`; with `--full`, the full suite CI runs), and
records the wall time of the install and of the tests, what the tests
printed last, the environment's installed size and which backends it holds.
pip's cache makes the install here faster than a first download; the
installed size is what a first install downloads, unpacked.

    python benchmarks/fast_check.py          # ~5 min on 2 cores
    python benchmarks/fast_check.py --full   # ~35 min on 2 cores
"""

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time

import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name: (the pip install commands, the test command), as in the README.
COMMANDS = {
    "fast_check": (
        [["-e", ".[cpu,jax,test]"]],
        ["-m", "quick", "tests", "-q"],
    ),
    "full_suite": (
        [["torch==2.13.0"], ["-e", ".[cpu,jax,torch,test,examples]"]],
        ["-n", "2", "--dist", "loadgroup", "--doctest-modules", "tests"]
        + ["keras_kd", "-q"],
    ),
}


def _size_mib(path):
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total / 2**20


def _timed(command, **kwargs):
    start = time.perf_counter()
    result = subprocess.run(
        command, capture_output=True, text=True, check=False, **kwargs
    )
    return result, time.perf_counter() - start


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--full", action="store_true", help="the full suite CI runs"
    )
    parser.add_argument("--output", help="default: results/NAME")
    parser.add_argument("--log", help="also write the tests' output here")
    args = parser.parse_args(argv)
    name = "full_suite" if args.full else "fast_check"
    output = args.output or os.path.join(common.RESULTS_DIR, name)
    installs, tests = COMMANDS[name]
    install_text = " && ".join(
        "pip install "
        + " ".join(f'"{a}"' if a.startswith((".", "torch")) else a for a in i)
        for i in installs
    )
    test_text = "python -m pytest " + " ".join(tests)
    started = datetime.datetime.now(datetime.timezone.utc)
    load = common.load_average()
    with tempfile.TemporaryDirectory() as directory:
        venv = os.path.join(directory, "venv")
        subprocess.run([sys.executable, "-m", "venv", venv], check=True)
        python = os.path.join(venv, "bin", "python")
        env = dict(
            os.environ,
            PATH=os.path.dirname(python) + os.pathsep + os.environ["PATH"],
            VIRTUAL_ENV=venv,
        )
        env.pop("KERAS_BACKEND", None)
        env.pop("PYTHONPATH", None)
        print(f"[1/2] {install_text}", flush=True)
        install_s = 0.0
        for install in installs:
            result, seconds = _timed(
                [python, "-m", "pip", "install", "-q", *install],
                cwd=ROOT,
                env=env,
            )
            install_s += seconds
            if result.returncode != 0:
                print(result.stdout[-2000:], result.stderr[-4000:])
                return 1
        size = _size_mib(venv)
        probe = subprocess.run(
            [
                python,
                "-c",
                "import importlib.util as u; "
                "print(', '.join(m for m in ('tensorflow', 'jax', 'torch') "
                "if u.find_spec(m)))",
            ],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        )
        print(f"[2/2] {test_text}", flush=True)
        result, tests_s = _timed(
            [python, "-m", "pytest", *tests, "-p", "no:cacheprovider"],
            cwd=ROOT,
            env=env,
        )
    if args.log:
        with open(args.log, "w", encoding="utf-8") as f:
            f.write(result.stdout + result.stderr)
    lines_out = result.stdout.strip().splitlines()
    last = lines_out[-1] if lines_out else ""
    print(f"install {install_s:.0f} s, tests {tests_s:.0f} s: {last}")
    lines = common.header_markdown(
        f"The README's {name.replace('_', ' ')} in a fresh environment",
        started.strftime("%Y-%m-%d %H:%M"),
        [
            "(The package table above is the environment that ran this "
            "script; the fresh environment's backends are named below.)",
            "",
            "| part | command | wall time |",
            "| --- | --- | --- |",
            f"| install | `{install_text}` | {install_s:.0f} s "
            "(from pip's cache) |",
            f"| tests | `{test_text}` | {tests_s:.0f} s |",
            "",
            f"Tests: `{last}` (exit status {result.returncode}).",
            "",
            f"Backends installed: {probe.stdout.strip()}. Installed size of "
            f"the environment: {size:.0f} MiB. Load average (1 min) at "
            f"start: {load}; at end: {common.load_average()} (on 2 cores, "
            "a load above 2 means other work shared them).",
        ],
    )
    common.write_text(output + ".md", lines)
    print(f"wrote {output}.md")
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
