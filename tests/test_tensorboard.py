"""Every loss term and AB's boundary agreement reach TensorBoard and the
progress bar.

Logging goes through the standard `keras.callbacks.TensorBoard`, which needs
the `tensorboard` package (TensorFlow 2.21 no longer installs it).
"""

import math
import pathlib

import keras
import pytest
from builders import cnn
from builders import data
from builders import sparse_ce

from keras_kd import Distiller
from keras_kd import losses

pytest.importorskip(
    "tensorboard",
    reason="keras.callbacks.TensorBoard needs `pip install tensorboard`",
)
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402
from tensorboard.util import tensor_util  # noqa: E402

TAPS = ["relu1", "relu2"]


def _distiller():
    teacher = cnn(8, "teacher")
    student = cnn(4, "student")
    return Distiller(
        teacher,
        student,
        [
            losses.ActivationBoundary(TAPS, TAPS),
            losses.NeuronSelectivityTransfer(TAPS, TAPS),
            losses.AttentionTransfer("relu2", "relu2"),
            losses.FitNetsHint("relu1", "relu1"),
            losses.LogitsDistillation(temperature=4.0),
        ],
    )


def _scalars(run_dir):
    """`{tag: [values]}` of every scalar written under `run_dir`."""
    accumulator = event_accumulator.EventAccumulator(
        str(run_dir), size_guidance={event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    return {
        tag: [
            float(tensor_util.make_ndarray(e.tensor_proto))
            for e in accumulator.Tensors(tag)
        ]
        for tag in accumulator.Tags()["tensors"]
    }


def _expected_terms(distiller):
    names = {"loss"} | {tracker.name for tracker in distiller.term_trackers}
    assert {"student_loss", "boundary_agreement"} <= names
    for loss in distiller.distillation_losses:
        assert f"{loss.name}_loss" in names
    return names


def test_every_term_reaches_tensorboard_with_finite_values(tmp_path):
    distiller = _distiller()
    distiller.compile(optimizer="adam", loss=sparse_ce(), metrics=["accuracy"])
    x, y = data(n=16)
    distiller.fit(
        x,
        y,
        batch_size=8,
        epochs=2,
        validation_data=(x, y),
        verbose=0,
        callbacks=[
            keras.callbacks.TensorBoard(log_dir=tmp_path, update_freq=1)
        ],
    )
    names = _expected_terms(distiller)
    # Per-layer values of the two-pair losses, e.g. boundary_agreement_relu1.
    for prefix in (
        "activation_boundary",
        "boundary_agreement",
        "neuron_selectivity",
    ):
        assert {f"{prefix}_{tap}" for tap in TAPS} <= names

    train = _scalars(pathlib.Path(tmp_path) / "train")
    validation = _scalars(pathlib.Path(tmp_path) / "validation")
    for name in sorted(names):
        for run, scalars, prefixes in (
            ("train", train, ("epoch_", "batch_")),
            ("validation", validation, ("epoch_",)),
        ):
            for prefix in prefixes:
                tag = prefix + name
                assert tag in scalars, f"{run} run lacks the scalar {tag!r}"
                values = scalars[tag]
                assert values and all(math.isfinite(v) for v in values), (
                    f"{run}/{tag}: {values}"
                )
    assert len(train["epoch_boundary_agreement"]) == 2
    assert all(0.0 <= v <= 1.0 for v in train["epoch_boundary_agreement"])


def test_progress_bar_shows_every_term(capsys):
    distiller = _distiller()
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y = data(n=8)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=1)
    shown = capsys.readouterr().out
    for name in sorted(_expected_terms(distiller)):
        assert f" {name}: " in shown, f"the progress bar does not show {name!r}"
