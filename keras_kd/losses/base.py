"""The base class of keras_kd's distillation losses.

A distillation loss names the tensors it reads (`pair_taps`: one
`(teacher Tap, student Tap)` per layer pair, `None` for a model's logits), is
configured once by the Distiller with the shapes of those tensors (building
any connector it needs and rejecting shapes it cannot reconcile), and then,
each step, returns its values in one of two forms (`level`):

- `"example"` (the default): one `(B,)` tensor of per-example values per
  term, which the Distiller weights by `sample_weight` and reduces over the
  global batch;
- `"batch"`: one scalar per term for the whole *global* batch (relations
  between examples, a memory bank). The Distiller hands such a loss the
  features gathered across replicas (`keras_kd.step.StepContext`), so the
  value is the one device's value; the loss applies the sample weights
  itself (`keras_kd.losses.pairwise`: each pair weighted by `w_i * w_j`).

What else a loss reads in the step (the labels, the example ids) it names in
`requires`; the Distiller checks it is there.

Losses are Keras layers so that their connectors and variables (a
temperature a callback may change) are tracked, trained and saved with the
distiller. All loss math is float32 whatever the dtype policy.
"""

import warnings

import keras

from keras_kd.losses.validation import check_pair_weights
from keras_kd.losses.validation import check_preset
from keras_kd.taps import Tap

#: The values of `connector=` of the losses that build connectors
#: (`ActivationBoundary`, `FitNetsHint`): a connector for every pair, only
#: where the shapes differ, or none.
CONNECTOR_CHOICES = ("always", "auto", "never")


def _as_list(value, what):
    if value is None:
        return [None]
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(
        isinstance(v, str) for v in value
    ):
        if not value:
            raise ValueError(
                f"`{what}` is an empty list; name at least one layer."
            )
        return list(value)
    raise TypeError(
        f"`{what}` must be a layer name or a list of layer names; received "
        f"{value!r} of type {type(value).__name__}."
    )


