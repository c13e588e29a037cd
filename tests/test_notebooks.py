"""The tutorial notebooks run top to bottom in smoke mode, offline.

Each notebook in `examples/` is executed in a fresh IPython kernel with
`KERAS_KD_SMOKE=1` (a few hundred images, one or two short epochs) on local
data only: the bundled Fashion-MNIST subset, a tiny CIFAR-shaped `.npz`
written here, or a tfds data directory prepared from that archive with
`keras_kd.data.prepare_tfds_directory`. A failing cell fails the test with its
traceback; the executed notebook is kept in the test's temporary directory.
The notebooks need the `examples` extra (nbclient, ipykernel, matplotlib,
keras-cv, keras-hub).
"""

import importlib.util
import pathlib
import sys
import time

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"
NOTEBOOKS = (
    "01_quickstart.ipynb",
    "02_activation_boundaries.ipynb",
    "03_neuron_selectivity.ipynb",
    "04_bring_your_own_models.ipynb",
)
CELL_TIMEOUT = 600  # seconds per cell; a smoke cell takes seconds
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer",
    "dog", "frog", "horse", "ship", "truck",
)
TFDS_NAME = "cifar10_keras_kd_smoke"
# Figures each notebook must render in smoke mode (image grids, training
# curves, per-layer plots, confusion matrices).
MIN_FIGURES = {
    "01_quickstart.ipynb": 4,
    "02_activation_boundaries.ipynb": 4,
    "03_neuron_selectivity.ipynb": 4,
    "04_bring_your_own_models.ipynb": 1,
}


@pytest.fixture(scope="module")
def cifar_npz(tmp_path_factory):
    """A CIFAR-10-shaped archive: random uint8 32x32x3 images, 10 classes."""
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "cifar10_tiny.npz"
    np.savez_compressed(
        path,
        x_train=rng.integers(0, 256, (320, 32, 32, 3), dtype=np.uint8),
        y_train=np.arange(320, dtype=np.int64) % 10,
        x_test=rng.integers(0, 256, (128, 32, 32, 3), dtype=np.uint8),
        y_test=np.arange(128, dtype=np.int64) % 10,
        class_names=np.array(CIFAR10_CLASSES),
    )
    return path


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
        return {"KERAS_KD_DATA": "bundled"}
    if notebook.startswith("02"):
        return {
            "KERAS_KD_DATA": TFDS_NAME,
            "KERAS_KD_DATA_DIR": str(request.getfixturevalue("cifar_tfds_dir")),
        }
    return {"KERAS_KD_DATA": str(request.getfixturevalue("cifar_npz"))}


def _outputs(notebook, kind):
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "image" and "image/png" in output.get("data", {}):
                yield output
            elif kind == "text":
                yield output.get("text", "") + output.get("data", {}).get("text/plain", "")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, tmp_path, monkeypatch, request):
    env = {
        "KERAS_KD_SMOKE": "1",
        "KERAS_BACKEND": "tensorflow",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "CUDA_VISIBLE_DEVICES": "",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        **_data_env(name, request),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KERAS_KD_TEACHER", raising=False)
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
        print(f"{name}: {time.monotonic() - started:.0f} s, executed copy in {tmp_path}")

    figures = list(_outputs(notebook, "image"))
    assert len(figures) >= MIN_FIGURES[name], (
        f"{name} rendered {len(figures)} figures; expected at least {MIN_FIGURES[name]}"
    )
    text = "".join(_outputs(notebook, "text"))
    assert "SMOKE=True" in text
    if name.startswith("04"):
        # A library installed here must not be skipped by the notebook.
        for module, section in (("keras_cv", "=== keras-cv"), ("keras_hub", "=== KerasHub")):
            if importlib.util.find_spec(module) is not None:
                assert section in text, f"{name} skipped the {module} section"


def test_notebooks_are_generated_and_stored_without_outputs():
    sys.path.insert(0, str(EXAMPLES))
    try:
        import make_notebooks
    finally:
        sys.path.remove(str(EXAMPLES))
    assert make_notebooks.main(["--check"]) == 0, (
        "examples/*.ipynb differ from examples/make_notebooks.py: rerun it"
    )
    for name in NOTEBOOKS:
        notebook = nbformat.read(EXAMPLES / name, as_version=4)
        nbformat.validate(notebook)
        first = notebook.cells[0].source
        assert "colab.research.google.com/assets/colab-badge.svg" in first
        assert f"/blob/main/examples/{name}" in first
        install = notebook.cells[1].source
        assert '"google.colab" in sys.modules' in install and "if IN_COLAB:" in install
        assert "KERAS_KD_SMOKE" in notebook.cells[2].source
        for cell in notebook.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, name
        assert "/work/shared" not in nbformat.writes(notebook)
