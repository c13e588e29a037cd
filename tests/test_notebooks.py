"""The tutorial notebooks: built from their sources, run on real images.

Each notebook in `examples/` is built by `examples/make_notebooks.py` from a
percent-format source in `examples/tutorials/`, and stored with the outputs
of a `moderate` run on real CIFAR-10. Here each one is executed in a fresh
IPython kernel with `KERAS_KD_SMOKE=1` (a few hundred images, one or two
short epochs) on the real images bundled with keras_kd, through every
offline path: the bundled CIFAR-10 subset by name, as a `.npz` path, as a
tfds data directory prepared from that archive with
`keras_kd.data.prepare_tfds_directory`, and the bundled Fashion-MNIST. A
failing cell fails the test with its traceback; the executed notebook is kept
in the test's temporary directory. The notebooks need the `examples` extra
(nbclient, ipykernel, matplotlib, keras-cv; keras-hub optional).
"""

import importlib.resources
import importlib.util
import os
import pathlib
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
NOTEBOOKS = (
    "01_quickstart.ipynb",
    "02_activation_boundaries.ipynb",
    "03_neuron_selectivity.ipynb",
    "04_bring_your_own_models.ipynb",
)
CELL_TIMEOUT = 600  # seconds per cell; a smoke cell takes seconds
TFDS_NAME = "cifar10_keras_kd_smoke"
# Figures each notebook must render (image grids, training curves,
# per-layer plots, confusion matrices).
MIN_FIGURES = {
    "01_quickstart.ipynb": 4,
    "02_activation_boundaries.ipynb": 4,
    "03_neuron_selectivity.ipynb": 5,
    "04_bring_your_own_models.ipynb": 2,
}


def _make_notebooks():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(EXAMPLES))
    return make_notebooks


@pytest.fixture(scope="module")
def cifar_npz():
    """The real CIFAR-10 subset bundled with keras_kd, as a .npz path."""
    bundled = importlib.resources.files("keras_kd.datasets")
    with importlib.resources.as_file(bundled / "cifar10_small.npz") as path:
        yield path


@pytest.fixture(scope="module")
def cifar_tfds_dir(cifar_npz, tmp_path_factory):
    """A tfds data directory made from the archive, as an offline user would."""
    pytest.importorskip("tensorflow_datasets")
    from keras_kd import data

    data_dir = tmp_path_factory.mktemp("tfds")
    data.prepare_tfds_directory(cifar_npz, data_dir, TFDS_NAME)
    return data_dir


def _data_env(notebook, request):
    """The data source each notebook runs on: every offline path is covered."""
    if notebook.startswith("01"):
        return {}  # smoke mode's default: "bundled:cifar10"
    if notebook.startswith("02"):
        return {
            "KERAS_KD_DATA": TFDS_NAME,
            "KERAS_KD_DATA_DIR": str(request.getfixturevalue("cifar_tfds_dir")),
        }
    if notebook.startswith("03"):
        return {"KERAS_KD_DATA": str(request.getfixturevalue("cifar_npz"))}
    return {"KERAS_KD_DATA": "bundled"}  # grey Fashion-MNIST, made RGB


def _outputs(notebook, kind):
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "image" and "image/png" in output.get("data", {}):
                yield output
            elif kind == "text":
                yield output.get("text", "") + output.get("data", {}).get(
                    "text/plain", ""
                )


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, tmp_path, monkeypatch, request):
    env = {
        "KERAS_KD_SMOKE": "1",
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        # The kernel imports this checkout's keras_kd, whatever is installed.
        "PYTHONPATH": os.pathsep.join(
            filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])
        ),
        **_data_env(name, request),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in ("KERAS_KD_TEACHER", "KERAS_KD_DATA", "KERAS_KD_MODE"):
        monkeypatch.delenv(key, raising=False)
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},  # the kernel's cwd
    )
    started = time.monotonic()
    try:
        client.execute()
    finally:
        nbformat.write(notebook, tmp_path / name)
        print(
            f"{name}: {time.monotonic() - started:.0f} s, "
            f"executed copy in {tmp_path}"
        )

    figures = list(_outputs(notebook, "image"))
    assert len(figures) >= MIN_FIGURES[name], (
        f"{name} rendered {len(figures)} figures; "
        f"expected at least {MIN_FIGURES[name]}"
    )
    text = "".join(_outputs(notebook, "text"))
    assert "MODE=smoke  SMOKE=True" in text
    if name.startswith("04"):
        # A library installed here must not be skipped by the notebook.
        for module, section in (
            ("keras_cv", "=== keras-cv"),
            ("keras_hub", "=== KerasHub"),
        ):
            if importlib.util.find_spec(module) is not None:
                assert section in text, f"{name} skipped the {module} section"


