"""Route-constrained optimisation: the route, its stages and its anchors.

Backend-neutral (tests/test_backends.py runs it under JAX and PyTorch too),
except the kill-and-resume tests, which start TensorFlow subprocesses
(tests/route_script.py).
"""

import json
import os
import signal
import subprocess
import sys

import keras
import numpy as np
import pytest
from backend_utils import BACKEND
from backend_utils import to_numpy

from keras_kd import Distiller
from keras_kd import callbacks
from keras_kd import losses as L
from keras_kd.procedures import Procedure
from keras_kd.procedures import Route
from keras_kd.procedures import RouteConstrainedOptimization
from keras_kd.procedures import RouteRecorder
from keras_kd.procedures import equal_interval_anchors
from keras_kd.procedures import greedy_next_anchor

SCRIPT = os.path.join(os.path.dirname(__file__), "route_script.py")


def _model(name, hidden=8):
    inputs = keras.Input((4,))
    x = keras.layers.Dense(hidden, name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(3, name="out")(x), name=name)


def _anchor_files(directory, biases, hidden=8):
    """Anchors whose logits are their output bias whatever the input."""
    teacher = _model("teacher", hidden)
    paths = []
    for k, bias in enumerate(biases):
        weights = [np.zeros_like(w) for w in teacher.get_weights()]
        weights[-1][:] = bias
        teacher.set_weights(weights)
        path = os.path.join(directory, f"anchor{k}.weights.h5")
        teacher.save_weights(path)
        paths.append(path)
    return paths


class _Probe(Procedure):
    """Logs the teacher's first logit as seen inside the step (weight 0)."""

    term_names = ("probe",)

    def default_term_weights(self):
        return {"probe": 0.0}

    def terms(self, context):
        teacher = keras.ops.cast(context.teacher[0], "float32")
        return {"probe": keras.ops.mean(teacher[:, 0])}


def _data(n=32):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), rng.integers(0, 3, n)


