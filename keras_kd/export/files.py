"""Where an export may write, and how it gets there without losing anything.

The overwrite rule (`check_replaceable`, `protect`, `target_path`), the
hidden `.NAME.partial-*` work directory an export builds in and its lock
(`work_directory`), the atomic move of the finished artifact onto its path
(`move_into_place`), the repair of what a killed export left behind
(`recover_interrupted`), and the artifact's size. The rule itself is stated
in the `keras_kd.export` docstring.
"""

import contextlib
import ctypes
import fnmatch
import os
import re
import shutil
import sys
import tempfile
import warnings

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from keras_kd.export.base import ExportWarning

TFLITE_IDENTIFIER = b"TFL3"  # flatbuffer file identifier, bytes 4..8
_SAVED_MODEL_ENTRIES = frozenset(
    {
        "saved_model.pb",
        "saved_model.pbtxt",
        "variables",
        "assets",
        "assets.extra",
        "fingerprint.pb",
        "keras_metadata.pb",
    }
)
_VARIABLE_FILE = re.compile(r"variables\.(index|data-\d+-of-\d+)\Z")
_PREVIOUS = "previous"  # the old artifact, inside a `.NAME.partial-*` dir


def target_path(path):
    if path is None or not isinstance(path, (str, bytes, os.PathLike)):
        raise TypeError(
            "`path` must be a file or directory path (str or os.PathLike); "
            f"received {type(path).__name__}."
        )
    raw = os.fsdecode(os.fspath(path))
    if not raw.strip():
        raise ValueError(
            f"`path` is empty ({raw!r}), which would mean the current "
            "directory. Pass the file (`student.tflite`) or directory "
            "(`student_savedmodel`) to write."
        )
    return os.path.abspath(raw)


def protect(path):
    """Refuses `/`, home, the current directory and directories holding them."""
    real = os.path.realpath(path)
    for what, place in (
        ("the current directory", os.getcwd()),
        ("your home directory", os.path.expanduser("~")),
    ):
        place = os.path.realpath(place)
        if real == place or place.startswith(real.rstrip(os.sep) + os.sep):
            raise ValueError(
                f"Refusing to write the export to '{path}': it is {what}"
                + ("" if real == place else f" ('{place}') or contains it")
                + ", which an export never replaces, whatever `overwrite` "
                "says. Pass a new file (`student.tflite`) or directory "
                "(`student_savedmodel`) inside it."
            )


def _is_tflite_file(path):
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return len(head) == 8 and head[4:8] == TFLITE_IDENTIFIER


def _saved_model_problems(path):
    """Why the directory `path` is not a SavedModel (empty list if it is)."""
    entries = sorted(os.listdir(path))
    problems = [e for e in entries if e not in _SAVED_MODEL_ENTRIES]
    if "saved_model.pb" not in entries and "saved_model.pbtxt" not in entries:
        problems.insert(0, "no saved_model.pb")
    variables = os.path.join(path, "variables")
    if os.path.islink(variables) or (
        os.path.lexists(variables) and not os.path.isdir(variables)
    ):
        problems.append("variables (not a directory)")
    elif os.path.isdir(variables):
        problems += [
            f"variables/{e}"
            for e in sorted(os.listdir(variables))
            if not _VARIABLE_FILE.match(e)
        ]
    return problems


def check_replaceable(path, fmt):
    """Raises ValueError unless `path` is an artifact `fmt` may replace."""
    wanted = (
        "a SavedModel directory"
        if fmt == "saved_model"
        else "a TFLite file (a flatbuffer with identifier TFL3)"
    )
    if os.path.islink(path):
        found = "a symbolic link"
    elif fmt == "saved_model":
        if not os.path.isdir(path):
            found = (
                "a TFLite file"
                if _is_tflite_file(path)
                else "a file, not a directory"
            )
        else:
            problems = _saved_model_problems(path)
            if not problems:
                return
            shown = ", ".join(problems[:5]) + (
                f" and {len(problems) - 5} more" if len(problems) > 5 else ""
            )
            found = f"a directory that is not a SavedModel ({shown})"
    elif os.path.isdir(path):
        found = "a directory"
    elif os.path.isfile(path) and _is_tflite_file(path):
        return
    else:
        found = "a file that is not a TFLite flatbuffer"
    raise ValueError(
        f"'{path}' exists and is {found}. An export replaces only {wanted} "
        f"for format '{fmt}', whatever `overwrite` says, so that nothing "
        "else is ever deleted. Move it away or choose another path."
    )


