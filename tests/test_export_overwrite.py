"""export_student's overwrite rule and crash safety (no user data lost).

`overwrite=True` replaces only what an export writes (a TFLite flatbuffer for
TFLite formats, a SavedModel directory for "saved_model"); everything else is
refused whatever the flag, and nothing is touched. A file is replaced with
one `os.replace`; a SavedModel directory with an atomic swap, or two renames
whose interruption (a SIGKILL between them, in a subprocess) the next export
repairs.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import fcntl  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402

import keras  # noqa: E402
import pytest  # noqa: E402

from keras_kd import export as export_lib  # noqa: E402
from keras_kd.export import ExportWarning  # noqa: E402
from keras_kd.export import export_student  # noqa: E402
from keras_kd.export import files as export_files  # noqa: E402

# One pytest-xdist worker runs this module: its fixtures export once.
pytestmark = pytest.mark.xdist_group("export_overwrite")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model():
    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [keras.Input((4,)), keras.layers.Dense(3, name="dense")], name="tiny"
    )


@pytest.fixture(scope="module")
def model():
    return _model()


@pytest.fixture(scope="module")
def artifacts(model, tmp_path_factory):
    """A real TFLite file and a real SavedModel directory."""
    root = tmp_path_factory.mktemp("artifacts")
    export_student(
        model, root / "m.tflite", format="tflite_float32", verbose=False
    )
    export_student(model, root / "sm", verbose=False)
    return root / "m.tflite", root / "sm"


def _tree(root):
    """Every path under `root` with its content (files) or None (dirs)."""
    out = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs:
            out[os.path.relpath(os.path.join(directory, name), root)] = None
        for name in files:
            path = os.path.join(directory, name)
            if os.path.islink(path):
                out[os.path.relpath(path, root)] = "-> " + os.readlink(path)
            else:
                with open(path, "rb") as f:
                    out[os.path.relpath(path, root)] = f.read()
    return out


def _user_files(root):
    (root / "train.py").write_text("print('my script')\n")
    (root / "data").mkdir()
    (root / "data" / "x.npy").write_bytes(b"my data")


# --- refused, whatever the flag ----------------------------------------------


def test_current_directory_is_never_replaced(model, tmp_path, monkeypatch):
    """The reported loss: `keras-kd export m.keras . --overwrite` ate cwd."""
    _user_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    for path in (".", "", os.getcwd(), "data/.."):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match="current directory|empty"):
                export_student(
                    model,
                    path,
                    format="tflite_float32",
                    overwrite=overwrite,
                    verbose=False,
                )
    assert _tree(tmp_path) == before


def test_cli_overwrite_refuses_current_directory(
    model, tmp_path, monkeypatch, capsys
):
    _user_files(tmp_path)
    model.save(tmp_path / "student.keras")
    monkeypatch.chdir(tmp_path)
    before = _tree(tmp_path)
    argv = ["student.keras", ".", "--overwrite", "--format", "tflite_float32"]
    assert export_lib.export_command(argv) == 1
    assert "current directory" in capsys.readouterr().err
    assert _tree(tmp_path) == before


@pytest.mark.slow
def test_keras_kd_command_in_a_subprocess_keeps_the_directory(model, tmp_path):
    """`keras-kd export student.keras . --overwrite`, run as a user would."""
    _user_files(tmp_path)
    model.save(tmp_path / "student.keras")
    before = _tree(tmp_path)
    env = dict(
        os.environ,
        PYTHONPATH=ROOT,
        TF_CPP_MIN_LOG_LEVEL="2",
        KERAS_BACKEND="tensorflow",
    )
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "keras_kd",
            "export",
            "student.keras",
            ".",
            "--overwrite",
            "--format",
            "tflite_float32",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == 1, process.stderr[-3000:]
    assert "current directory" in process.stderr
    assert _tree(tmp_path) == before


def test_home_root_and_their_parents_are_refused(model, tmp_path, monkeypatch):
    home = tmp_path / "users" / "me"
    home.mkdir(parents=True)
    (home / "notes.txt").write_text("mine")
    monkeypatch.setenv("HOME", str(home))
    before = _tree(tmp_path)
    for path in (home, tmp_path / "users", "/"):
        with pytest.raises(ValueError, match="home directory|current"):
            export_student(model, path, overwrite=True, verbose=False)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("fmt", ["saved_model", "tflite_float32"])
def test_user_files_and_directories_are_refused(
    model, artifacts, tmp_path, fmt
):
    tflite, saved_model = artifacts
    cases = {}
    # A directory with user files in it.
    (tmp_path / "project").mkdir()
    _user_files(tmp_path / "project")
    cases["project"] = "not a SavedModel|a directory"
    # A file that is not a TFLite flatbuffer, even named .tflite.
    (tmp_path / "fake.tflite").write_bytes(b"my own notes, not a model")
    cases["fake.tflite"] = "not a TFLite flatbuffer|a file, not a directory"
    # A SavedModel with a user file added to it.
    shutil.copytree(saved_model, tmp_path / "sm_plus")
    (tmp_path / "sm_plus" / "README.md").write_text("my notes")
    cases["sm_plus"] = "README.md|a directory"
    # A SavedModel whose variables/ holds a user file.
    shutil.copytree(saved_model, tmp_path / "sm_vars")
    (tmp_path / "sm_vars" / "variables" / "keep.txt").write_text("x")
    cases["sm_vars"] = "variables/keep.txt|a directory"
    # An artifact of the other kind.
    other = "real.tflite" if fmt == "saved_model" else "real_sm"
    if fmt == "saved_model":
        (tmp_path / other).write_bytes(tflite.read_bytes())
        cases[other] = "a TFLite file"
    else:
        shutil.copytree(saved_model, tmp_path / other)
        cases[other] = "a directory"
    # A symbolic link, even to a replaceable artifact.
    os.symlink(
        tflite if fmt != "saved_model" else saved_model, tmp_path / "link"
    )
    cases["link"] = "symbolic link"
    # An empty directory is not a SavedModel either.
    (tmp_path / "empty").mkdir()
    cases["empty"] = "no saved_model.pb|a directory"

    before = _tree(tmp_path)
    for name, message in cases.items():
        for overwrite in (False, True):
            with pytest.raises(ValueError, match=message) as info:
                export_student(
                    model,
                    tmp_path / name,
                    format=fmt,
                    overwrite=overwrite,
                    verbose=False,
                )
            assert "whatever `overwrite` says" in str(info.value)
    assert _tree(tmp_path) == before  # nothing deleted, nothing left behind


def test_empty_or_wrong_type_path(model):
    with pytest.raises(ValueError, match="empty"):
        export_student(model, "   ", verbose=False)
    with pytest.raises(TypeError, match="received int"):
        export_student(model, 3, verbose=False)


# --- what is replaced, and how -----------------------------------------------


def test_tflite_file_is_replaced_with_one_atomic_rename(
    model, artifacts, tmp_path, monkeypatch
):
    target = tmp_path / "m.tflite"
    target.write_bytes(b"\x1c\0\0\0TFL3 an older export")
    calls = []
    original = os.replace

    def spy(src, dst):
        calls.append((os.fspath(src), os.fspath(dst)))
        return original(src, dst)

    monkeypatch.setattr(export_files.os, "replace", spy)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        export_student(model, target, format="tflite_float32", verbose=False)
    result = export_student(
        model, target, format="tflite_float32", overwrite=True, verbose=False
    )
    assert result.passed
    assert [dst for _, dst in calls] == [str(target)]  # never moved away
    assert target.read_bytes()[4:8] == b"TFL3"
    assert target.read_bytes() != b"\x1c\0\0\0TFL3 an older export"
    assert os.listdir(tmp_path) == ["m.tflite"]


@pytest.mark.parametrize("exchange", [True, False])
def test_saved_model_directory_is_replaced(
    model, artifacts, tmp_path, monkeypatch, exchange
):
    _, saved_model = artifacts
    target = tmp_path / "sm"
    shutil.copytree(saved_model, target)
    (target / "saved_model.pb").write_bytes(b"an older export")
    if not exchange:
        monkeypatch.setattr(export_files, "_exchange", lambda a, b: False)
    result = export_student(model, target, overwrite=True, verbose=False)
    assert result.passed
    assert (target / "saved_model.pb").read_bytes() != b"an older export"
    assert os.listdir(tmp_path) == ["sm"]


def test_exchange_swaps_two_directories(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x").write_text("a")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("b")
    if not export_files._exchange(tmp_path / "a", tmp_path / "b"):
        pytest.skip("no atomic exchange on this OS / file system")
    assert (tmp_path / "a" / "x").read_text() == "b"
    assert (tmp_path / "b" / "x").read_text() == "a"


# --- interrupted exports -----------------------------------------------------


def _export_killed_by_sigkill(script, target):
    """Runs `script` (an export that SIGKILLs itself) on `target` in a child."""
    env = dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2")
    code = script.format(tests=os.path.join(ROOT, "tests"))
    process = subprocess.run(
        [sys.executable, "-c", code, str(target)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]


KILL_BETWEEN_RENAMES = textwrap.dedent("""
    import os, signal, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    from keras_kd import export as export_lib
    from keras_kd.export import files
    sys.path.insert(0, {tests!r})
    from test_export_overwrite import _model

    target = sys.argv[1]
    files._exchange = lambda a, b: False  # the two-rename route
    original = os.replace

    def replace(src, dst):
        original(src, dst)
        if os.fspath(src) == target:  # the old copy was just moved aside
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    export_lib.export_student(_model(), target, overwrite=True)
    print("not killed")
