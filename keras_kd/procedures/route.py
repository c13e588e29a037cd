"""Route-constrained optimisation (RCO): distil along the teacher's route.

A converged teacher is a hard target for a small student. Jin et al.
("Knowledge Distillation via Route Constrained Optimization", ICCV 2019,
arXiv 1904.09149; no official code) supervise the student with a sequence
of *anchor points* on the teacher's own training route, checkpoints taken
while the teacher trained, easiest first and ending with the converged
teacher.

- `RouteRecorder`: a callback that writes the route while a teacher trains
  (weights only, each anchor written atomically, a `route.json` manifest).
- `Route`: an ordered list of anchor files, from a recorder's directory or
  from checkpoint files a user already has, checked against the teacher.
- `RouteConstrainedOptimization` (in `route_constrained.py`): a procedure
  that trains the student in stages, each against the next anchor, with
  the paper's two strategies (equal intervals and greedy search),
  resumable mid-route.
"""

import json
import os

import keras
import numpy as np

from keras_kd import backend as backend_lib
from keras_kd import backup as backup_lib
from keras_kd.procedures.base import check_int

MANIFEST = "route.json"
_FORMAT = 1
_PREFIX = "anchor-"
_TEMP = ".tmp-"


class RouteRecorder(keras.callbacks.Callback):
    """Records a teacher's route: anchor checkpoints while it trains.

    Writes the teacher's weights (`model.save_weights`, no optimizer) to
    `directory/anchor-epoch-<e>.weights.h5` after every `every_epochs`-th
    epoch, or after the epochs listed in `at_epochs`, or every
    `every_steps` optimizer steps (`anchor-step-<n>.weights.h5`), and
    after the last epoch of `fit` (the converged teacher ends every route).
    Epochs count from 1 (the weights after epoch `e`).

    Each anchor is written as `AtomicBackupAndRestore` writes a checkpoint:
    a temporary file, fsynced, renamed into place; then the manifest
    `route.json`, replaced atomically, lists it. Whenever the process dies,
    every anchor the manifest lists is complete. A run resumed after a
    crash (e.g. with `AtomicBackupAndRestore`) appends to the same route;
    an anchor it writes again at the same position replaces its own file.
    The recorder never writes over a file the manifest does not list.

    Args:
        directory: where the route is written (created if missing).
        every_epochs: an anchor every this many epochs. Defaults to `1`
            when neither `at_epochs` nor `every_steps` is given.
        at_epochs: the epochs (from 1) after which to write anchors.
        every_steps: an anchor every this many optimizer steps instead.
        final: also write the weights at the end of `fit`. Defaults to
            `True`.

    Example: see `RouteConstrainedOptimization`.
    """

    def __init__(
        self,
        directory,
        every_epochs=None,
        *,
        at_epochs=None,
        every_steps=None,
        final=True,
    ):
        super().__init__()
        given = [v is not None for v in (every_epochs, at_epochs, every_steps)]
        if sum(given) > 1:
            raise ValueError(
                "RouteRecorder: pass one of `every_epochs`, `at_epochs` and "
                f"`every_steps`; received every_epochs={every_epochs!r}, "
                f"at_epochs={at_epochs!r}, every_steps={every_steps!r}."
            )
        if not any(given):
            every_epochs = 1
        for what, value in (
            ("every_epochs", every_epochs),
            ("every_steps", every_steps),
        ):
            if value is not None:
                check_int("RouteRecorder", what, value)
        if at_epochs is not None:
            at_epochs = sorted({int(e) for e in at_epochs})
            if not at_epochs or at_epochs[0] < 1:
                raise ValueError(
                    "RouteRecorder: `at_epochs` must list epochs >= 1 (the "
                    f"weights after that epoch); received {at_epochs!r}."
                )
        self.directory = os.fspath(directory)
        self.every_epochs = every_epochs
        self.at_epochs = at_epochs
        self.every_steps = every_steps
        self.final = bool(final)
        self._last_epoch = None

    # --- the manifest -------------------------------------------------------

    def _manifest_path(self):
        return os.path.join(self.directory, MANIFEST)

    def _read(self):
        path = self._manifest_path()
        if not os.path.exists(path):
            return {"format": _FORMAT, "anchors": []}
        return _read_manifest(path)

    def _write_anchor(self, epoch, step):
        os.makedirs(self.directory, exist_ok=True)
        manifest = self._read()
        key = f"epoch-{epoch:05d}" if step is None else f"step-{step:09d}"
        name = f"{_PREFIX}{key}.weights.h5"
        path = os.path.join(self.directory, name)
        pending = set(manifest.get("pending", []))
        listed = {a["file"] for a in manifest["anchors"]} | pending
        if os.path.exists(path) and name not in listed:
            raise FileExistsError(
                f"RouteRecorder: '{path}' exists but is not an anchor of "
                f"the route in '{self.directory}' (its {MANIFEST} does not "
                "list it); the recorder does not write over files it did "
                "not write. Move it, or record into another directory."
            )
        if name not in listed:
            # Named as pending before the file appears: a crash between the
            # rename and the commit below leaves a file the next run may
            # replace (and never a file the recorder would refuse).
            manifest["pending"] = sorted(pending | {name})
            backup_lib.write_atomically(
                self._manifest_path(), json.dumps(manifest, indent=1)
            )
        temp = os.path.join(self.directory, f"{_TEMP}{os.getpid()}-{name}")
        self.model.save_weights(temp, overwrite=True)
        backup_lib._fsync(temp)
        os.replace(temp, path)
        backup_lib._fsync_dir(self.directory)
        anchors = [a for a in manifest["anchors"] if a["file"] != name]
        iterations = None
        if getattr(self.model, "optimizer", None) is not None:
            iterations = int(
                keras.ops.convert_to_numpy(self.model.optimizer.iterations)
            )
        anchors.append({"file": name, "epoch": epoch, "step": iterations})
        anchors.sort(key=lambda a: (a["step"] or 0, a["epoch"] or 0))
        manifest = {
            "format": _FORMAT,
            "model": self.model.name,
            "anchors": anchors,
            "pending": sorted(pending - {name}),
        }
        backup_lib.write_atomically(
            self._manifest_path(), json.dumps(manifest, indent=1)
        )

    # --- callback hooks ----------------------------------------------------

    def _due(self, epoch):
        if self.every_steps is not None:
            return False
        if self.at_epochs is not None:
            return epoch in self.at_epochs
        return epoch % self.every_epochs == 0

    def on_epoch_end(self, epoch, logs=None):
        done = epoch + 1
        self._last_epoch = done
        if self._due(done):
            self._write_anchor(done, None)

    def on_train_begin(self, logs=None):
        self._step = None
        # Temporary files of an interrupted write (never a user's file:
        # the recorder's own prefix and name pattern).
        if os.path.isdir(self.directory):
            for entry in os.listdir(self.directory):
                if entry.startswith(_TEMP) and f"-{_PREFIX}" in entry:
                    os.remove(os.path.join(self.directory, entry))

    def _start(self):
        """At the first epoch, after every callback's `on_train_begin` (a
        checkpoint restored): the optimizer's step count, then counted
        here so that JAX's trainer is synced only to write."""
        self._step = 0
        if getattr(self.model, "optimizer", None) is not None:
            self._step = int(
                keras.ops.convert_to_numpy(self.model.optimizer.iterations)
            )

    def on_epoch_begin(self, epoch, logs=None):
        if self._step is not None:
            return
        self._start()
        # Resumed after epoch `epoch`: its anchor is written now if the
        # process died after the checkpoint and before the anchor.
        listed = {a.get("epoch") for a in self._read()["anchors"]}
        if epoch > 0 and self._due(epoch) and epoch not in listed:
            self._write_anchor(epoch, None)

    def on_train_batch_end(self, batch, logs=None):
        if self.every_steps is None:
            return
        if self._step is None:
            self._start()
        self._step += 1
        if self._step % self.every_steps == 0:
            backend_lib.get().sync_variables(self.model)
            self._write_anchor(None, self._step)

    def on_train_end(self, logs=None):
        if not self.final or self._last_epoch is None:
            return
        anchors = self._read()["anchors"]
        last = anchors[-1] if anchors else None
        step = None
        if getattr(self.model, "optimizer", None) is not None:
            step = int(
                keras.ops.convert_to_numpy(self.model.optimizer.iterations)
            )
        if last is not None and last.get("step") == step:
            return  # the final weights are already the last anchor
        if self.every_steps is not None:
            self._write_anchor(None, step)
        else:
            self._write_anchor(self._last_epoch, None)

    def get_config(self):
        return {
            "directory": self.directory,
            "every_epochs": self.every_epochs,
            "at_epochs": self.at_epochs,
            "every_steps": self.every_steps,
            "final": self.final,
        }


