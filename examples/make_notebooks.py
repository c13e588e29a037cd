"""Builds the tutorial notebooks from their sources in examples/tutorials/.

Each tutorial is one Python file in jupytext's "percent" format: `# %%`
starts a code cell, `# %% [markdown]` a markdown cell whose lines are
`# `-commented. Edit, lint and run the `.py`; this script writes the
`.ipynb` next to this file, adding the Colab install cell (and the Colab
badge, when the repository is set).

    python examples/make_notebooks.py            # write stale notebooks
    python examples/make_notebooks.py --check    # exit 1 if one is stale
    KERAS_KD_MODE=moderate KERAS_KD_DATA=/path/to/cifar10.npz \\
        python examples/make_notebooks.py --execute 01   # run, keep outputs

A notebook is stale when its cells' types or sources differ from its
source file; outputs are never compared. Rewriting a notebook keeps the
outputs of the code cells whose source did not change. `--execute` runs
the named notebooks (all without names) top to bottom with nbclient, in a
scratch directory, under the current environment (the notebooks read
`KERAS_KD_MODE`, `KERAS_KD_DATA`, `KERAS_KD_DATA_DIR`), and stores the
outputs.

`KERAS_KD_REPOSITORY` (a GitHub URL such as
`https://github.com/<owner>/keras_kd`) is where Colab installs keras_kd from
and what the "Open in Colab" badge points at. Unset (the default), the
notebooks carry no badge, and their install cell installs from the clone
they sit in, or stops with a message saying how to set it.
"""

import argparse
import os
import pathlib
import re
import sys
import tempfile
import time

import nbformat

HERE = pathlib.Path(__file__).resolve().parent
SOURCES = HERE / "tutorials"
REPOSITORY = os.environ.get("KERAS_KD_REPOSITORY", "")
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"
GITHUB = re.compile(r"^https://github\.com/([\w.-]+/[\w.-]+?)(?:\.git)?/?$")
INSTALL = '''\
# Installs keras_kd where it is missing (on Colab): from the clone of the
# repository this notebook sits in, else from REPOSITORY.
import importlib.util
import pathlib
import subprocess
import sys

REPOSITORY = {repository!r}  # set by KERAS_KD_REPOSITORY in make_notebooks.py
IN_COLAB = "google.colab" in sys.modules


def keras_kd_requirement(cwd=None, repository=REPOSITORY):
    """What `pip install` gets keras_kd (and the tutorials' extras) from."""
    clone = pathlib.Path(cwd or pathlib.Path.cwd()).resolve().parent
    if (clone / "setup.py").is_file() and (clone / "keras_kd").is_dir():
        return f"{{clone}}[examples]"
    if repository:
        return f"keras-kd[examples] @ git+{{repository}}"
    raise RuntimeError(
        "keras_kd is not installed, this notebook is not in a clone of the "
        "keras_kd repository (no ../setup.py), and no repository to install "
        "from is set. Install keras_kd first (pip install -e /path/to/clone), "
        "or rebuild the notebooks with KERAS_KD_REPOSITORY="
        "https://github.com/<owner>/keras_kd python examples/make_notebooks.py"
    )


if importlib.util.find_spec("keras_kd") is None:
    requirement = keras_kd_requirement()
    print("pip install", requirement)
    pip = [sys.executable, "-m", "pip", "install", "-q", requirement]
    subprocess.check_call(pip)
'''


def parse(text):
    """[(cell_type, source)] of a percent-format file."""
    cells = []
    for block in re.split(r"^# %%", text, flags=re.M)[1:]:
        header, _, body = block.partition("\n")
        lines = body.strip("\n").splitlines()
        if header.strip() == "[markdown]":
            lines = [re.sub(r"^# ?", "", line) for line in lines]
            cells.append(("markdown", "\n".join(lines).strip("\n")))
        else:
            cells.append(("code", "\n".join(lines).strip("\n")))
    return cells