def test_notebooks_match_their_sources():
    assert _make_notebooks().main(["--check"]) == 0, (
        "examples/*.ipynb differ from examples/tutorials/*.py: rerun "
        "python examples/make_notebooks.py"
    )
    sources = sorted(p.stem for p in (EXAMPLES / "tutorials").glob("*.py"))
    assert sources == [name.removesuffix(".ipynb") for name in NOTEBOOKS]


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebook_holds_a_moderate_run_on_real_data(name):
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.cells[0].source.startswith("# ")
    # Built without KERAS_KD_REPOSITORY: no badge, a local-clone install.
    assert "colab-badge" not in notebook.cells[0].source
    assert "keras_kd_requirement" in notebook.cells[1].source
    errors = [
        output
        for cell in notebook.cells
        for output in cell.get("outputs", [])
        if output.output_type == "error"
    ]
    assert not errors, f"{name} was stored with an error output"
    text = "".join(_outputs(notebook, "text"))
    assert "MODE=moderate  SMOKE=False" in text, f"{name}: not a moderate run"
    assert len(list(_outputs(notebook, "image"))) >= MIN_FIGURES[name]
    assert "/work/shared" not in nbformat.writes(notebook)


def test_parse_percent_format():
    cells = _make_notebooks().parse(
        "# %% [markdown]\n# # Title\n#\n# Text.\n\n"
        "# %%\nx = 1\n\n\n# %%\n# a comment\nprint(x)\n"
    )
    assert cells == [
        ("markdown", "# Title\n\nText."),
        ("code", "x = 1"),
        ("code", "# a comment\nprint(x)"),
    ]


def test_badge_only_with_a_repository(tmp_path):
    make_notebooks = _make_notebooks()
    assert make_notebooks.badge("01_quickstart", "") == ""
    mark = make_notebooks.badge("01_quickstart", "https://github.com/me/kd.git")
    assert mark.endswith(
        "(https://colab.research.google.com/github/me/kd"
        "/blob/main/examples/01_quickstart.ipynb)"
    )
    with pytest.raises(ValueError, match="KERAS_KD_REPOSITORY"):
        make_notebooks.badge("01_quickstart", "OWNER/keras_kd")
    source = tmp_path / "01_x.py"
    source.write_text("# %% [markdown]\n# # Title\n# Body.\n\n# %%\nx = 1\n")
    cells = make_notebooks.cells_of(source, "https://github.com/me/kd")
    title, blank, mark, body = cells[0][1].split("\n")
    assert (title, blank, body) == ("# Title", "", "Body.")
    assert mark.startswith("[![Open In Colab]")
    assert "REPOSITORY = 'https://github.com/me/kd'" in cells[1][1]
    assert cells[2] == ("code", "x = 1")
    assert "colab-badge" not in make_notebooks.cells_of(source, "")[0][1]


def test_install_cell_installs_from_the_clone_or_the_repository(tmp_path):
    """The install cell's logic, run from the notebooks' own source."""
    install = _make_notebooks().cells_of(
        EXAMPLES / "tutorials" / "01_quickstart.py", ""
    )[1][1]
    namespace = {}
    exec(install, namespace)  # keras_kd is importable here: installs nothing
    requirement = namespace["keras_kd_requirement"]

    clone = tmp_path / "clone"
    (clone / "keras_kd").mkdir(parents=True)
    (clone / "examples").mkdir()
    (clone / "setup.py").write_text("")
    assert requirement(clone / "examples", "") == f"{clone}[examples]"
    assert requirement(ROOT / "examples", "") == f"{ROOT}[examples]"

    colab = tmp_path / "content"
    colab.mkdir()
    url = "https://github.com/me/keras_kd"
    assert requirement(colab, url) == f"keras-kd[examples] @ git+{url}"
    with pytest.raises(RuntimeError, match="KERAS_KD_REPOSITORY="):
        requirement(colab, "")
