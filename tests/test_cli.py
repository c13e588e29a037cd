"""The keras-kd command: the main job end to end (smoke size) and its errors."""

import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
from builders import tiny_npz

from keras_kd import cli
from keras_kd import data
from keras_kd.cli import main_job
from keras_kd.cli import options
from keras_kd.export.command import keras_file_problem
from keras_kd.losses import registry
from keras_kd.models import conv_net
from keras_kd.models import resnet

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_main_job_quick_on_an_npz(tmp_path, capsys):
    path = tiny_npz(tmp_path / "tiny.npz")
    out = tmp_path / "models"
    results = cli.distill(
        [
            "--data",
            str(path),
            "--quick",
            "--batch-size",
            "16",
            "--methods",
            # Every method of the registry, with its default layers, in
            # one distiller (AB and FSP as the initialisation stage).
            ",".join(registry.names()),
            "--output",
            str(out),
        ]
    )
    for key in ("teacher", "student_alone", "student_distilled"):
        assert 0.0 <= results[key] <= 1.0
    assert results["student_params"] < results["teacher_params"] / 10
    # --quick says it is a smoke test, on one seed.
    printed = capsys.readouterr().out
    assert results["seeds"] == [0]
    assert (
        "smoke test" in printed and "say nothing about the methods" in printed
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "student_alone.keras",
        "student_distilled.keras",
        "teacher.keras",
    ]

    # The saved student normalises inside and takes raw pixels: on the raw
    # test images it scores what the main job reported.
    student = keras.saving.load_model(
        out / "student_distilled.keras", compile=False
    )
    assert isinstance(student.layers[1], keras.layers.Normalization)
    arrays = np.load(path)
    logits = student.predict(arrays["x_test"].astype("float32"), verbose=0)
    accuracy = np.mean(logits.argmax(-1) == arrays["y_test"])
    assert accuracy == pytest.approx(results["student_distilled"], abs=1e-6)


def test_main_job_is_deterministic_and_reports_the_noise(tmp_path, capsys):
    path = tiny_npz(tmp_path / "tiny.npz")
    argv = [
        "--data",
        str(path),
        "--epochs",
        "1",
        "--teacher-epochs",
        "1",
        "--seeds",
        "2",
        "--batch-size",
        "16",
        "--methods",
        "kd",
    ]
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()
    first = cli.distill(argv)
    printed = capsys.readouterr().out
    # The process-wide switch is back off: later work in this process (XLA
    # in particular, which Keras turns off under determinism) is unaffected.
    assert not tf_config.is_op_determinism_enabled()
    second = cli.distill(argv)
    for key in ("teacher", "alone_by_seed", "distilled_by_seed"):
        assert first[key] == second[key]
    gains = [
        d - a
        for d, a in zip(first["distilled_by_seed"], first["alone_by_seed"])
    ]
    assert first["gain"] == pytest.approx(np.mean(gains))
    assert first["gain_std"] == pytest.approx(np.std(gains, ddof=1))
    assert first["student_alone_std"] == pytest.approx(
        np.std(first["alone_by_seed"], ddof=1)
    )
    assert first["seeds"] == [0, 1]
    assert "mean ± std over 2 seeds" in printed
    assert "paired by seed" in printed
    assert "the noise" in printed


@pytest.mark.parametrize(
    "build",
    [
        lambda **kw: conv_net((8, 8, 3), 4, (4, 8), **kw),
        lambda **kw: resnet((8, 8, 3), 4, (4, 8), blocks=1, **kw),
    ],
)
def test_builders_normalise_raw_pixels_inside(build):
    x = np.random.default_rng(1).integers(0, 256, (6, 8, 8, 3), dtype=np.uint8)
    mean, std = data.channel_stats(x)
    inside = build(mean=mean, std=std)
    outside = build()
    assert inside.layers[1].name == "normalize"
    assert inside.count_params() == outside.count_params()
    outside.set_weights(inside.get_weights())
    # The old path: normalise in the pipeline, feed the model [0, 1]-scaled
    # and standardised images.
    standardised = (x / 255.0 - mean) / std
    np.testing.assert_allclose(
        inside.predict(x.astype("float32"), verbose=0),
        outside.predict(standardised.astype("float32"), verbose=0),
        rtol=1e-4,
        atol=1e-4,
    )