""")


@pytest.mark.slow
def test_sigkill_between_renames_then_next_export_restores(
    model, artifacts, tmp_path
):
    _, saved_model = artifacts
    target = tmp_path / "sm"
    shutil.copytree(saved_model, target)
    (target / "saved_model.pb").write_bytes(b"the user's only copy")
    old = _tree(target)
    _export_killed_by_sigkill(KILL_BETWEEN_RENAMES, target)
    # The crash window: no target, the old copy in a leftover.
    assert not target.exists()
    (leftover,) = [p for p in tmp_path.iterdir() if p.name.startswith(".sm.")]
    assert _tree(leftover / "previous") == old

    # The next export (even without overwrite) puts the old copy back first.
    with pytest.warns(ExportWarning, match="Restored"):
        with pytest.raises(FileExistsError):
            export_student(model, target, verbose=False)
    assert _tree(target) == old
    assert os.listdir(tmp_path) == ["sm"]  # leftover removed


KILL_BEFORE_RENAME = textwrap.dedent("""
    import os, signal, sys
    os.environ["KERAS_BACKEND"] = "tensorflow"
    from keras_kd import export as export_lib
    from keras_kd.export import student
    sys.path.insert(0, {tests!r})
    from test_export_overwrite import _model

    def killed(*args, **kwargs):  # built and written, not yet checked
        os.kill(os.getpid(), signal.SIGKILL)

    student.check_parity = killed
    export_lib.export_student(_model(), sys.argv[1], format="tflite_float32",
                              overwrite=True)