class DistillationLoss(keras.layers.Layer):
    """Base class: layer pairs, their taps, per-term weights, the loss math.

    Subclasses implement `configure_pair` (build a connector / validate
    shapes) and `pair_loss` (per-example float32 values of shape `(B,)`; for
    `level = "batch"`, `pair_loss(index, teacher, student, sample_weight)`
    returning one scalar), and may implement `pair_metrics`, or override
    `compute` to read the step's labels or example ids (`context`).

    A loss usually has one term per layer pair; a loss whose terms combine
    pairs (FSP's Gram matrices between consecutive taps) overrides
    `num_terms_of(num_pairs)`; `pair_weights` then hold one weight per term.

    Args:
        teacher_layer_name: a layer name, a list of names (one per pair), or
            `None` for the teacher's logits.
        student_layer_name: the same for the student (same length).
        pair_weights: one weight per layer pair, each a finite number
            `>= 0` (not a bool; `0` turns a pair off). Defaults to
            `default_pair_weights(n)` of the subclass.
        teacher_tap: where to read the teacher layers (`"output"`,
            `"input"`, `"preactivation"`).
        student_tap: the same for the student layers.
        preset: `"library"` (the default: keras_kd's defaults, chosen on the
            panel benchmark for short Adam/SGD runs and small students) or
            `"paper"` (the official code's weight and hyperparameters, to
            reproduce the published recipes). Arguments passed explicitly
            override the preset.
    """

    #: Weight the Distiller uses when `distillation_loss_weights` is `None`
    #: (`preset="library"`). An instance holds the value of its preset.
    default_weight = 1.0
    #: The official code's weight (`preset="paper"`).
    paper_weight = 1.0
    #: Default tap positions.
    default_tap = "output"
    #: Whether the loss reads hidden layers (and so needs layer names).
    reads_hidden_layers = True
    #: `"example"`: `compute` returns per-example `(B,)` values; `"batch"`:
    #: one scalar per term over the global batch (see the module docstring).
    level = "example"
    #: What the loss reads from the step besides the features: any of
    #: `"labels"` and `"example_ids"` (`keras_kd.step.StepContext`).
    requires = ()
    #: Whether the method trains as an initialisation stage before the task
    #: (`keras_kd.callbacks.InitializationSchedule`: AB, FSP).
    initialization_stage = False
    #: Whether the loss compares the student with a target that training
    #: moves (CRD's memory bank), so that its value need not fall from one
    #: step to the next even on a fixed batch.
    moving_target = False

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        *,
        pair_weights=None,
        teacher_tap=None,
        student_tap=None,
        preset="library",
        name=None,
        **kwargs,
    ):
        kwargs.setdefault("dtype", "float32")
        preset = check_preset(preset, type(self).__name__)
        super().__init__(name=name, **kwargs)
        self.preset = preset
        self.default_weight = float(
            type(self).paper_weight
            if preset == "paper"
            else type(self).default_weight
        )
        if self.reads_hidden_layers and (
            teacher_layer_name is None or student_layer_name is None
        ):
            raise ValueError(
                f"{type(self).__name__} reads hidden layers: pass "
                "`teacher_layer_name` and `student_layer_name` (a layer name "
                f"each, or lists of names, one per pair); received "
                f"{teacher_layer_name!r} and {student_layer_name!r}."
            )
        teachers = _as_list(teacher_layer_name, "teacher_layer_name")
        students = _as_list(student_layer_name, "student_layer_name")
        if len(teachers) != len(students):
            raise ValueError(
                f"{type(self).__name__} got {len(teachers)} teacher layer(s) "
                f"{teachers} and {len(students)} student layer(s) {students}. "
                "Expected one student layer per teacher layer: pass two lists "
                "of the same length."
            )
        if (None in teachers) != (None in students):
            raise ValueError(
                f"{type(self).__name__}: either both or neither of "
                "`teacher_layer_name` and `student_layer_name` may be None "
                f"(None means the model's logits); received {teachers} and "
                f"{students}."
            )
        self.teacher_layer_name = teacher_layer_name
        self.student_layer_name = student_layer_name
        self.teacher_tap = teacher_tap or self.default_tap
        self.student_tap = student_tap or self.default_tap
        n = self.num_terms_of(len(teachers))
        if pair_weights is None:
            weights = self.default_pair_weights(n)
        else:
            weights = check_pair_weights(pair_weights, n, type(self).__name__)
        self.pair_weights = [float(w) for w in weights]
        self._pair_weights_arg = (
            None if pair_weights is None else list(self.pair_weights)
        )
        # `teacher_tap` / `student_tap` say where every layer is read;
        # `pair_taps` holds what each pair reads, a `Tap` (layer, where) per
        # side or `None` for the model's logits.
        self.pair_taps = [
            (
                None if t is None else Tap(t, self.teacher_tap),
                None if s is None else Tap(s, self.student_tap),
            )
            for t, s in zip(teachers, students)
        ]
        self.connectors = []

    @staticmethod
    def default_pair_weights(n):
        """Per-pair weights when none are given: equal, summing to one."""
        return [1.0 / n] * n

    @property
    def num_pairs(self):
        return len(self.pair_taps)

    @classmethod
    def num_terms_of(cls, num_pairs):
        """How many weighted terms `num_pairs` layer pairs give (one each)."""
        return num_pairs

    @property
    def num_terms(self):
        """The number of weighted terms (and of `pair_weights`)."""
        return self.num_terms_of(self.num_pairs)

    def term_log_name(self, index):
        """The log name of one term's value (`<loss>_<student layer>`)."""
        return self.pair_log_name(index)

    #: Deprecated attribute names a subclass still answers to:
    #: `{old name: (message, function of the loss returning the value)}`.
    _deprecated_attributes = {
        "teacher_taps": (
            "DistillationLoss.teacher_taps is deprecated (one letter away "
            "from the `teacher_tap` argument): read `pair_taps`, one "
            "(teacher Tap, student Tap) per layer pair.",
            lambda loss: [t for t, _ in loss.pair_taps],
        ),
        "student_taps": (
            "DistillationLoss.student_taps is deprecated (one letter away "
            "from the `student_tap` argument): read `pair_taps`, one "
            "(teacher Tap, student Tap) per layer pair.",
            lambda loss: [s for _, s in loss.pair_taps],
        ),
    }

    def __getattr__(self, name):
        # Reached only when the normal lookup fails. Deprecated names are
        # answered here rather than by properties: Keras's saving reads
        # every attribute `dir()` lists, which would warn on every save.
        deprecated = type(self)._deprecated_attributes.get(name)
        if deprecated is None:
            # PyTorch's `Module.__getattr__` finds sublayers set as
            # attributes (they live in `_modules`, not `__dict__`).
            parent = getattr(super(), "__getattr__", None)
            if parent is not None:
                return parent(name)
            raise AttributeError(
                f"'{type(self).__name__}' object has no attribute '{name}'"
            )
        message, value = deprecated
        warnings.warn(message, DeprecationWarning, stacklevel=2)
        return value(self)

    def pair_label(self, index):
        """A short name for a layer pair, used in logs."""
        tap = self.pair_taps[index][1]
        return "logits" if tap is None else tap.layer_name.replace("/", "_")

    def _pair_metric_name(self, base, index):
        return f"{base}_{self.pair_label(index)}"

    def pair_log_name(self, index):
        """The log name of one pair's loss value (`<loss>_<student layer>`)."""
        return f"{self.name}_{self.pair_label(index)}"

    # --- configuration (called once by the Distiller, before any tracing) --

    def configure(self, teacher_shapes, student_shapes, student_dtype, names):
        """Builds connectors and validates shapes for every pair.

        Args:
            teacher_shapes, student_shapes: per-pair feature shapes.
            student_dtype: the student's dtype policy, for connectors.
            names: `(teacher_model_name, student_model_name)`.
        """
        connectors = []
        for index, (t_shape, s_shape) in enumerate(
            zip(teacher_shapes, student_shapes)
        ):
            connector = self.configure_pair(
                index,
                None if t_shape is None else tuple(t_shape),
                None if s_shape is None else tuple(s_shape),
                student_dtype,
                names,
            )
            connectors.append(connector)
        self.connectors = [c for c in connectors if c is not None]
        self._connector_of_pair = connectors
        self.built = True

    def configure_pair(self, index, teacher_shape, student_shape, dtype, names):
        """Validates one pair; returns a connector layer or `None`."""
        return None

    def check_models(self, teacher, student):
        """Warns about taps the method cannot use well (a no-op here).

        The Distiller calls it once, when it is built, with the teacher and
        the student models. The default does nothing; a subclass overrides it
        to warn (`UserWarning`) about taps that are valid but make the method
        meaningless, e.g. `ActivationBoundary` on a sigmoid output.

        Args:
            teacher: the teacher `keras.Model`.
            student: the student `keras.Model`.

        Returns:
            `None`.
        """
        return None

    def describe_pair(self, index, names):
        teacher, student = names
        t, s = self.pair_taps[index]
        return (
            f"teacher '{teacher}' layer '{t.layer_name if t else 'logits'}' "
            f"and student '{student}' layer "
            f"'{s.layer_name if s else 'logits'}'"
        )

    # --- math ---------------------------------------------------------------

    def compute(
        self, teacher_features, student_features, training=False, context=None
    ):
        """Float32 values for every term: per example, or for the batch.

        Args:
            teacher_features, student_features: the tapped tensors, one per
                layer pair (for `level = "batch"`, gathered over the global
                batch).
            training: whether the step trains (connectors' BatchNorm).
            context: the step's `keras_kd.step.StepContext` (labels, sample
                weights, example ids; global for `level = "batch"`), or
                `None` when the loss is called outside a Distiller.

        Returns:
            `(term_losses, metrics)`: a list with one value per term (a
            `(B,)` tensor, or a scalar for `level = "batch"`), and a dict of
            extra metrics of the same kind, named as `metric_names()` lists
            them.
        """
        batch = self.level == "batch"
        weights = None
        if batch and context is not None:
            weights = context.sample_weight
        pair_losses = []
        metrics = {}
        per_pair_metrics = []
        for index, (t, s) in enumerate(zip(teacher_features, student_features)):
            t, s = self.prepare_pair(index, t, s, training)
            if batch:
                pair_losses.append(self.pair_loss(index, t, s, weights))
            else:
                pair_losses.append(self.pair_loss(index, t, s))
            per_pair_metrics.append(self.pair_metrics(index, t, s))
        for base in self.pair_metric_names:
            values = [m[base] for m in per_pair_metrics]
            if self.num_pairs > 1:
                for index, value in enumerate(values):
                    metrics[self._pair_metric_name(base, index)] = value
            metrics[base] = keras.ops.mean(keras.ops.stack(values), axis=0)
        return pair_losses, metrics

    def prepare_pair(self, index, teacher, student, training):
        """Applies the pair's connector; casts both tensors to float32."""
        connector = self._connector_of_pair[index]
        if connector is not None:
            student = connector(student, training=training)
        return keras.ops.cast(teacher, "float32"), keras.ops.cast(
            student, "float32"
        )

    def pair_loss(self, index, teacher, student, *sample_weight):
        """One pair's loss: `(B,)` per example, or a scalar for the batch.

        `level = "batch"` losses receive the global batch's sample weights
        (`(B,)` or `None`) as a fourth argument.
        """
        raise NotImplementedError

    #: Names of the extra per-example metrics `pair_metrics` returns.
    pair_metric_names = ()

    def pair_metrics(self, index, teacher, student):
        """Extra per-example metrics of a pair: `{name: (B,) tensor}`."""
        return {}

    def metric_names(self):
        """Every name `compute` returns in its metrics dict."""
        names = []
        for base in self.pair_metric_names:
            if self.num_pairs > 1:
                names += [
                    self._pair_metric_name(base, i)
                    for i in range(self.num_pairs)
                ]
            names.append(base)
        return names

    def get_config(self):
        config = super().get_config()
        config.pop("trainable", None)
        config.update(
            teacher_layer_name=self.teacher_layer_name,
            student_layer_name=self.student_layer_name,
            pair_weights=self._pair_weights_arg,
            teacher_tap=self.teacher_tap,
            student_tap=self.student_tap,
            preset=self.preset,
        )
        return config