def test_builders_reject_half_or_wrong_statistics():
    with pytest.raises(ValueError, match="both `mean` and `std`"):
        conv_net((8, 8, 3), 4, mean=[0.5] * 3)
    with pytest.raises(ValueError, match=r"3 values; expected one per channel"):
        conv_net((8, 8, 1), 4, mean=[0.5] * 3, std=[0.2] * 3)
    with pytest.raises(ValueError, match="positive"):
        conv_net((8, 8, 1), 4, mean=[0.5], std=[0.0])


def test_main_job_pipeline_feeds_raw_pixels():
    rng = np.random.default_rng(2)
    x = rng.integers(0, 256, (10, 6, 6, 1), dtype=np.uint8)
    y = np.arange(10) % 2
    train_ds, test_ds, mean, std = main_job._pipelines(x, y, x, y, batch_size=4)
    images = np.concatenate([b.numpy() for b, _ in test_ds])
    np.testing.assert_array_equal(images, x.astype("float32"))
    train = np.concatenate([b.numpy() for b, _ in train_ds(x, y, 0)])
    np.testing.assert_array_equal(np.sort(train.ravel()), np.sort(x.ravel()))
    np.testing.assert_allclose(mean, [x.mean() / 255.0])
    np.testing.assert_allclose(std, [x.std() / 255.0])


def test_help_shows_both_commands_and_every_flag_has_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: keras-kd [distill]")
    assert "keras-kd export MODEL.keras OUTPUT" in text
    assert "usage: keras-kd distill" not in text
    for action in options.build_parser()._actions:
        assert action.help, f"{action.option_strings} has no help text"
    # --methods lists what the registry holds.
    for line in registry.describe():
        assert line.split(" ")[0] in text


@pytest.mark.parametrize(
    "flag, value, message",
    [
        (
            "--epochs",
            "-1",
            "argument --epochs: must be an integer >= 1; received -1",
        ),
        ("--teacher-epochs", "0", "--teacher-epochs: must be an integer >= 1"),
        (
            "--ab-epochs",
            "-1",
            "--ab-epochs: must be an integer >= 0; received -1",
        ),
        (
            "--batch-size",
            "0",
            "--batch-size: must be an integer >= 1; received 0",
        ),
        (
            "--batch-size",
            "2.5",
            "--batch-size: expected an integer >= 1; received '2.5'",
        ),
        (
            "--learning-rate",
            "0",
            "--learning-rate: must be a finite number > 0",
        ),
        (
            "--learning-rate",
            "nan",
            "--learning-rate: must be a finite number > 0",
        ),
        ("--train-fraction", "0", r"--train-fraction: must be in \(0.0, 1.0\]"),
        (
            "--train-fraction",
            "1.5",
            r"--train-fraction: must be in \(0.0, 1.0\]",
        ),
        ("--seed", "-1", "--seed: must be an integer >= 0"),
    ],
)
def test_out_of_range_numbers_are_refused(capsys, flag, value, message):
    with pytest.raises(SystemExit) as exit_:
        cli.main([flag, value])
    assert exit_.value.code == 2
    assert pytest.importorskip("re").search(message, capsys.readouterr().err)


def test_export_help_covers_every_flag(capsys):
    assert cli.main(["export", "--help"]) == 0
    text = capsys.readouterr().out
    for flag in (
        "--format",
        "--representative-data",
        "--calibration-batches",
        "--batch-size",
        "--overwrite",
        "--quiet",
    ):
        line = next(l for l in text.splitlines() if l.strip().startswith(flag))
        # argparse prints a flag's help on its own line or the next one.
        following = text.split(line, 1)[1].splitlines()[0]
        assert line.strip() != flag or following.strip(), f"{flag}: no help"
    assert "default: 100" in text and "default: 32" in text


@pytest.mark.parametrize("flag", ["--calibration-batches", "--batch-size"])
def test_export_refuses_non_positive_counts(capsys, tmp_path, flag):
    code = cli.main(
        ["export", str(tmp_path / "m.h5"), str(tmp_path / "o"), flag, "0"]
    )
    assert code == 2
    assert f"{flag}: must be an integer >= 1; received 0" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "o").exists()