def _partial_prefix(path):
    return f".{os.path.basename(path)}.partial-"


def _lock_directory(directory):
    """An exclusive `flock` on `directory` (its fd); `None` without fcntl."""
    if fcntl is None:  # pragma: no cover - Windows
        return None
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def work_directory(path):
    """A new hidden sibling `.NAME.partial-*` of `path`, locked while in use.

    The export builds its artifact there; the directory (with whatever is
    left in it, such as the old artifact after a swap) is removed on the
    way out, whether the export succeeded or not.
    """
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=_partial_prefix(path), dir=parent)
    lock = _lock_directory(work)
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if lock is not None:
            os.close(lock)


def recover_interrupted(path):
    """Restores or removes what killed exports to `path` left behind."""
    parent = os.path.dirname(path)
    prefix = _partial_prefix(path)
    try:
        names = sorted(
            (
                e
                for e in os.listdir(parent)
                if e.startswith(prefix) and fnmatch.fnmatch(e, prefix + "*")
            ),
            key=lambda e: -os.path.getmtime(os.path.join(parent, e)),
        )
    except (FileNotFoundError, NotADirectoryError):
        return
    for name in names:
        leftover = os.path.join(parent, name)
        if os.path.islink(leftover) or not os.path.isdir(leftover):
            continue
        if fcntl is None:  # pragma: no cover - Windows
            warnings.warn(
                f"'{leftover}' is left from an interrupted export; it may "
                f"hold the previous '{path}' in '{_PREVIOUS}'. Check and "
                "remove it.",
                ExportWarning,
                stacklevel=3,
            )
            continue
        try:
            lock = _lock_directory(leftover)
        except OSError:
            continue  # an export to this path is running now
        try:
            previous = os.path.join(leftover, _PREVIOUS)
            if os.path.lexists(previous) and not os.path.lexists(path):
                os.replace(previous, path)
                warnings.warn(
                    f"Restored '{path}' from '{previous}': an export killed "
                    "while replacing it had moved it aside.",
                    ExportWarning,
                    stacklevel=3,
                )
            shutil.rmtree(leftover)
            warnings.warn(
                f"Removed '{leftover}', left by an interrupted export.",
                ExportWarning,
                stacklevel=3,
            )
        finally:
            os.close(lock)


def move_into_place(artifact, path, work):
    """Moves `artifact` to `path`; the old `path` is never lost.

    A file, or a directory onto a missing path: one `os.replace`. A directory
    onto an old one: an atomic swap where the OS has one (the old one then
    lies in `work`, deleted with it); else old -> `work/previous`, new ->
    `path`. A run killed between those two renames leaves the old copy in
    `work/previous`, which the next export to `path` moves back
    (`recover_interrupted`).
    """
    if not os.path.isdir(artifact) or not os.path.lexists(path):
        os.replace(artifact, path)
        return
    if _exchange(artifact, path):
        return
    previous = os.path.join(work, _PREVIOUS)
    os.replace(path, previous)
    try:
        os.replace(artifact, path)
    except BaseException:
        os.replace(previous, path)
        raise


def _exchange(a, b):
    """Swaps the paths `a` and `b` atomically; `False` where unsupported.

    Linux `renameat2(..., RENAME_EXCHANGE)` (kernel 3.15, glibc 2.28).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    renameat2.restype = ctypes.c_int
    at_fdcwd, rename_exchange = -100, 2
    # Any failure (EINVAL, ENOSYS: this file system or kernel cannot swap)
    # changed nothing, so the caller can take the two-rename route.
    return (
        renameat2(
            at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange
        )
        == 0
    )


def artifact_size(path):
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )
