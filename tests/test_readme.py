"""The README stays true: its quickstart runs and its set-up commands exist."""

import pathlib
import re

import keras

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def _section(title):
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else None]


def test_quickstart_runs():
    blocks = re.findall(r"```python\n(.*?)```", _section("Quickstart"), re.S)
    assert len(blocks) == 1
    namespace = {}
    exec(compile(blocks[0], "README quickstart", "exec"), namespace)
    student = namespace["student"]
    distiller = namespace["distiller"]
    assert student is distiller.student
    assert isinstance(student, keras.Model)
    # The plain student holds no teacher or connector weights.
    assert student.count_params() < namespace["teacher"].count_params() / 10
    history = distiller.history.history
    for key in ("activation_boundary_loss", "boundary_agreement",
                "neuron_selectivity_loss", "logits_distillation_loss",
                "student_loss", "val_loss"):
        assert key in history, key


def test_setup_commands_match_ci():
    commands = re.findall(r"^pip install .*$", _section("Set up"), re.M)
    assert commands == [
        'pip install -e ".[cpu]" && keras-kd',
        'pip install -e ".[cpu,test,examples]" && python -m pytest tests -q',
    ]
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[cpu,test,examples]"' in ci
    assert "python -m pytest tests -q" in ci
