"""The keras-kd command: the main job end to end (smoke size) and its errors."""

import numpy as np
import pytest

from keras_kd import cli


def test_main_job_quick_on_an_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "tiny.npz"
    y_train = np.repeat(np.arange(3), 40)
    # Learnable: each class is a different brightness.
    x_train = (y_train[:, None, None, None] * 80
               + rng.integers(0, 40, (120, 12, 12, 1))).astype("uint8")
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_train[::4],
             y_test=y_train[::4])
    out = tmp_path / "models"
    results = cli.distill(["--data", str(path), "--quick", "--batch-size", "16",
                           "--methods", "kd,ab,nst,hint,at",
                           "--output", str(out)])
    for key in ("teacher", "student_alone", "student_distilled"):
        assert 0.0 <= results[key] <= 1.0
    assert results["student_params"] < results["teacher_params"] / 10
    assert sorted(p.name for p in out.iterdir()) == [
        "student_alone.keras", "student_distilled.keras", "teacher.keras"]


def test_unknown_method_is_refused():
    with pytest.raises(SystemExit, match="unknown method.*'xyz'"):
        cli.distill(["--methods", "kd,xyz"])


def test_negative_ab_epochs_are_refused():
    with pytest.raises(SystemExit, match="--ab-epochs -1 must be >= 0"):
        cli.distill(["--ab-epochs", "-1"])