def badge(name, repository=REPOSITORY):
    """The "Open in Colab" markdown, or "" while no repository is set."""
    if not repository:
        return ""
    match = GITHUB.match(repository)
    if match is None:
        raise ValueError(
            "KERAS_KD_REPOSITORY must be a GitHub URL such as "
            f"https://github.com/<owner>/keras_kd; received {repository!r}."
        )
    url = (
        f"https://colab.research.google.com/github/{match.group(1)}"
        f"/blob/main/examples/{name}.ipynb"
    )
    return f"[![Open In Colab]({BADGE})]({url})"


def cells_of(source, repository=REPOSITORY):
    """The notebook cells of a tutorial: its own, plus badge and install."""
    cells = parse(source.read_text(encoding="utf-8"))
    kind, first = cells[0]
    if kind != "markdown" or not first.startswith("# "):
        raise ValueError(f"{source} must open with a markdown '# Title' cell.")
    mark = badge(source.stem, repository)
    if mark:
        title, _, rest = first.partition("\n")
        cells[0] = ("markdown", f"{title}\n\n{mark}\n{rest}")
    install = INSTALL.format(repository=repository).strip("\n")
    return [cells[0], ("code", install), *cells[1:]]


def build(source, old=None, repository=REPOSITORY):
    """A notebook for `source`, with the outputs of `old`'s unchanged cells."""
    notebook = nbformat.v4.new_notebook()
    previous = {}
    if old is not None:
        previous = {c.source: c for c in old.cells if c.cell_type == "code"}
    stem = source.stem.split("_")[0]
    for index, (kind, text) in enumerate(cells_of(source, repository)):
        cell_id = f"nb{stem}-{index:02d}"
        if kind == "markdown":
            cell = nbformat.v4.new_markdown_cell(text, id=cell_id)
        else:
            cell = nbformat.v4.new_code_cell(text, id=cell_id)
            if text in previous:
                cell.outputs = previous[text].outputs
                cell.execution_count = previous[text].execution_count
        notebook.cells.append(cell)
    notebook.metadata = {
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4", "toc_visible": True},
        "kernelspec": {
            "display_name": "Python 3",
            "language": "python",
            "name": "python3",
        },
        "language_info": {"name": "python"},
    }
    nbformat.validate(notebook)
    return notebook


def signature(notebook):
    return [(c.cell_type, c.source) for c in notebook.cells]


# TensorFlow's C++ start-up logs (absl, CUDA probing) on stderr.
NATIVE_LOG = re.compile(r"^(WARNING: All log messages before absl|[IWE]\d{4} )")


def tidy(text, scratch):
    """A stream output without native logs and the scratch directory."""
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not NATIVE_LOG.match(line)]
    return "".join(kept).replace(scratch, "")


def execute(path, timeout=3600):
    """Runs a notebook in a scratch directory and stores its outputs."""
    import nbclient

    notebook = nbformat.read(path, as_version=4)
    with tempfile.TemporaryDirectory(prefix="keras_kd_nb_") as scratch:
        work = pathlib.Path(os.environ.get("KERAS_KD_WORK_DIR") or scratch)
        work.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        nbclient.NotebookClient(
            notebook,
            timeout=timeout,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": str(work)}},
        ).execute()
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if output.output_type == "stream":
                output.text = tidy(output.text, f"{work}/")
        if cell.cell_type == "code":
            cell.outputs = [o for o in cell.outputs if o.get("text", True)]
    nbformat.write(notebook, path)
    print(f"executed {path.name} in {time.monotonic() - started:.0f} s")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a notebook differs from its source",
    )
    parser.add_argument(
        "--execute",
        nargs="*",
        metavar="PREFIX",
        help="then run these notebooks (all if none named)",
    )
    args = parser.parse_args(argv)
    stale = []
    for source in sorted(SOURCES.glob("[0-9]*.py")):
        path = HERE / f"{source.stem}.ipynb"
        old = nbformat.read(path, as_version=4) if path.exists() else None
        notebook = build(source, old)
        if old is not None and signature(old) == signature(notebook):
            continue
        stale.append(path.name)
        if not args.check:
            nbformat.write(notebook, path)
            print("wrote", path)
    if args.check and stale:
        print("stale (rerun python examples/make_notebooks.py):", *stale)
        return 1
    for prefix in [] if args.execute is None else args.execute or [""]:
        for path in sorted(HERE.glob(f"{prefix}*.ipynb")):
            execute(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
