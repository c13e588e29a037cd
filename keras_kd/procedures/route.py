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
- `RouteConstrainedOptimization`: a procedure that trains the student in
  stages, each against the next anchor, with the paper's two strategies
  (equal intervals and greedy search), resumable mid-route.
"""

import json
import math
import os

import keras
import numpy as np

from keras_kd import backend as backend_lib
from keras_kd import backup as backup_lib
from keras_kd import taps as taps_lib
from keras_kd.losses.logits import logits_distillation_loss
from keras_kd.procedures.base import Procedure

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
            if value is not None and (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < 1
            ):
                raise ValueError(
                    f"RouteRecorder: `{what}` must be an int >= 1; received "
                    f"{value!r}."
                )
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


def equal_interval_anchors(route_length, stages):
    """The anchors of equal intervals: `stages` indices, the last the end.

    Stage `k` (from 0) uses anchor `ceil((k + 1) * N / stages) - 1` of a
    route of `N` anchors, so the anchors are evenly spaced along the route
    and the last stage distils from the converged teacher.
    """
    if stages > route_length:
        raise ValueError(
            f"RouteConstrainedOptimization: {stages} stages need at least "
            f"{stages} anchors; the route has {route_length}. Pass "
            f"`stages={route_length}` or fewer, or record more anchors."
        )
    return [
        math.ceil((k + 1) * route_length / stages) - 1 for k in range(stages)
    ]


def greedy_next_anchor(divergences, current, relaxation):
    """The paper's greedy search (Algorithm 2) for the next anchor.

    `divergences[j]` is the divergence `H_j` between the current student and
    anchor `j` on held-out training batches; `current` is `i`, the anchor
    the student just learned from. The paper: "compute r_ij = (H_j - H_i) /
    H_i; if r_ij > delta then return j - 1", for `j = i + 1, ...`, and the
    last anchor when no `r_ij` exceeds `delta`. Where the paper is silent:
    the next anchor is at least `i + 1` (when already `r_{i,i+1} > delta`
    the rule would return `i` and the route would never advance), and
    `i` at the end of the route stays there.

    Returns:
        The index of the next anchor.
    """
    last = len(divergences) - 1
    if current >= last:
        return last
    base = float(divergences[current])
    for j in range(current + 1, last + 1):
        ratio = (float(divergences[j]) - base) / max(base, 1e-12)
        if ratio > relaxation:
            return max(j - 1, current + 1)
    return last


class _Untracked:
    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


@keras.saving.register_keras_serializable(package="keras_kd")
class RouteConstrainedOptimization(Procedure):
    """Distil from anchors on the teacher's route, stage by stage.

    Training (the epochs of one `fit`) is split into stages of
    `stage_epochs` epochs; during stage `k` the Distiller's teacher holds
    the weights of anchor `a_k` of the route, loaded at the stage's first
    epoch. Every distillation loss (KD alone, or with feature losses) then
    reads that anchor, in the same single teacher pass per step. Anchors:

    - `strategy="equal"` (the paper's equal epoch intervals): anchors evenly
      spaced along the route (`equal_interval_anchors`), the last stage on
      the converged teacher;
    - `strategy="greedy"` (the paper's greedy search, Algorithm 2): stage 0
      uses the route's first anchor; at each later stage the student's
      divergence `H_j = KL(p_anchor_j || p_student)` (softmax at
      `search_temperature`, averaged over the `search_data` batches) is
      measured for every anchor from the current one on, and the next anchor
      is `greedy_next_anchor(H, i, relaxation)`: the last `j - 1` before
      `(H_j - H_i) / H_i` exceeds `relaxation` (delta). The batches must
      come from the *training* split (held out of nothing: the paper's
      "validation set" is read here as held-out training batches, never
      the test set). The last stage always uses the last anchor (the
      converged teacher), as in the paper's routes.

    Where the paper is silent or ambiguous, this implementation chose: one
    `fit` with the stages in sequence (the comparison with KD at the same
    number of student steps; the paper's multi-stage runs train a full
    schedule per stage), the learning-rate schedule of `fit` continuing
    across stages, the student keeping its weights between stages, the
    greedy measure at `search_temperature=1`, and `relaxation=0.8` (the
    value a secondary account of the paper gives for MobileNetV2; the paper
    text does not state it). The first anchor of a greedy route is its
    first file.

    State: the stage and the anchor are variables of the procedure, saved
    with the distiller and in `AtomicBackupAndRestore`'s checkpoints (the
    teacher's weights, i.e. the current anchor, are in them too), so a
    distillation killed mid-route resumes at the same stage and anchor. The
    teacher stays frozen: its weights change only between stages, by this
    procedure's callback (`callbacks()`, which
    `keras_kd.callbacks.for_distiller` adds; without it the teacher keeps
    the weights it was given and training is plain distillation). On JAX
    the callback writes the trainer's copy of the variables back and makes
    it read them again. What this relaxes of the Distiller's invariants:
    the teacher's weights change during `fit` (between stages only); each
    network still runs once per step, and 2 replicas still take the
    1-device step.

    Args:
        route: a `Route`, a directory written by `RouteRecorder`, or a list
            of anchor files.
        stages: the number of stages. Defaults to `4` for `"equal"`; for
            `"greedy"` the number of stage boundaries (the anchors the
            search may choose), also `4`.
        strategy: `"equal"` or `"greedy"`. Defaults to `"equal"`.
        stage_epochs: epochs per stage. Defaults to `None`: the epochs of
            `fit` divided by `stages` (rounded up).
        search_data: for `"greedy"`: held-out batches of the training
            split (an array of inputs, `(x, y)`, or an iterable of
            batches).
        search_batches: the most batches of `search_data` read per search.
            Defaults to `8`.
        search_temperature: softmax temperature of the search's KL.
            Defaults to `1.0`.
        relaxation: `delta` of the greedy search. Defaults to `0.8`.
        check: load every anchor into the teacher once when the Distiller
            is built, to fail early on files that do not fit. Defaults to
            `True`.
        verbose: print a line per stage. Defaults to `1`.
        name: defaults to `"route_constrained_optimization"`.

    Example:

    ```python
    import tempfile
    import keras, numpy as np
    import keras_kd

    def mlp(width, name):
        inputs = keras.Input((8,))
        x = keras.layers.Dense(width, activation="relu")(inputs)
        return keras.Model(inputs, keras.layers.Dense(3)(x), name=name)

    x = np.random.rand(64, 8).astype("float32")
    y = np.random.randint(0, 3, size=(64,))
    route_dir = tempfile.mkdtemp()
    teacher = mlp(32, "teacher")
    teacher.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    teacher.fit(x, y, epochs=4, verbose=0, callbacks=[
        keras_kd.procedures.RouteRecorder(route_dir, every_epochs=1)])

    distiller = keras_kd.Distiller(
        teacher, mlp(8, "student"),
        keras_kd.losses.LogitsDistillation(temperature=4.0),
        procedures=keras_kd.procedures.RouteConstrainedOptimization(
            route_dir, stages=2),
    )
    distiller.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        from_logits=True))
    distiller.fit(x, y, epochs=4, verbose=0,
                  callbacks=keras_kd.callbacks.for_distiller(distiller))
    ```
    """

    def __init__(
        self,
        route,
        *,
        stages=4,
        strategy="equal",
        stage_epochs=None,
        search_data=None,
        search_batches=8,
        search_temperature=1.0,
        relaxation=0.8,
        check=True,
        verbose=1,
        name="route_constrained_optimization",
        **kwargs,
    ):
        restored = kwargs.pop("restored", False)
        super().__init__(name=name, **kwargs)
        if isinstance(route, (str, os.PathLike)):
            route = Route.from_directory(route)
        elif isinstance(route, (list, tuple)):
            route = Route.from_files(route)
        if not isinstance(route, Route):
            raise TypeError(
                "RouteConstrainedOptimization: `route` must be a "
                "`keras_kd.procedures.Route`, a directory written by "
                "`RouteRecorder` or a list of anchor files; received "
                f"{type(route).__name__}."
            )
        if strategy not in ("equal", "greedy"):
            raise ValueError(
                "RouteConstrainedOptimization: `strategy` must be 'equal' "
                f"or 'greedy'; received {strategy!r}."
            )
        if (
            isinstance(stages, bool)
            or not isinstance(stages, int)
            or (stages < 1)
        ):
            raise ValueError(
                "RouteConstrainedOptimization: `stages` must be an int >= "
                f"1; received {stages!r}."
            )
        if strategy == "equal":
            equal_interval_anchors(len(route), stages)  # raises if too few
        if strategy == "greedy" and search_data is None and not restored:
            raise ValueError(
                "RouteConstrainedOptimization(strategy='greedy') measures "
                "how hard each anchor is for the student on held-out "
                "batches of the training split: pass them as "
                "`search_data=` (e.g. `x_train[-1000:]`, kept out of "
                "`fit`), never the test set."
            )
        if stage_epochs is not None and (
            isinstance(stage_epochs, bool)
            or not isinstance(stage_epochs, int)
            or stage_epochs < 1
        ):
            raise ValueError(
                "RouteConstrainedOptimization: `stage_epochs` must be an int "
                f">= 1; received {stage_epochs!r}."
            )
        if (
            isinstance(search_batches, bool)
            or not isinstance(search_batches, int)
            or search_batches < 1
        ):
            raise ValueError(
                "RouteConstrainedOptimization: `search_batches` must be an "
                f"int >= 1; received {search_batches!r}."
            )
        if not relaxation > 0:
            raise ValueError(
                "RouteConstrainedOptimization: `relaxation` (delta) must be "
                f"> 0; received {relaxation!r}."
            )
        self.route = route
        self.stages = stages
        self.strategy = strategy
        self.stage_epochs = stage_epochs
        self.search_batches = int(search_batches)
        self.search_temperature = float(search_temperature)
        self.relaxation = float(relaxation)
        self.check = bool(check)
        self.verbose = int(verbose)
        self._data = _Untracked(search=search_data, distiller=None)
        # Loaded from a saved distiller: the anchors are read when a stage
        # starts, not checked at load time (they may have moved since).
        self._restored = restored
        # -1: no stage started yet.
        self.stage = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="stage",
        )
        self.anchor = self.add_weight(
            shape=(),
            dtype="int32",
            initializer="zeros",
            trainable=False,
            name="anchor",
        )
        self.stage.assign(-1)
        self.anchor.assign(-1)

    def configure(self, distiller):
        self._data.distiller = distiller
        if self.check and not self._restored:
            self.route.check(distiller.teacher)

    # --- the stage plan ------------------------------------------------------

    def stage_of(self, epoch, epochs):
        """The stage (from 0) of epoch `epoch` (from 0) of `epochs`.

        Without `stage_epochs`, stage `k` holds epochs `[k E / S, (k + 1)
        E / S)` (rounded down), so every stage is reached; with it, stages
        of `stage_epochs` epochs, the last one running to the end.
        """
        if self.stage_epochs:
            return min(epoch // self.stage_epochs, self.stages - 1)
        return min(epoch * self.stages // epochs, self.stages - 1)

    def check_epochs(self, epochs):
        """Fails unless `epochs` epochs reach every stage."""
        if self.stage_epochs:
            needed = self.stage_epochs * (self.stages - 1) + 1
            how = f"stages of {self.stage_epochs} epochs"
        else:
            needed, how = self.stages, "at least one epoch per stage"
        if epochs < needed:
            raise ValueError(
                f"RouteConstrainedOptimization: {self.stages} stages with "
                f"{how} need at least {needed} epochs, so that the last "
                f"stage distils from the converged teacher; `fit` runs "
                f"{epochs}. Train longer, or pass fewer `stages` (or a "
                "smaller `stage_epochs`)."
            )

    def anchor_of(self, stage, previous):
        """The anchor of `stage`, given the previous stage's anchor."""
        last = len(self.route) - 1
        if self.strategy == "equal":
            return equal_interval_anchors(len(self.route), self.stages)[stage]
        if stage == 0:
            return 0
        if stage == self.stages - 1:
            return last
        return greedy_next_anchor(
            self.divergences(previous), previous, self.relaxation
        )

    def divergences(self, start):
        """`H_j` for every anchor `j >= start` (earlier ones are +inf):
        `KL(p_anchor || p_student)` on the search batches."""
        if self._data.search is None:
            raise ValueError(
                "RouteConstrainedOptimization's greedy search needs held-out "
                "batches of the training split; this procedure has none (a "
                "loaded distiller does not keep them). Call "
                "`procedure.set_search_data(x_heldout)` before `fit`."
            )
        distiller = self._data.distiller
        teacher, student = distiller.teacher, distiller.student
        batches = list(_batches(self._data.search, self.search_batches))

        def logits_fn(model):
            tap = taps_lib.logits_tap(model)
            if tap is None:
                return lambda v: model(v, training=False)
            extractor = taps_lib.build_extractor(model, [tap], role="search")
            return lambda v: extractor(v, training=False)[1]

        student_fn, teacher_fn = logits_fn(student), logits_fn(teacher)
        student_logits = [student_fn(b) for b in batches]
        snapshot = [np.array(w) for w in teacher.get_weights()]
        temperature = self.search_temperature
        values = [float("inf")] * len(self.route)
        try:
            for j in range(start, len(self.route)):
                self.route.load(j, teacher)
                total, count = 0.0, 0
                for batch, s_logits in zip(batches, student_logits):
                    kl = logits_distillation_loss(
                        keras.ops.cast(teacher_fn(batch), "float32"),
                        keras.ops.cast(s_logits, "float32"),
                        temperature=temperature,
                        reduction="none",
                    )
                    kl = keras.ops.convert_to_numpy(kl) / temperature**2
                    total += float(np.sum(kl))
                    count += kl.shape[0]
                values[j] = total / max(count, 1)
        finally:
            teacher.set_weights(snapshot)
        return values

    # --- the callback --------------------------------------------------------

    def callbacks(self):
        return [_RouteCallback(self)]

    def enter_stage(self, epoch, epochs, first=False):
        """Loads the anchor of `epoch`'s stage into the teacher if needed.

        `first`: the first epoch of this `fit` (a resumed run reloads the
        stage's anchor, in case the teacher was rebuilt).
        """
        distiller = self._data.distiller
        backend_lib.get().sync_variables(distiller)
        stage = self.stage_of(epoch, epochs)
        current_stage = int(keras.ops.convert_to_numpy(self.stage))
        current_anchor = int(keras.ops.convert_to_numpy(self.anchor))
        if stage == current_stage and current_anchor >= 0:
            if first:
                self.route.load(current_anchor, distiller.teacher)
            return current_anchor
        if stage < current_stage:  # a new `fit` from an earlier epoch
            current_stage, current_anchor = -1, -1
        anchor = current_anchor
        for s in range(max(current_stage + 1, 0), stage + 1):
            anchor = self.anchor_of(s, anchor)
        self.route.load(anchor, distiller.teacher)
        self.stage.assign(stage)
        self.anchor.assign(anchor)
        if self.verbose:
            print(
                f"Route stage {stage + 1}/{self.stages}: teacher = anchor "
                f"{anchor + 1}/{len(self.route)} "
                f"({os.path.basename(self.route.paths[anchor])})"
            )
        return anchor

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "route": list(self.route.paths),
                "stages": self.stages,
                "strategy": self.strategy,
                "stage_epochs": self.stage_epochs,
                "search_batches": self.search_batches,
                "search_temperature": self.search_temperature,
                "relaxation": self.relaxation,
                "check": self.check,
                "verbose": self.verbose,
                # A loaded distiller has no search data; a greedy search
                # then asks for it (`set_search_data`).
                "restored": True,
            }
        )
        return config

    def set_search_data(self, search_data):
        """The held-out training batches of the greedy search."""
        self._data.search = search_data


