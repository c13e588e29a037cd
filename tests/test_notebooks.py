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
import re
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
    "05_data_free.ipynb",
    "06_domain_adaptation.ipynb",
)
CELL_TIMEOUT = 600  # seconds per cell; a smoke cell takes seconds
# The smoke runs of these notebooks execute `tf.function`s eagerly: for
# their handful of steps per fit, tracing each step cost more than running
# it (notebook 03: 87 -> 45 core-seconds). The quickstart keeps graph mode
# here, the stored outputs come from graph-mode moderate runs, and every
# other suite tests the Distiller's compiled steps.
EAGER_IN_SMOKE = NOTEBOOKS[1:]
_EAGER_CELL = "import tensorflow as tf\n\ntf.config.run_functions_eagerly(True)"
TFDS_NAME = "cifar10_keras_kd_smoke"
# Figures each notebook must render (image grids, training curves,
# per-layer plots, confusion matrices).
MIN_FIGURES = {
    "01_quickstart.ipynb": 4,
    "02_activation_boundaries.ipynb": 4,
    "03_neuron_selectivity.ipynb": 5,
    "04_bring_your_own_models.ipynb": 2,
    "05_data_free.ipynb": 2,
    "06_domain_adaptation.ipynb": 5,
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
    if name in EAGER_IN_SMOKE:
        notebook.cells.insert(0, nbformat.v4.new_code_cell(_EAGER_CELL))
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


def _colab_parts(notebook, name):
    """(badge target or None, the REQUIREMENT its install cell holds)."""
    make_notebooks = _make_notebooks()
    stem = name.removesuffix(".ipynb")
    found = re.search(
        r"\(https://colab\.research\.google\.com/github/([\w.-]+/[\w.-]+)"
        rf"/blob/(\S+)/examples/{re.escape(stem)}\.ipynb\)",
        notebook.cells[0].source,
    )
    target = found.groups() if found else None
    return target, make_notebooks.stored_setting(notebook)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_notebook_holds_a_moderate_run_on_real_data(name):
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    nbformat.validate(notebook)
    assert notebook.cells[0].source.startswith("# ")
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
    assert "/work/" not in nbformat.writes(notebook)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_stored_badge_and_install_cell_agree(name):
    """Built with or without KERAS_KD_INSTALL, badge and install agree."""
    make_notebooks = _make_notebooks()
    notebook = nbformat.read(EXAMPLES / name, as_version=4)
    target, requirement = _colab_parts(notebook, name)
    if target is None:  # built without: no badge, installs from the clone
        assert "colab-badge" not in notebook.cells[0].source
        assert requirement == ""
    else:  # built with: installs what the badge opens
        assert requirement, f"{name} has a badge but installs no requirement"
        assert make_notebooks.colab_target(requirement) == target
        assert requirement.startswith("keras-kd")
    # Exactly the cells the build makes with that setting.
    source = EXAMPLES / "tutorials" / name.replace(".ipynb", ".py")
    cells = make_notebooks.cells_of(
        source, requirement, make_notebooks.load_run_times()
    )
    assert [c.source for c in notebook.cells[:2]] == [s for _, s in cells[:2]]


def test_stored_notebooks_share_one_setting():
    settings = {
        _colab_parts(nbformat.read(EXAMPLES / name, as_version=4), name)[1]
        for name in NOTEBOOKS
    }
    assert len(settings) == 1, f"notebooks built with {settings}"


REQUIREMENTS = {
    # setting: (requirement installed, (owner/repo, ref) of the badge)
    "git+https://github.com/me/kd": (
        "keras-kd[examples] @ git+https://github.com/me/kd",
        ("me/kd", "main"),
    ),
    "git+https://github.com/me/keras_kd.git@v0.2.0": (
        "keras-kd[examples] @ git+https://github.com/me/keras_kd.git@v0.2.0",
        ("me/keras_kd", "v0.2.0"),
    ),
    "https://github.com/me/kd/releases/download/v1/"
    "keras_kd-0.1.0-py3-none-any.whl": (
        "keras-kd[examples] @ https://github.com/me/kd/releases/download/v1/"
        "keras_kd-0.1.0-py3-none-any.whl",
        ("me/kd", "v1"),
    ),
    "keras-kd[examples,cpu] @ git+https://github.com/me/kd@dev": (
        "keras-kd[examples,cpu] @ git+https://github.com/me/kd@dev",
        ("me/kd", "dev"),
    ),
}


@pytest.mark.parametrize("setting", sorted(REQUIREMENTS))
def test_colab_setting_forms(setting):
    make_notebooks = _make_notebooks()
    requirement, (repo, ref) = REQUIREMENTS[setting]
    assert make_notebooks.requirement_of(setting) == requirement
    assert make_notebooks.colab_target(setting) == (repo, ref)
    assert make_notebooks.colab_target(requirement) == (repo, ref)
    assert make_notebooks.badge("01_quickstart", setting).endswith(
        f"(https://colab.research.google.com/github/{repo}"
        f"/blob/{ref}/examples/01_quickstart.ipynb)"
    )


@pytest.mark.parametrize(
    "setting",
    [
        "https://example.com/wheels/keras_kd-0.1.0-py3-none-any.whl",
        "keras-kd==0.1.0",
        "OWNER/keras_kd",
        "https://github.com/me/kd",  # a page, not a pip requirement
        "git+https://gitlab.com/me/kd",
    ],
)
def test_a_setting_without_a_badge_fails_the_build(setting, monkeypatch):
    make_notebooks = _make_notebooks()
    with pytest.raises(ValueError) as error:
        make_notebooks.requirement_of(setting)
    message = str(error.value)
    assert "KERAS_KD_INSTALL=" in message and repr(setting) in message
    assert "git+https://github.com/<owner>/<repo>[@<ref>]" in message
    monkeypatch.setenv("KERAS_KD_INSTALL", setting)
    with pytest.raises(SystemExit):  # the command line: a usage error
        make_notebooks.main(["--check"])


def test_build_with_and_without_the_setting(tmp_path, monkeypatch):
    """All four notebooks, for Colab and for a clone, into a temp dir."""
    make_notebooks = _make_notebooks()
    setting = "git+https://github.com/me/keras_kd@v0.2.0"
    for kind, value in (("colab", setting), ("clone", "")):
        monkeypatch.setenv("KERAS_KD_INSTALL", value)
        out = tmp_path / kind
        assert make_notebooks.main(["--out", str(out)]) == 0
        assert sorted(p.name for p in out.iterdir()) == sorted(NOTEBOOKS)
        for name in NOTEBOOKS:
            notebook = nbformat.read(out / name, as_version=4)
            target, requirement = _colab_parts(notebook, name)
            if value:
                assert target == ("me/keras_kd", "v0.2.0")
                assert notebook.cells[0].source.count("colab-badge") == 1
                assert requirement == f"keras-kd[examples] @ {setting}"
            else:
                assert target is None
                assert "colab-badge" not in notebook.cells[0].source
                assert requirement == ""
            assert "Measured run time" in notebook.cells[0].source
            # The stored outputs come along.
            stored = nbformat.read(EXAMPLES / name, as_version=4)
            assert len(list(_outputs(notebook, "image"))) == len(
                list(_outputs(stored, "image"))
            )
    # Unset, the check keeps each notebook's own setting: the stored ones
    # are current whichever way they were built.
    monkeypatch.delenv("KERAS_KD_INSTALL")
    assert make_notebooks.main(["--check"]) == 0


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


def test_badge_and_run_time_in_the_first_cell(tmp_path):
    make_notebooks = _make_notebooks()
    assert make_notebooks.badge("01_quickstart", "") == ""
    source = tmp_path / "01_x.py"
    source.write_text(
        "# %% [markdown]\n# # Title\n# Body.\n#\n# <!-- run-time -->\n\n"
        "# %%\nx = 1\n"
    )
    run_times = {
        "01_x": [
            {"mode": "moderate", "seconds": 1234.5, "cpus": 2, "gpus": []},
        ]
    }
    cells = make_notebooks.cells_of(
        source, "git+https://github.com/me/kd", run_times
    )
    title, blank, mark, body, blank, statement = cells[0][1].split("\n")
    assert (title, body) == ("# Title", "Body.")
    assert mark.startswith("[![Open In Colab]")
    assert "`moderate` 21 min on 2 CPU cores, no GPU" in statement
    assert "`full` not measured yet" in statement
    assert "on a GPU not measured" in statement
    assert (
        "REQUIREMENT = 'keras-kd[examples] @ git+https://github.com/me/kd'"
        in cells[1][1]
    )
    assert cells[2] == ("code", "x = 1")
    plain = make_notebooks.cells_of(source, "", {})[0][1]
    assert "colab-badge" not in plain
    assert "`moderate` not measured yet" in plain


def test_install_cell_installs_the_requirement_or_from_the_clone(tmp_path):
    """The install cell's logic, run from the notebooks' own source."""
    make_notebooks = _make_notebooks()
    source = EXAMPLES / "tutorials" / "01_quickstart.py"
    install = make_notebooks.cells_of(source, "")[1][1]
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
    wanted = "keras-kd[examples] @ git+https://github.com/me/keras_kd@v1"
    assert requirement(colab, wanted) == wanted
    assert requirement(clone / "examples", wanted) == wanted
    with pytest.raises(RuntimeError) as error:
        requirement(colab, "")
    assert (
        "KERAS_KD_INSTALL=git+https://github.com/<owner>/keras_kd "
        "python examples/make_notebooks.py" in str(error.value)
    )
    # Built with a setting, the cell installs exactly that requirement.
    namespace = {}
    exec(
        make_notebooks.cells_of(
            source, "git+https://github.com/me/keras_kd@v1"
        )[1][1],
        namespace,
    )
    assert namespace["REQUIREMENT"] == wanted
    assert namespace["keras_kd_requirement"](colab) == wanted


def test_run_times_are_measured_and_stated():
    """run_times.json holds measurements; notebooks and README state them."""
    make_notebooks = _make_notebooks()
    run_times = make_notebooks.load_run_times()
    stems = [name.removesuffix(".ipynb") for name in NOTEBOOKS]
    assert set(run_times) <= set(stems)
    for stem, records in run_times.items():
        for record in records:
            assert record["mode"] in ("moderate", "smoke", "full"), record
            assert record["seconds"] > 0 and record["cpus"] >= 1, record
            assert isinstance(record["gpus"], list), record
    for name, stem in zip(NOTEBOOKS, stems):
        first = nbformat.read(EXAMPLES / name, as_version=4).cells[0].source
        assert make_notebooks.run_time_text(stem, run_times) in first
        assert make_notebooks.RUN_TIME_MARK not in first
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert make_notebooks.run_time_table(run_times, stems) in readme
    assert make_notebooks.readme_text(readme, run_times, stems) == readme


def test_record_run_time(tmp_path, monkeypatch):
    make_notebooks = _make_notebooks()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    notebook = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("print()")
    cell.outputs = [
        nbformat.v4.new_output(
            "stream", text="MODE=moderate  SMOKE=False  DATA='cifar10.npz'\n"
        )
    ]
    notebook.cells.append(cell)
    path = tmp_path / "run_times.json"
    make_notebooks.record_run_time("01_x", notebook, 61.26, path)
    make_notebooks.record_run_time("01_x", notebook, 75.0, path)  # replaces
    (record,) = make_notebooks.load_run_times(path)["01_x"]
    assert record["mode"] == "moderate" and record["seconds"] == 75.0
    assert record["gpus"] == [] and record["data"] == "cifar10.npz"
    assert record["cpus"] >= 1


def test_tutorials_page_is_for_users():
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    for name in NOTEBOOKS:
        assert f"]({name})" in readme, f"examples/README.md misses {name}"
    for mode in ("`full`", "`moderate`", "`smoke`"):
        assert mode in readme
    for setting in ("KERAS_KD_INSTALL", "KERAS_KD_DATA_DIR", "bundled:cifar10"):
        assert setting in readme
    # Machine paths and internal wording: tests/test_wording.py.