def test_unknown_method_is_refused():
    with pytest.raises(SystemExit, match="unknown method.*'xyz'"):
        cli.distill(["--methods", "kd,xyz"])


@pytest.mark.slow
def test_unprepared_tfds_name_fails_fast_and_downloads_nothing(tmp_path):
    data_dir = tmp_path / "tfds"
    data_dir.mkdir()
    env = dict(os.environ, PYTHONPATH=str(ROOT), HOME=str(tmp_path))
    # A download offline would hang for minutes: the timeout fails the test.
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; from keras_kd.cli import main; "
            "sys.exit(main(sys.argv[1:]))",
            "--data",
            "cifar10",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env=env,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    error = result.stderr.strip().splitlines()[-1]
    assert error.startswith(
        "keras-kd: error: The TensorFlow Datasets data set "
        "'cifar10' is not prepared in"
    )
    assert "prepare_tfds_directory" in error and ".npz" in error
    assert "--download" in error
    assert "Traceback" not in result.stderr
    assert list(data_dir.iterdir()) == []
    # Nothing downloaded anywhere else either (HOME holds only caches of
    # the Keras and TensorFlow imports).
    assert not [
        p
        for p in tmp_path.rglob("*")
        if "cifar" in p.name
        or "download" in p.name
        or p.name == "tensorflow_datasets"
    ]


def _saved_model(tmp_path):
    path = tmp_path / "student.keras"
    conv_net((8, 8, 1), 3, (4, 4)).save(path)
    return path


@pytest.mark.parametrize(
    "damage, reason",
    [
        ("truncate", "truncated or corrupt"),
        ("flip", "member 'model.weights.h5' fails its CRC check"),
        ("text", "not a zip archive"),
        ("missing", "no such file"),
    ],
)
def test_export_names_a_damaged_keras_file_in_one_line(
    tmp_path, capsys, damage, reason
):
    path = _saved_model(tmp_path)
    blob = bytearray(path.read_bytes())
    if damage == "truncate":
        path.write_bytes(bytes(blob[: len(blob) // 2]))
    elif damage == "flip":
        start = len(blob) - len(blob) // 3  # inside model.weights.h5
        for i in range(start, start + 256):
            blob[i] ^= 0xFF
        path.write_bytes(bytes(blob))
    elif damage == "text":
        path.write_text("not a model")
    else:
        path.unlink()
    target = tmp_path / "student.tflite"
    code = cli.main(
        ["export", "--format", "tflite_float32", str(path), str(target)]
    )
    assert code == 1
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"keras-kd export: error: cannot read '{path}'")
    assert reason in lines[0]
    assert "File not found" not in lines[0]
    assert not target.exists()


def test_export_finds_its_model_argument_among_the_options(tmp_path, capsys):
    """argparse, not a scan of argv, finds MODEL: after options with values,
    after flags, or after `--`."""
    assert keras_file_problem(os.devnull) is not None
    damaged = tmp_path / "m.keras"
    damaged.write_text("not a model")
    target = str(tmp_path / "out")
    for argv in (
        ["--format", "saved_model", "--batch-size", "8", str(damaged), target],
        ["--overwrite", str(damaged), target],
        ["--quiet", "--", str(damaged), target],
    ):
        assert cli.main(["export", *argv]) == 1
        err = capsys.readouterr().err
        assert err.startswith(
            f"keras-kd export: error: cannot read '{damaged}': it is not a "
            "zip archive"
        ), err
    assert not (tmp_path / "out").exists()


def test_commands_dispatch_on_the_first_argument(monkeypatch):
    calls = []
    for name in ("distill", "export"):
        monkeypatch.setitem(
            cli.COMMANDS,
            name,
            lambda argv, name=name: calls.append((name, argv)),
        )
    cli.main(["export", "a.keras", "b"])
    cli.main(["distill", "--quick"])
    cli.main(["--quick"])  # no command name: the main job
    assert calls == [
        ("export", ["a.keras", "b"]),
        ("distill", ["--quick"]),
        ("distill", ["--quick"]),
    ]


def test_a_sound_keras_file_passes_the_check(tmp_path):
    assert keras_file_problem(_saved_model(tmp_path)) is None
