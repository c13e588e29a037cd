"""Every Keras backend from one `pytest tests` run (the main run is TensorFlow).

- The backend-neutral tests run again in subprocesses under
  KERAS_BACKEND=jax and KERAS_BACKEND=torch (`SUITES`); the child's output is
  shown when it fails.
- A distiller saved (`.keras`) under each backend loads under another one
  (a cycle: TensorFlow -> PyTorch -> JAX -> TensorFlow) with the same
  predictions and loss settings, and trains after loading.
- JAX scale-out: `keras.distribution.DataParallel` over two virtual CPU
  devices, and over two `jax.distributed` processes on 127.0.0.1, give the
  same update as one device on the same global batches.

These tests start other backends, so they run only from the TensorFlow run
(`python -m pytest tests`); under another backend they are skipped.
"""

import contextlib
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys

import child_suites
import numpy as np
import pytest
from backend_utils import BACKEND
from backend_utils import REPO_ROOT
from backend_utils import TESTS_DIR
from child_suites import SUITES

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        BACKEND != "tensorflow",
        reason="starts the other backends from the TensorFlow run",
    ),
]


def _installed(module):
    return importlib.util.find_spec(module) is not None


def _needs(backend):
    module = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}[
        backend
    ]
    return pytest.mark.skipif(
        not _installed(module),
        reason=f"{module} is not installed (pip install -e '.[{backend}]')",
    )


def _env(backend, **extra):
    return child_suites.env(backend, **extra)


@pytest.mark.parametrize(
    "backend", [pytest.param(b, marks=_needs(b)) for b in SUITES]
)
def test_backend_neutral_suite_passes(backend):
    command, returncode, output = child_suites.wait(backend)
    summary = output.strip().splitlines()[-1] if output.strip() else ""
    assert returncode == 0, (
        f"KERAS_BACKEND={backend} {' '.join(command[1:])} exited with "
        f"{returncode}:\n{output[-12000:]}"
    )
    passed = re.search(r"(\d+) passed", summary)
    assert passed and int(passed.group(1)) >= 50, summary
    print(f"KERAS_BACKEND={backend}: {summary}")


# --- .keras files move between backends --------------------------------------

_SAVE_AND_LOAD = """
import json, sys
import keras, numpy as np
from builders import all_losses, cnn, data, sparse_ce
from keras_kd import Distiller
x, y = data(n=8)
save_to, load_from = sys.argv[1], sys.argv[2:]
out = {}
for i, stem in enumerate(load_from):
    loaded = keras.saving.load_model(stem + ".keras")
    assert isinstance(loaded, Distiller), type(loaded)
    predictions = np.asarray(loaded.predict(x, verbose=0))
    expected = np.load(stem + ".npy")
    temperature = float(keras.ops.convert_to_numpy(
        loaded.get_loss("logits_distillation").temperature))
    out[stem] = dict(max_diff=float(np.abs(predictions - expected).max()),
                     scale=float(np.abs(expected).max()),
                     temperature=temperature,
                     ab_weight=loaded.loss_weights["activation_boundary"])
    if i == 0:
        # Re-compiled before training: Keras 3.15 saves the optimizer under
        # its backend's class (e.g. keras.src.backend.torch.optimizers.
        # torch_adam), which cannot update another backend's variables.
        loaded.compile(optimizer="adam", loss=sparse_ce())
        logs = loaded.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        out[stem]["loss_after_load"] = logs["loss"][-1]
if save_to != "-":
    keras.utils.set_random_seed(0)
    distiller = Distiller(cnn(8, "teacher"), cnn(4, "student", fused=True),
                          all_losses())
    distiller.compile(optimizer="adam", loss=sparse_ce())
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    distiller.get_loss("logits_distillation").temperature.assign(2.5)
    distiller.set_loss_weights(activation_boundary=0.5)
    distiller.save(save_to + ".keras")
    np.save(save_to + ".npy", distiller.predict(x, verbose=0))
print(json.dumps(out))
"""


def _run_here(code, *args):
    """`code` run as a script in this process (`sys.argv[1:] = args`): the
    JSON line it prints."""
    saved, printed = sys.argv, io.StringIO()
    sys.argv = ["-c", *args]
    try:
        with contextlib.redirect_stdout(printed):
            exec(
                compile(code, "<child script>", "exec"),
                {"__name__": "__main__"},
            )
    finally:
        sys.argv = saved
    return json.loads(
        [x for x in printed.getvalue().splitlines() if x.startswith("{")][-1]
    )


def _run_script(code, backend, *args, timeout=600):
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=_env(backend),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, (
        f"KERAS_BACKEND={backend} child exited with {out.returncode}:\n"
        f"{out.stdout[-4000:]}\n{out.stderr[-8000:]}"
    )
    return json.loads(
        [line for line in out.stdout.splitlines() if line.startswith("{")][-1]
    )


