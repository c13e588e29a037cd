"""The backend-neutral tests again under JAX and PyTorch, in child processes.

The TensorFlow run starts them as soon as its tests are collected, so that
they run beside it, and `test_backends.py::test_backend_neutral_suite_passes`
waits for them last. With `pytest -n 2` (pytest-xdist) the controller
process starts them (conftest's `pytest_xdist_node_collection_finished`): it
lives until every worker is done, so a worker that finishes early cannot take
a running child with it. Whichever process runs the waiting test reads the
child's output and exit status from files in a folder shared by the run
(`KERAS_KD_CHILD_SUITES`), so the waiting test may run in any worker.
"""

import atexit
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from backend_utils import BACKEND
from backend_utils import REPO_ROOT
from backend_utils import TESTS_DIR

# What each extra backend re-runs (paths relative to the repository). The
# slow, TensorFlow-flavoured suites (test_distiller's 25-epoch fits, XLA,
# mixed precision on every policy pair) stay on TensorFlow; their guarantees
# are checked on every backend by test_backend_behaviour.py.
_NEUTRAL = [
    "tests/losses",
    "tests/test_taps.py",
    "tests/test_backend_behaviour.py",
    "tests/test_numpy_warnings.py",
    "tests/test_methods.py",
    "tests/test_schedules.py",
    "tests/test_procedures.py",
    "tests/test_contrastive_bank.py",
    "tests/test_boundary.py",
    "tests/test_boundary_reference.py",
    "tests/test_route.py",
    "tests/test_inversion.py",
    "tests/test_domain_adaptation.py",
    "tests/test_function_matching.py",
]
SUITES = {"jax": list(_NEUTRAL), "torch": list(_NEUTRAL)}
# Run with them: the docstring examples of the loss modules.
DOCTESTS = ["--doctest-modules", "keras_kd/losses"]
TIMEOUT = 2400  # seconds from a child's start
FOLDER_VARIABLE = "KERAS_KD_CHILD_SUITES"
MODULES = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}

_STARTED = []  # (process, folder) started by this process
_OWNED = []  # the run folder, when this process made it


def installed(backend):
    return importlib.util.find_spec(MODULES[backend]) is not None


def env(backend, **extra):
    """The environment of a child process running `backend`."""
    variables = dict(os.environ)
    variables.update(extra)
    variables["KERAS_BACKEND"] = backend
    variables["TF_CPP_MIN_LOG_LEVEL"] = "2"
    variables["PYTHONPATH"] = os.pathsep.join(
        p for p in (REPO_ROOT, TESTS_DIR, os.environ.get("PYTHONPATH")) if p
    )
    return variables


def prepare():
    """Makes the run's folder (once; child processes inherit its name)."""
    if not os.environ.get(FOLDER_VARIABLE):
        folder = tempfile.mkdtemp(prefix="keras_kd_suites_")
        os.environ[FOLDER_VARIABLE] = folder
        _OWNED.append(folder)
    return os.environ[FOLDER_VARIABLE]


def _write(path, text):
    """Atomically: a reader sees the whole file or none."""
    with open(path + ".part", "w") as f:
        f.write(text)
    os.replace(path + ".part", path)


def _reap(process, folder, log):
    returncode = process.wait()
    log.close()
    _write(os.path.join(folder, "returncode"), str(returncode))


def start(backend):
    """Starts `backend`'s suite in the background, once per run."""
    if BACKEND != "tensorflow" or not installed(backend):
        return
    folder = os.path.join(prepare(), backend)
    try:
        os.mkdir(folder)  # atomic: one process wins
    except FileExistsError:
        return
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        # No `-W ignore::DeprecationWarning`: the command line would win
        # over conftest's rule that NumPy's copy-keyword warning is an error
        # in this project's code (tests/test_numpy_warnings.py).
        *SUITES[backend],
        *DOCTESTS,
    ]
    log = open(os.path.join(folder, "log"), "w")
    process = subprocess.Popen(
        command,
        env=env(backend),
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _STARTED.append((process, folder))
    _write(
        os.path.join(folder, "started.json"),
        json.dumps(
            {"command": command, "pid": process.pid, "time": time.time()}
        ),
    )
    threading.Thread(
        target=_reap, args=(process, folder, log), daemon=True
    ).start()


def _read(path):
    with open(path) as f:
        return f.read()


def wait(backend, poll=1.0):
    """(command, exit status, output) of `backend`'s suite, once it ends.

    The exit status is None when the child outlived `TIMEOUT` and was
    killed without its starter reporting back.
    """
    folder = os.path.join(prepare(), backend)
    if not os.path.isdir(folder):
        start(backend)
    started = os.path.join(folder, "started.json")
    while not os.path.exists(started):
        time.sleep(poll / 10)
    info = json.loads(_read(started))
    returncode_file = os.path.join(folder, "returncode")
    deadline = info["time"] + TIMEOUT
    while not os.path.exists(returncode_file):
        if time.time() > deadline:
            try:
                os.kill(info["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.time() + 30  # for its starter to report back
            while time.time() < deadline:
                if os.path.exists(returncode_file):
                    break
                time.sleep(poll)
            break
        time.sleep(poll)
    returncode = (
        int(_read(returncode_file)) if os.path.exists(returncode_file) else None
    )
    return info["command"], returncode, _read(os.path.join(folder, "log"))


@atexit.register
def stop():
    """An interrupted run leaves no child suite running and no folder."""
    for process, _ in _STARTED:
        if process.poll() is None:
            process.kill()
            process.wait()
    for folder in _OWNED:
        shutil.rmtree(folder, ignore_errors=True)
    del _OWNED[:]
