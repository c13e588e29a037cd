"""What each method adds to a saved distiller (`.keras` file size).

Saves a Distiller of `speed.py`'s CIFAR pair (ResNet-32 -> ResNet-8) with
each method of the registry (default layers, library defaults) and reports
the file size against the same distiller with KD alone. CRD's memory banks
(`2 * num_examples * 128` float32 values) are the large item: they are
measured for the bundled subsets' and CIFAR-10's training-set sizes.

    python benchmarks/saved_size.py   # ~1 min; writes results/saved_size.md
"""

import argparse
import os
import sys
import tempfile

import common

common.select_backend()

import keras  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd.losses import registry  # noqa: E402
from keras_kd.models import resnet  # noqa: E402

# CRD's bank sizes: the bundled subsets (6,000), CIFAR-10 (50,000).
EXAMPLES = (6000, 50000)


def saved_bytes(losses, directory, tag):
    keras.utils.set_random_seed(0)
    teacher = resnet((32, 32, 3), 10, blocks=5, name="teacher")
    student = resnet((32, 32, 3), 10, blocks=1, name="student")
    distiller = keras_kd.Distiller(teacher, student, losses)
    distiller.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    path = os.path.join(directory, f"{tag}.keras")
    distiller.save(path)
    return os.path.getsize(path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output", default=os.path.join(common.RESULTS_DIR, "saved_size")
    )
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as directory:
        base = saved_bytes([registry.build("kd")], directory, "kd")
        rows.append(["kd", "", f"{base / 2**20:.2f}", "—"])
        for name in registry.names():
            if name == "kd":
                continue
            sizes = EXAMPLES if registry.required_facts(name) else (None,)
            for n in sizes:
                facts = {"num_examples": n} if n else None
                size = saved_bytes(
                    [registry.build(name, facts=facts)], directory, name
                )
                rows.append(
                    [
                        name,
                        f"{n:,}" if n else "",
                        f"{size / 2**20:.2f}",
                        f"{(size - base) / 2**20:+.2f}",
                    ]
                )
                print(rows[-1], flush=True)
    header = ["method", "training examples", "file MiB", "vs KD alone, MiB"]
    common.print_table(header, rows)
    lines = [
        "# What each method adds to a saved distiller",
        "",
        "Command (from the repository root):",
        "",
        "```bash",
        "python benchmarks/saved_size.py",
        "```",
        "",
        "A `keras_kd.Distiller` of ResNet-32 (teacher) and ResNet-8 "
        "(student), CIFAR-sized inputs, saved with `distiller.save` after "
        "`compile` (optimizer state not yet built), with one method each "
        "(registry default layers, library defaults). CRD's two memory banks "
        "hold `2 * examples * 128` float32 values. "
        f"Keras backend: {keras.backend.backend()}.",
        "",
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    with open(args.output + ".md", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    print(f"wrote {args.output}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