def _read_manifest(path):
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(
            f"The route manifest '{path}' cannot be read ({error}). It is "
            "written by `RouteRecorder`; build the route from the anchor "
            "files instead: `Route.from_files([...])`."
        ) from error
    if manifest.get("format") != _FORMAT or "anchors" not in manifest:
        raise ValueError(
            f"The route manifest '{path}' has format "
            f"{manifest.get('format')!r}; this keras_kd reads format "
            f"{_FORMAT}. Build the route from the anchor files instead: "
            "`Route.from_files([...])`."
        )
    return manifest


class Route:
    """A teacher's route: anchor weight files, first (easiest) to last.

    Build it with `from_directory` (what `RouteRecorder` wrote) or
    `from_files` (checkpoints a user already has, e.g. written by
    `keras.callbacks.ModelCheckpoint`: `.weights.h5` files, or `.keras`
    files of the whole teacher), and check it with `check(teacher)` (the
    procedure does). The last anchor should be the converged teacher.

    Args:
        paths: anchor files in route order.
        positions: optional labels of the anchors (e.g. their epochs), for
            logs. Defaults to their indices.
    """

    def __init__(self, paths, positions=None):
        paths = [os.fspath(p) for p in paths]
        if not paths:
            raise ValueError(
                "A route needs at least one anchor file; received none. "
                "Record one with `RouteRecorder` or list checkpoint files."
            )
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"Route: {len(missing)} anchor file(s) do not exist: "
                f"{missing[:3]}{' ...' if len(missing) > 3 else ''}."
            )
        bad = [p for p in paths if not p.endswith((".weights.h5", ".keras"))]
        if bad:
            raise ValueError(
                f"Route: anchors must be `.weights.h5` files (weights, as "
                "`model.save_weights` or `ModelCheckpoint("
                "save_weights_only=True)` write them) or `.keras` files of "
                f"the teacher; received {bad[:3]}."
            )
        self.paths = [os.path.abspath(p) for p in paths]
        self.positions = (
            list(range(len(paths))) if positions is None else list(positions)
        )

    def __len__(self):
        return len(self.paths)

    @classmethod
    def from_directory(cls, directory):
        """The route a `RouteRecorder` wrote into `directory`."""
        path = os.path.join(os.fspath(directory), MANIFEST)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"No route in '{directory}': it has no {MANIFEST}. Record "
                "one with `RouteRecorder(directory)` while the teacher "
                "trains, or pass the checkpoint files to "
                "`Route.from_files([...])`."
            )
        anchors = _read_manifest(path)["anchors"]
        return cls(
            [os.path.join(os.fspath(directory), a["file"]) for a in anchors],
            positions=[
                a["epoch"] if a.get("epoch") is not None else a["step"]
                for a in anchors
            ],
        )

    @classmethod
    def from_files(cls, paths):
        """A route from checkpoint files, in the order given."""
        if isinstance(paths, (str, os.PathLike)):
            raise TypeError(
                "Route.from_files takes a list of files in route order; "
                f"received one path {paths!r}. For a recorder's directory "
                "use `Route.from_directory`."
            )
        return cls(list(paths))

    def load(self, index, model):
        """Loads anchor `index` into `model` (the teacher)."""
        path = self.paths[index]
        try:
            if path.endswith(".keras"):
                saved = keras.saving.load_model(path, compile=False)
                model.set_weights(saved.get_weights())
            else:
                model.load_weights(path)
        except Exception as error:  # noqa: BLE001 - re-raised with context
            raise ValueError(
                f"Anchor {index} of the route, '{path}', could not be loaded "
                f"into the teacher '{model.name}' ({type(error).__name__}: "
                f"{error}). Every anchor must hold "
                "the weights of the teacher's architecture (same layers, "
                "same shapes)."
            ) from error

    def check(self, model):
        """Loads every anchor into `model` once, then restores its weights.

        Raises `ValueError` naming the first file that does not fit.
        """
        snapshot = [np.array(w) for w in model.get_weights()]
        try:
            for index in range(len(self.paths)):
                self.load(index, model)
        finally:
            model.set_weights(snapshot)