class _RouteCallback(keras.callbacks.Callback):
    """Enters each stage at its first epoch (and on resume)."""

    def __init__(self, procedure):
        super().__init__()
        self.procedure = procedure

    def on_train_begin(self, logs=None):
        self.procedure.check_epochs(self.params.get("epochs") or 1)
        self._first = True

    def on_epoch_begin(self, epoch, logs=None):
        self.procedure.enter_stage(
            epoch, self.params.get("epochs") or 1, first=self._first
        )
        self._first = False


def _batches(data, limit):
    """Up to `limit` input batches of `data`: an array of inputs, `(x, y)`
    or `[x, y]`, or an iterable of batches (each `x`, `(x, y)` or
    `(x, y, w)`). Raises when there are none."""
    batches = list(_iterate_batches(data, limit))
    if not batches:
        raise ValueError(
            "RouteConstrainedOptimization: `search_data` gave no batches "
            f"(received {type(data).__name__}; `search_batches={limit}`). "
            "Pass held-out training inputs, e.g. `x_train[-1000:]`, or an "
            "iterable of batches, and `search_batches >= 1`."
        )
    return batches


def _iterate_batches(data, limit):
    if isinstance(data, (tuple, list)) and data and hasattr(data[0], "shape"):
        data = data[0]  # (x, y)
    if isinstance(data, dict):
        raise TypeError(
            "RouteConstrainedOptimization: `search_data` is a dict; pass "
            "the networks' input array (or batches of it)."
        )
    if hasattr(data, "shape") and not hasattr(data, "element_spec"):
        size = 256
        for start in range(0, min(len(data), size * limit), size):
            yield data[start : start + size]
        return
    for i, batch in enumerate(data):
        if i >= limit:
            return
        if isinstance(batch, (tuple, list)):
            batch = batch[0]
        yield batch
