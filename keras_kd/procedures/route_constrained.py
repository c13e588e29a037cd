"""`RouteConstrainedOptimization`: distil from anchors on a teacher's route.

The stages, the anchors of the paper's two strategies and the callback that
loads each stage's anchor into the teacher; the route itself (recording and
loading anchors) is in `keras_kd.procedures.route`.
"""

import math
import os

import keras
import numpy as np

from keras_kd import backend as backend_lib
from keras_kd import taps as taps_lib
from keras_kd.distiller import _Untracked
from keras_kd.losses.logits import logits_distillation_loss
from keras_kd.procedures.base import Procedure
from keras_kd.procedures.base import check_int
from keras_kd.procedures.route import Route


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
        check_int("RouteConstrainedOptimization", "stages", stages)
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
        if stage_epochs is not None:
            check_int(
                "RouteConstrainedOptimization", "stage_epochs", stage_epochs
            )
        check_int(
            "RouteConstrainedOptimization", "search_batches", search_batches
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
        # The current stage and anchor; -1: no stage started yet.
        self.stage, self.anchor = (
            self.add_weight(
                shape=(),
                dtype="int32",
                initializer=keras.initializers.Constant(-1),
                trainable=False,
                name=name,
            )
            for name in ("stage", "anchor")
        )

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
