import importlib.util
import inspect
import os
import pathlib
import re

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# One thread per operation: the suite runs several processes at once (two
# pytest-xdist workers, the JAX and PyTorch suites, the tests' child
# processes), and thread pools sized to every core then spin against each
# other. Child processes inherit these; a variable already set is kept.
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
# XLA (JAX's every step, TensorFlow's jit_compile) compiles the tests' small
# programs without LLVM's optimisation passes: the same values, half the
# CPU time (the JAX suite's compilation dominates it). The benchmarks and
# users compile with XLA's defaults. Every token must be a `--flag`: a
# stray word makes XLA ignore the flags after it.
os.environ.setdefault(
    "XLA_FLAGS",
    "--xla_cpu_multi_thread_eigen=false --xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true",
)

import child_suites  # noqa: E402
import keras  # noqa: E402
import pytest  # noqa: E402
from backend_utils import without_graph_optimizer  # noqa: E402

BACKEND = keras.backend.backend()
without_graph_optimizer()

# Suites that test TensorFlow-only features; under another backend they are
# skipped (and not even imported when TensorFlow is not installed).
TENSORFLOW_ONLY_MODULES = {
    "test_cli.py": "the keras-kd command reads data through tf.data",
    "test_data.py": "keras_kd.data builds tf.data pipelines",
    "test_distribute.py": "tests tf.distribute strategies",
    "test_export.py": "SavedModel / TFLite export runs in TensorFlow",
    "test_notebooks.py": "the notebooks use tf.data and the TensorFlow backend",
    "test_readme.py": "the README quickstart uses keras_kd.data (tf.data)",
    "test_resume.py": "resumes keras-kd runs (tf.data input)",
    "test_tensorboard.py": (
        "keras.callbacks.TensorBoard writes through tf.summary"
    ),
}
_TF_CALL = re.compile(r"\btf\.")
# `x.dtype == "float32"` is False for a torch.dtype; backend_utils.dtype_name
# (keras.backend.standardize_dtype) compares on every backend.
_DTYPE_VS_STRING = re.compile(r"\.dtype\s*==\s*[\"']")
HAVE_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None

# Scripts the tests run in child processes: with `--doctest-modules` (the
# README's test command) pytest would import them, and they read sys.argv
# and set up strategies or backends when imported.
SUBPROCESS_SCRIPTS = [
    "distribute_script.py",
    "jax_data_parallel_script.py",
    "resume_script.py",
    "route_script.py",
]

collect_ignore = SUBPROCESS_SCRIPTS + (
    [] if HAVE_TENSORFLOW else sorted(TENSORFLOW_ONLY_MODULES)
)


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


NUMPY_COPY_KEYWORD_ERROR = (
    r"error:__array__ implementation doesn't accept a copy keyword"
    r":DeprecationWarning"
)


def pytest_configure(config):
    # Keras 3.15 saves every variable through `np.array(variable)`, whose
    # `Variable.__array__(self, dtype=None)` lacks NumPy 2's `copy` keyword:
    # one DeprecationWarning per variable per `model.save`
    # (keras-team/keras#21288). Ignored only where Keras itself raises it;
    # raised from this project's code or tests it is an error (later
    # filters win), so the suite fails on `np.array(variable)`: tests read
    # variables through backend_utils.to_numpy. The second ignore matches
    # Keras's file path: `pytest.warns` re-emits the warnings it did not
    # expect with `warn_explicit`, which names the module by its path.
    config.addinivalue_line("filterwarnings", NUMPY_COPY_KEYWORD_ERROR)
    for keras_module in (r"keras\.src\.", r".*[/\\]keras[/\\]src[/\\]"):
        config.addinivalue_line(
            "filterwarnings",
            r"ignore:__array__ implementation doesn't accept a copy keyword"
            r":DeprecationWarning:" + keras_module,
        )
    config.addinivalue_line(
        "markers",
        "slow: takes tens of seconds (subprocesses, several fits); still "
        "runs in CI. Deselect locally with -m 'not slow'.",
    )
    config.addinivalue_line(
        "markers",
        "quick: the fast check (`pytest -m quick tests`): the float64 checks "
        "of every loss (tests/losses), one fit per installed backend and an "
        "export with its parity check (tests/test_quick.py).",
    )
    if BACKEND == "tensorflow" and not _is_xdist_worker(config):
        child_suites.prepare()  # the workers inherit the folder's name
    config.addinivalue_line(
        "markers",
        "tensorflow_only(reason): needs the TensorFlow backend; skipped "
        "under KERAS_BACKEND=jax / torch.",
    )


# What the fast check runs (see the `quick` marker): these folders and files.
QUICK = ("losses", "test_quick.py")


