"""The main job's printout, recorded: runs `keras-kd` and keeps what it prints.

Runs the `keras-kd` command (the bundled Fashion-MNIST subset, KD with the
library defaults, 3 seeds) in a child process with the arguments given
after `--`, and writes its standard output, its wall time (start-up
included), the machine and the package versions to a results file. The
README's printout of `keras-kd` is this file's.

    python benchmarks/main_job.py                  # ~3-5 min on 2 cores
    python benchmarks/main_job.py --output results/main_job_nst -- \\
        --methods kd,nst
"""

import argparse
import datetime
import os
import subprocess
import sys
import time

import common


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        split = argv.index("--")
        own, job = argv[:split], argv[split + 1 :]
    else:
        own, job = argv, []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", default=os.path.join(common.RESULTS_DIR, "main_job")
    )
    args = parser.parse_args(own)
    started = datetime.datetime.now(datetime.timezone.utc)
    load = common.load_average()
    command = [sys.executable, "-m", "keras_kd.cli", *job]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    start = time.perf_counter()
    result = subprocess.run(
        command, env=env, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-4000:])
        print(f"keras-kd exited with {result.returncode}; nothing written")
        return result.returncode
    shown = " ".join(["keras-kd", *job])
    lines = common.header_markdown(
        "The main job: what `keras-kd` prints",
        started.strftime("%Y-%m-%d %H:%M"),
        [
            f"The command it ran: `{shown}`. Wall time "
            f"{seconds:.0f} s, start-up included. Load average (1 min) at "
            f"start: {load}; at end: {common.load_average()} (on 2 cores, "
            "a load above 2 means other work shared them).",
            "",
            "```",
            result.stdout.rstrip(),
            "```",
        ],
    )
    common.write_text(args.output + ".md", lines)
    print(f"wrote {args.output}.md ({seconds:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