def _distil(procedure, epochs, learning_rate=1e-3, losses=None):
    distiller = Distiller(
        _model("teacher"),
        _model("student"),
        losses or L.LogitsDistillation(),
        procedures=[procedure, _Probe()],
    )
    distiller.compile(
        keras.optimizers.SGD(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x, y = _data()
    history = distiller.fit(
        x,
        y,
        epochs=epochs,
        batch_size=8,
        verbose=0,
        callbacks=callbacks.for_distiller(distiller),
    )
    return distiller, history.history["probe_loss"]


@pytest.mark.parametrize("features", [False, True], ids=["kd", "kd_rkd"])
def test_equal_intervals_the_step_reads_each_stage_anchor(tmp_path, features):
    # Anchor k's logits are (k + 1, ...): the probe reads which anchor the
    # compiled step used (JAX's trainer holds its own copy of the variables).
    paths = _anchor_files(tmp_path, [k + 1.0 for k in range(6)])
    procedure = RouteConstrainedOptimization(paths, stages=3, verbose=0)
    losses = None
    if features:  # with a feature loss on a hidden layer
        losses = [
            L.LogitsDistillation(),
            L.RelationalKnowledge("hidden", "hidden"),
        ]
    distiller, probe = _distil(procedure, epochs=6, losses=losses)
    np.testing.assert_allclose(probe, [2, 2, 4, 4, 6, 6], rtol=1e-6)
    assert int(to_numpy(procedure.stage)) == 2
    assert int(to_numpy(procedure.anchor)) == 5
    # The teacher stays frozen: it holds the last anchor exactly.
    bias = to_numpy(distiller.teacher.get_layer("out").bias)
    np.testing.assert_array_equal(bias, np.full(3, 6.0, "float32"))


def test_equal_interval_anchors_and_stage_lengths(tmp_path):
    assert equal_interval_anchors(6, 3) == [1, 3, 5]
    assert equal_interval_anchors(5, 2) == [2, 4]
    assert equal_interval_anchors(4, 4) == [0, 1, 2, 3]
    assert equal_interval_anchors(7, 1) == [6]
    paths = _anchor_files(tmp_path, [1.0, 2.0, 3.0])
    procedure = RouteConstrainedOptimization(
        paths, stages=3, stage_epochs=1, verbose=0
    )
    _, probe = _distil(procedure, epochs=4)  # the last stage continues
    np.testing.assert_allclose(probe, [1, 2, 3, 3], rtol=1e-6)
    with pytest.raises(ValueError, match="3 stages need at least 3"):
        RouteConstrainedOptimization(paths[:2], stages=3)


def test_greedy_next_anchor_follows_the_paper_rule():
    h = [1.0, 1.5, 1.7, 2.0, 5.0]
    # r_0j = 0.5, 0.7, 1.0, 4.0: first above delta = 0.8 at j = 3 -> 2.
    assert greedy_next_anchor(h, 0, 0.8) == 2
    # None above delta: the last anchor.
    assert greedy_next_anchor(h, 0, 10.0) == 4
    # r_01 = 0.5 > 0.4 already: the rule's j - 1 = 0 would not advance.
    assert greedy_next_anchor(h, 0, 0.4) == 1
    # From anchor 2 (H = 1.7): r = 0.18, 1.94 -> 3.
    assert greedy_next_anchor(h, 2, 0.8) == 3
    assert greedy_next_anchor(h, 4, 0.8) == 4


def _kl_to_uniform(bias):
    """float64 KL(softmax(bias) || uniform)."""
    bias = np.asarray(bias, "float64")
    p = np.exp(bias - bias.max())
    p /= p.sum()
    return float(np.sum(p * np.log(p * len(p))))


def test_greedy_search_measures_and_chooses_on_held_out_batches(tmp_path):
    # The student is frozen at zero weights (SGD with rate 0): uniform
    # predictions, so H_j = KL(softmax(bias_j) || uniform), in float64.
    biases = [[0, 0, 0], [0.5, 0, 0], [0.7, 0, 0], [1.5, 0, 0], [3, 0, 0]]
    paths = _anchor_files(tmp_path, biases)
    x, _ = _data(48)
    procedure = RouteConstrainedOptimization(
        paths,
        stages=3,
        strategy="greedy",
        search_data=x,
        relaxation=2.5,
        verbose=0,
    )
    expected_h = [_kl_to_uniform(b) for b in biases]
    distiller = Distiller(
        _model("teacher"),
        _model("student"),
        L.LogitsDistillation(),
        procedures=[procedure, _Probe()],
    )
    distiller.student.set_weights(
        [np.zeros_like(w) for w in distiller.student.get_weights()]
    )
    measured = procedure.divergences(1)
    assert measured[0] == float("inf")
    np.testing.assert_allclose(measured[1:], expected_h[1:], rtol=1e-4)
    # After stage 0 (anchor 0, H_0 = 0 -> every ratio is huge): anchor 1.
    # Stage 2 is the last stage: the converged teacher.
    distiller.compile(
        keras.optimizers.SGD(0.0),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    xs, ys = _data()
    history = distiller.fit(
        xs,
        ys,
        epochs=3,
        batch_size=8,
        verbose=0,
        callbacks=callbacks.for_distiller(distiller),
    )
    np.testing.assert_allclose(
        history.history["probe_loss"], [0.0, 0.5, 3.0], atol=1e-6
    )
    # From anchor 1 (H_1) with delta = 2.5, the rule on the float64 H.
    chosen = greedy_next_anchor(expected_h, 1, 2.5)
    assert chosen == greedy_next_anchor(procedure.divergences(1), 1, 2.5)
    assert chosen == 2  # r_12 = 0.98, r_13 = 7.2 > 2.5


def test_greedy_needs_held_out_training_batches(tmp_path):
    paths = _anchor_files(tmp_path, [1.0, 2.0])
    with pytest.raises(ValueError, match="search_data=.*never the test set"):
        RouteConstrainedOptimization(paths, stages=2, strategy="greedy")


def test_recorder_writes_every_anchor_and_the_route_reads_them(tmp_path):
    teacher = _model("teacher")
    teacher.compile("sgd", "mse")
    seen = {}

    class Keep(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            seen[epoch + 1] = [np.array(w) for w in self.model.get_weights()]

    x, _ = _data()
    directory = tmp_path / "route"
    teacher.fit(
        x,
        np.zeros((32, 3)),
        epochs=5,
        batch_size=8,
        verbose=0,
        callbacks=[Keep(), RouteRecorder(directory, every_epochs=2)],
    )
    with open(directory / "route.json") as f:
        manifest = json.load(f)
    # Epochs 2 and 4, and the converged teacher (epoch 5) at the end.
    assert [a["epoch"] for a in manifest["anchors"]] == [2, 4, 5]
    assert [a["step"] for a in manifest["anchors"]] == [8, 16, 20]
    assert not [n for n in os.listdir(directory) if n.startswith(".tmp-")]
    route = Route.from_directory(directory)
    assert route.positions == [2, 4, 5]
    probe = _model("teacher")
    for index, epoch in enumerate(route.positions):
        route.load(index, probe)
        for a, b in zip(probe.get_weights(), seen[epoch]):
            np.testing.assert_array_equal(a, b)


def test_recorder_steps_and_listed_epochs(tmp_path):
    teacher = _model("teacher")
    teacher.compile("sgd", "mse")
    x, _ = _data()
    teacher.fit(
        x,
        np.zeros((32, 3)),
        epochs=3,
        batch_size=8,
        verbose=0,
        callbacks=[RouteRecorder(tmp_path / "s", every_steps=5)],
    )
    assert Route.from_directory(tmp_path / "s").positions == [5, 10, 12]
    teacher.fit(
        x,
        np.zeros((32, 3)),
        epochs=3,
        batch_size=8,
        verbose=0,
        callbacks=[RouteRecorder(tmp_path / "e", at_epochs=[1], final=False)],
    )
    assert Route.from_directory(tmp_path / "e").positions == [1]


def test_recorder_never_writes_over_a_file_it_did_not_write(tmp_path):
    directory = tmp_path / "route"
    directory.mkdir()
    foreign = directory / "anchor-epoch-00001.weights.h5"
    foreign.write_bytes(b"a user's file")
    teacher = _model("teacher")
    teacher.compile("sgd", "mse")
    x, _ = _data()
    with pytest.raises(FileExistsError, match="not an anchor of the route"):
        teacher.fit(
            x,
            np.zeros((32, 3)),
            epochs=1,
            verbose=0,
            callbacks=[RouteRecorder(directory)],
        )
    assert foreign.read_bytes() == b"a user's file"


def test_route_from_files_fails_clearly_and_leaves_the_teacher(tmp_path):
    paths = _anchor_files(tmp_path, [1.0, 2.0])
    with pytest.raises(FileNotFoundError, match="do not exist"):
        Route.from_files([paths[0], str(tmp_path / "missing.weights.h5")])
    other = tmp_path / "x.txt"
    other.write_text("")
    with pytest.raises(ValueError, match=r"\.weights\.h5"):
        Route.from_files([str(other)])
    with pytest.raises(TypeError, match="list of files"):
        Route.from_files(paths[0])
    wide = _model("wide", hidden=16)
    wide_path = str(tmp_path / "wide.weights.h5")
    wide.save_weights(wide_path)
    teacher = _model("teacher")
    before = [np.array(w) for w in teacher.get_weights()]
    with pytest.raises(ValueError, match="Anchor 1 of the route.*teacher"):
        Distiller(
            teacher,
            _model("student"),
            L.LogitsDistillation(),
            procedures=RouteConstrainedOptimization(
                [paths[0], wide_path], stages=2
            ),
        )
    for a, b in zip(teacher.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_a_keras_file_is_an_anchor(tmp_path):
    teacher = _model("teacher")
    weights = [np.full_like(w, 0.5) for w in teacher.get_weights()]
    teacher.set_weights(weights)
    path = str(tmp_path / "teacher.keras")
    teacher.save(path)
    route = Route.from_files([path])
    probe = _model("teacher")
    route.load(0, probe)
    for a, b in zip(probe.get_weights(), weights):
        np.testing.assert_array_equal(a, b)


# --- killed and resumed (TensorFlow subprocesses) ---------------------------


def _run(*args, pause=False):
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="2")
    process = subprocess.Popen(
        [sys.executable, SCRIPT, *map(str, args)],
        env=env,
        cwd=os.path.dirname(SCRIPT),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if not pause:
        output, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output[-4000:]
        return
    lines = []
    for line in process.stdout:
        lines.append(line)
        if "PAUSED" in line:
            break
    else:
        process.wait()
        pytest.fail("the run ended without pausing:\n" + "".join(lines)[-4000:])
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL


@pytest.mark.slow
@pytest.mark.skipif(BACKEND != "tensorflow", reason="TensorFlow subprocesses")
def test_killed_teacher_and_killed_distillation_resume_on_the_route(tmp_path):
    route = tmp_path / "route"
    # The teacher is killed at the start of epoch 3 (from 0): anchors 1-3.
    _run(
        "teacher",
        route,
        tmp_path / "teacher_backup",
        "--pause-at",
        3,
        pause=True,
    )
    files = sorted(os.listdir(route))
    written = {
        name: (route / name).read_bytes()
        for name in files
        if name.endswith(".weights.h5")
    }
    assert sorted(written) == [
        f"anchor-epoch-0000{e}.weights.h5" for e in (1, 2, 3)
    ]
    assert [
        a["epoch"]
        for a in json.loads((route / "route.json").read_text())["anchors"]
    ] == [1, 2, 3]
    _run("teacher", route, tmp_path / "teacher_backup")
    anchors = json.loads((route / "route.json").read_text())["anchors"]
    assert [a["epoch"] for a in anchors] == [1, 2, 3, 4, 5]
    for name, content in written.items():  # intact
        assert (route / name).read_bytes() == content
    # The distillation (3 stages of 2 epochs over 5 anchors: 1, 3, 4) is
    # killed at the start of epoch 3, in stage 2 (anchor 3).
    out = tmp_path / "stages.json"
    backup = tmp_path / "distill_backup"
    _run("distill", route, backup, out, "--pause-at", 3, pause=True)
    _run("distill", route, backup, out)
    rows = json.loads(out.read_text())
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3, 4, 5]
    assert [r["stage"] for r in rows] == [0, 0, 1, 1, 2, 2]
    assert [r["anchor"] for r in rows] == [1, 1, 3, 3, 4, 4]
    # The teacher each epoch trained with is that anchor's file.
    for row in rows:
        probe = _model("teacher")
        probe.load_weights(route / anchors[row["anchor"]]["file"])
        bias = to_numpy(probe.get_layer("out").bias)[0]
        assert row["teacher_bias"] == pytest.approx(float(bias), abs=0)


def test_every_stage_is_reached_and_short_fits_fail(tmp_path):
    paths = _anchor_files(tmp_path, [1.0, 2.0, 3.0, 4.0])
    procedure = RouteConstrainedOptimization(paths, stages=4, verbose=0)
    assert [procedure.stage_of(e, 6) for e in range(6)] == [0, 0, 1, 2, 2, 3]
    assert [procedure.stage_of(e, 5) for e in range(5)] == [0, 0, 1, 2, 3]
    with pytest.raises(ValueError, match="need at least 4 epochs"):
        procedure.check_epochs(3)
    fixed = RouteConstrainedOptimization(
        paths, stages=4, stage_epochs=2, verbose=0
    )
    with pytest.raises(ValueError, match="need at least 7 epochs"):
        _distil(fixed, epochs=6)


def test_search_data_that_gives_no_batches_fails(tmp_path):
    paths = _anchor_files(tmp_path, [1.0, 2.0, 3.0])
    procedure = RouteConstrainedOptimization(
        paths,
        stages=3,
        strategy="greedy",
        search_data=np.zeros((0, 4), "float32"),
        verbose=0,
    )
    Distiller(
        _model("teacher"),
        _model("student"),
        L.LogitsDistillation(),
        procedures=procedure,
    )
    with pytest.raises(ValueError, match="gave no batches"):
        procedure.divergences(0)


def test_recorder_catches_up_an_anchor_lost_to_a_crash(tmp_path):
    # The checkpoint of epoch 2 is written, then the process dies before
    # the recorder's anchor of epoch 2 (callbacks in that order); a torn
    # earlier write left a pending file too. The resumed run writes both.
    from keras_kd.backup import AtomicBackupAndRestore

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("crash")

    x, _ = _data()
    route, backup = tmp_path / "route", tmp_path / "backup"
    teacher = _model("teacher")
    teacher.compile("sgd", "mse")
    with pytest.raises(RuntimeError, match="crash"):
        teacher.fit(
            x,
            np.zeros((32, 3)),
            epochs=4,
            batch_size=8,
            verbose=0,
            callbacks=[
                AtomicBackupAndRestore(backup),
                Crash(),
                RouteRecorder(route),
            ],
        )
    manifest = json.loads((route / "route.json").read_text())
    assert [a["epoch"] for a in manifest["anchors"]] == [1]
    # A write killed after its rename: the file exists, listed as pending.
    manifest["pending"] = ["anchor-epoch-00003.weights.h5"]
    (route / "route.json").write_text(json.dumps(manifest))
    (route / "anchor-epoch-00003.weights.h5").write_bytes(b"torn")
    (route / ".tmp-1-anchor-epoch-00003.weights.h5").write_bytes(b"torn")
    teacher = _model("teacher")
    teacher.compile("sgd", "mse")
    teacher.fit(
        x,
        np.zeros((32, 3)),
        epochs=4,
        batch_size=8,
        verbose=0,
        callbacks=[AtomicBackupAndRestore(backup), RouteRecorder(route)],
    )
    manifest = json.loads((route / "route.json").read_text())
    assert [a["epoch"] for a in manifest["anchors"]] == [1, 2, 3, 4]
    assert manifest["pending"] == []
    assert not [n for n in os.listdir(route) if n.startswith(".tmp-")]
    Route.from_directory(route).check(_model("teacher"))  # all load