def pytest_itemcollected(item):
    parts = pathlib.Path(str(item.fspath)).parts
    if parts[-2] in QUICK or parts[-1] in QUICK:
        item.add_marker(pytest.mark.quick)


def _tensorflow_only_reason(item):
    module = os.path.basename(str(item.fspath))
    if module in TENSORFLOW_ONLY_MODULES:
        return TENSORFLOW_ONLY_MODULES[module]
    marker = item.get_closest_marker("tensorflow_only")
    if marker is not None:
        return marker.kwargs.get("reason") or (
            marker.args[0] if marker.args else "TensorFlow only"
        )
    # Tests written against TensorFlow's API (tf.GradientTape, tf.function,
    # tf.cast ...) rather than keras.ops / tests/backend_utils.py.
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function else ""
    except (OSError, TypeError):
        source = ""
    if _TF_CALL.search(source):
        return (
            "calls TensorFlow directly (tf.*); backend-neutral helpers: "
            "tests/backend_utils.py"
        )
    return None


def _torch_skip_reason(item):
    function = getattr(item, "function", None)
    try:
        source = inspect.getsource(function) if function else ""
    except (OSError, TypeError):
        source = ""
    if _DTYPE_VS_STRING.search(source):
        return (
            "compares `x.dtype` with a string, which a torch.dtype never "
            "equals; use backend_utils.dtype_name(x)"
        )
    return None


_WAIT = "test_backend_neutral_suite_passes"
_QUICK_FIT = "test_one_fit_on_each_installed_backend"


def _is_xdist_worker(config):
    return hasattr(config, "workerinput")


def _keep_xdist_groups(config, items):
    """`--dist loadgroup` under pytest 9.2: pytest-xdist (3.8) puts a test
    into its `xdist_group` by appending `@NAME` to `item._nodeid`, which
    pytest 9.2 no longer reads (a test's id is a structured `item._id`), so
    every group was split over the workers and each worker built the
    groups' shared fixtures again. Here, after xdist's own hook, the same
    suffix goes where pytest 9.2 reads it; under older pytest xdist has
    added it already. (tests/test_readme.py checks that groups hold.)"""
    if not (_is_xdist_worker(config) and config.getvalue("loadgroup")):
        return
    for item in items:
        names = {
            str(mark.args[0] if mark.args else mark.kwargs.get("name", ""))
            for mark in item.iter_markers("xdist_group")
        }
        node_id = getattr(item, "_id", None)
        if not names or "@" in item.nodeid or not hasattr(node_id, "parse"):
            continue
        item._id = node_id.parse(f"{item.nodeid}@{'_'.join(sorted(names))}")


@pytest.hookimpl(trylast=True)  # after `-k` / `-m` have deselected items
def pytest_collection_modifyitems(config, items):
    _keep_xdist_groups(config, items)
    if BACKEND == "tensorflow":
        # Start the other backends' suites now, beside this run
        # (tests/child_suites.py), and wait for them last: the rest of this
        # run keeps a core busy meanwhile. Under pytest-xdist the controller
        # starts them (below), as it outlives every worker.
        waits = [
            item for item in items if getattr(item, "originalname", "") == _WAIT
        ]
        if not _is_xdist_worker(config):
            for item in waits:
                child_suites.start(item.callspec.params["backend"])
        # The fast check's one fit per backend (tests/test_quick.py) is
        # covered here by this suite and by each child suite waited for.
        covered = {item.callspec.params["backend"] for item in waits}
        if covered:
            covered.add("tensorflow")
        for item in items:
            if getattr(item, "originalname", "") == _QUICK_FIT and (
                item.callspec.params["backend"] in covered
            ):
                item.add_marker(
                    pytest.mark.skip(
                        reason="the full suite runs this backend's suite"
                    )
                )
        # The slow tests first, the waits last: with `-n 2` the long tests
        # then spread over both workers instead of ending the run alone.
        rest = [item for item in items if item not in waits]
        rest.sort(key=lambda item: item.get_closest_marker("slow") is None)
        items[:] = rest + waits
        return
    for item in items:
        reason = _tensorflow_only_reason(item)
        if reason:
            item.add_marker(
                pytest.mark.skip(
                    reason=f"TensorFlow only ({reason}); "
                    f"KERAS_BACKEND={BACKEND}"
                )
            )
        elif BACKEND == "torch" and _torch_skip_reason(item):
            item.add_marker(pytest.mark.skip(reason=_torch_skip_reason(item)))


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_node_collection_finished(node, ids):
    """pytest-xdist's controller: start the suites the workers will wait for."""
    for backend in child_suites.SUITES:
        if any(f"{_WAIT}[{backend}]" in nodeid for nodeid in ids):
            child_suites.start(backend)