def test_saved_under_one_backend_loads_under_another(tmp_path):
    # A cycle: each installed backend loads the file the one before it
    # saved, then saves its own, and this process (TensorFlow) loads the
    # last one: every backend saves a file another loads and loads a file
    # another saved, with one child per other backend.
    backends = [BACKEND] + [
        b
        for b in ("torch", "jax", "tensorflow")
        if b != BACKEND
        and _installed(
            {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[b]
        )
    ]
    if len(backends) < 2:
        pytest.skip("needs a second backend (pip install -e '.[jax,torch]')")
    stems = {b: str(tmp_path / b) for b in backends}

    def run(backend, *args):
        if backend == BACKEND:
            return _run_here(_SAVE_AND_LOAD, *args)
        return _run_script(_SAVE_AND_LOAD, backend, *args)

    results = {backends[0]: run(backends[0], stems[backends[0]])}
    for before, b in zip(backends, backends[1:]):
        results[b] = run(b, stems[b], stems[before])
    results[backends[0]].update(run(backends[0], "-", stems[backends[-1]]))
    for loader, saver in zip(backends, backends[-1:] + backends[:-1]):
        r = results[loader][stems[saver]]
        where = f"saved under {saver}, loaded under {loader}"
        # Same weights, different kernels: float32 rounding only.
        assert r["max_diff"] <= 1e-5 * max(1.0, r["scale"]), (where, r)
        assert r["temperature"] == 2.5, where
        assert r["ab_weight"] == 0.5, where
        assert np.isfinite(r["loss_after_load"]), where  # and it trains


# --- JAX scale-out -----------------------------------------------------------

_SCRIPT = os.path.join(TESTS_DIR, "jax_data_parallel_script.py")
_TWO_DEVICES = {
    "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=2"
}
# Measured on CPU (jax 0.10.2): largest weight difference 4.8e-7, BatchNorm
# statistics 4.7e-9 (a different summation order over the two halves).
ATOL = 1e-5


def _jax_run(*args, extra_env=None, timeout=600):
    out = subprocess.run(
        [sys.executable, _SCRIPT, *args],
        env=_env("jax", **(extra_env or {})),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, (
        f"{' '.join(args)} exited with {out.returncode}:\n"
        f"{out.stdout[-3000:]}\n{out.stderr[-8000:]}"
    )
    return json.loads(
        [line for line in out.stdout.splitlines() if line.startswith("{")][-1]
    )


def _assert_same_update(single, parallel):
    assert set(single["weights"]) == set(parallel["weights"])
    for key in single["weights"]:
        np.testing.assert_allclose(
            parallel["weights"][key],
            single["weights"][key],
            rtol=0,
            atol=ATOL,
            err_msg=key,
        )
    for key in single["batch_norm_statistics"]:
        np.testing.assert_allclose(
            parallel["batch_norm_statistics"][key],
            single["batch_norm_statistics"][key],
            rtol=0,
            atol=ATOL,
            err_msg=key,
        )
    np.testing.assert_allclose(parallel["loss"], single["loss"], rtol=1e-5)


@pytest.fixture(scope="module")
def data_parallel():
    """The `DataParallel` run, with the one-device run of the same process."""
    return _jax_run("data_parallel", extra_env=_TWO_DEVICES)


@pytest.fixture(scope="module")
def one_device(data_parallel):
    return data_parallel["single"]


# One pytest-xdist worker runs both (they share the one-device run).
@pytest.mark.xdist_group("jax_scale_out")
@_needs("jax")
def test_jax_data_parallel_two_devices_matches_one_device(
    data_parallel, one_device
):
    parallel = data_parallel
    assert parallel["devices"] == 2
    assert parallel["distribution"] == "DataParallel"
    assert parallel["variable_devices"] == 2  # replicated on both devices
    _assert_same_update(one_device, parallel)


@pytest.mark.xdist_group("jax_scale_out")
@_needs("jax")
def test_jax_distributed_two_processes_match_one_device(one_device):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    processes = [
        subprocess.Popen(
            [sys.executable, _SCRIPT, "multiprocess", str(i), port],
            env=_env("jax"),
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = []
    try:
        for p in processes:
            outputs.append(p.communicate(timeout=300))
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()
    for i, (p, (stdout, stderr)) in enumerate(zip(processes, outputs)):
        assert p.returncode == 0, (
            f"process {i}:\n{stdout[-3000:]}\n{stderr[-8000:]}"
        )
        result = json.loads(
            [line for line in stdout.splitlines() if line.startswith("{")][-1]
        )
        assert result["devices"] == 2 and result["variable_devices"] == 2
        _assert_same_update(one_device, result)