""")


@pytest.mark.slow
def test_sigkill_mid_tflite_export_then_next_export_cleans(
    model, artifacts, tmp_path
):
    tflite, _ = artifacts
    target = tmp_path / "m.tflite"
    target.write_bytes(tflite.read_bytes())
    _export_killed_by_sigkill(KILL_BEFORE_RENAME, target)
    assert target.read_bytes() == tflite.read_bytes()  # untouched
    (leftover,) = [p for p in tmp_path.iterdir() if p.name != "m.tflite"]
    assert leftover.name.startswith(".m.tflite.partial-")
    with pytest.warns(ExportWarning, match="Removed"):
        export_student(
            model,
            target,
            format="tflite_float32",
            overwrite=True,
            verbose=False,
        )
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_leftover_without_old_copy_is_removed(model, tmp_path):
    target = tmp_path / "m.tflite"
    leftover = tmp_path / ".m.tflite.partial-abc123"
    (leftover / "sm").mkdir(parents=True)
    (leftover / "artifact").write_bytes(b"half written")
    with pytest.warns(ExportWarning, match="Removed .*partial-abc123"):
        export_student(model, target, format="tflite_float32", verbose=False)
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_restored_copy_then_replaced_when_overwrite(model, artifacts, tmp_path):
    _, saved_model = artifacts
    target = tmp_path / "sm"
    leftover = tmp_path / ".sm.partial-xyz"
    leftover.mkdir()
    shutil.copytree(saved_model, leftover / "previous")
    with pytest.warns(ExportWarning, match="Restored"):
        result = export_student(model, target, overwrite=True, verbose=False)
    assert result.passed and os.listdir(tmp_path) == ["sm"]


def test_running_exports_leftover_is_left_alone(model, tmp_path):
    target = tmp_path / "m.tflite"
    running = tmp_path / ".m.tflite.partial-running"
    running.mkdir()
    fd = os.open(running, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as a live export holds it
    try:
        export_student(model, target, format="tflite_float32", verbose=False)
        assert running.is_dir()
    finally:
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == [
        ".m.tflite.partial-running",
        "m.tflite",
    ]


def test_kill_leaves_nothing_lost_for_files(model, tmp_path, monkeypatch):
    """A failure at the final rename leaves the old file whole."""
    target = tmp_path / "m.tflite"
    target.write_bytes(b"\x1c\0\0\0TFL3 old")

    def fail(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(export_files.os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        export_student(
            model,
            target,
            format="tflite_float32",
            overwrite=True,
            verbose=False,
        )
    assert target.read_bytes() == b"\x1c\0\0\0TFL3 old"
    assert os.listdir(tmp_path) == ["m.tflite"]


def test_export_guide_states_the_overwrite_rule():
    with open(os.path.join(ROOT, "docs", "export.md"), encoding="utf-8") as f:
        section = f.read()
    for phrase in (
        "Overwrite rule",
        "TFL3",
        "saved_model.pb",
        "current directory",
        "whatever the flag",
        ".partial-",
    ):
        assert phrase in section, phrase
