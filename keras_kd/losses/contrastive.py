"""Contrastive representation distillation (CRD): Tian, Krishnan & Isola,
ICLR 2020."""

import math

import keras
import numpy as np
from keras import ops

from keras_kd.connectors import EmbeddingHead
from keras_kd.losses import pairwise
from keras_kd.losses import registry
from keras_kd.losses.base import DistillationLoss
from keras_kd.losses.validation import check_real
from keras_kd.losses.validation import is_integer

__all__ = [
    "ContrastiveRepresentation",
    "contrastive_nce_loss",
    "contrastive_normalizer",
]

#: The official number of negatives; the default is the smaller of this and
#: what the data set can give.
OFFICIAL_NEGATIVES = 16384
_EPSILON = 1e-7
NEGATIVE_SAMPLERS = ("uniform", "other_class")


def _dots(anchor, bank_rows):
    """`<bank_rows[b, k], anchor[b]>`, `(B, K + 1)`."""
    return ops.einsum("bkd,bd->bk", bank_rows, anchor)


def _bank_dots(anchor, bank, rows):
    """`<bank[rows[b, k]], anchor[b]>` without always gathering the rows.

    When the rows cover much of the bank (`K + 1 >= N / 8`: the default
    `K` on a small data set), one `(B, N)` product with the whole bank is
    cheaper than gathering `(B, K + 1, D)` rows; otherwise gather. Equal
    values either way.
    """
    if rows.shape[1] * 8 >= bank.shape[0]:
        dots = ops.matmul(anchor, ops.transpose(bank))
        return ops.take_along_axis(dots, rows, axis=1)
    return _dots(anchor, ops.take(bank, rows, axis=0))


def _normalizer_from_dots(dots, temperature, num_examples, sample_weight):
    per_anchor = ops.mean(ops.exp(ops.stop_gradient(dots) / temperature), 1)
    w = pairwise.example_weights(sample_weight, per_anchor)
    return pairwise.weighted_mean(per_anchor, w) * float(num_examples)


def _nce_from_dots(dots, temperature, num_examples, normalizer):
    p = ops.exp(dots / temperature) / normalizer
    noise = (dots.shape[1] - 1) / float(num_examples)
    positive = ops.log(p[:, 0] / (p[:, 0] + noise + _EPSILON))
    rest = ops.sum(ops.log(noise / (p[:, 1:] + noise + _EPSILON)), axis=1)
    return -(positive + rest)


def contrastive_normalizer(
    anchor, bank_rows, *, temperature, num_examples, sample_weight=None
):
    """CRD's normalising constant `Z`, as the official code sets it.

    `Z = mean_{b,k} exp(<bank_rows[b, k], anchor[b]> / T) * num_examples`,
    the Monte-Carlo estimate of the partition function that the official
    code computes on its first batch and keeps.

    Args:
        anchor: `(B, D)` L2-normalised embeddings of one network.
        bank_rows: `(B, K + 1, D)` rows of the other network's memory bank
            (column 0 the positive, then `K` negatives).
        temperature: the NCE temperature `T`.
        num_examples: the number of examples in the memory bank.
        sample_weight: `(B,)` weights over the anchors, or `None`.
            Defaults to `None`.

    Returns:
        A float32 scalar (no gradient).
    """
    dots = _dots(
        ops.cast(anchor, "float32"),
        ops.stop_gradient(ops.cast(bank_rows, "float32")),
    )
    return _normalizer_from_dots(dots, temperature, num_examples, sample_weight)


def contrastive_nce_loss(
    anchor, bank_rows, *, temperature, num_examples, normalizer
):
    """CRD's NCE loss per anchor, against a memory bank's rows.

    With `P_k = exp(<bank_rows[b, k], anchor[b]> / T) / Z`, `m = K` noise
    samples and the uniform noise `P_n = 1 / num_examples`, each anchor's
    loss is `-log h(P_0) - sum_{k >= 1} log(1 - h(P_k))`,
    `h(P) = P / (P + m P_n)`: the positive (column 0) should be told from
    the noise, each negative should not (Eq. 18; the official code adds
    `1e-7` to the denominators).

    Reference:
        Tian, Krishnan, Isola, "Contrastive Representation Distillation",
        ICLR 2020, https://arxiv.org/abs/1910.10699. Official code:
        github.com/HobbitLong/RepDistiller (`crd/criterion.py`,
        `crd/memory.py`).

    Args:
        anchor: `(B, D)` L2-normalised embeddings (gradients flow here).
        bank_rows: `(B, K + 1, D)` memory-bank rows (constants).
        temperature: the NCE temperature `T` (official 0.07).
        num_examples: the number of examples in the memory bank.
        normalizer: `Z` (`contrastive_normalizer`).

    Returns:
        A float32 `(B,)` tensor.
    """
    dots = _dots(
        ops.cast(anchor, "float32"),
        ops.stop_gradient(ops.cast(bank_rows, "float32")),
    )
    return _nce_from_dots(dots, temperature, num_examples, normalizer)


def _keras_kd_taps(stages):
    """The pooled penultimate features (RepDistiller's `feat[-1]`)."""
    return dict(teacher_layer_name="pool", student_layer_name="pool")


@registry.register(
    "crd", "contrastive_representation", taps={"keras_kd": _keras_kd_taps}
)
@keras.saving.register_keras_serializable(package="keras_kd")
class ContrastiveRepresentation(DistillationLoss):
    """Contrastive representation distillation with a memory bank.

    Each network's features pass through a linear embedding head (trained
    with the student, never exported) to L2-normalised `feature_dim`-vectors.
    The student's embedding of an example should be closer to the teacher's
    embedding of the *same* example than to the teacher's embeddings of `K`
    other examples, and vice versa: an NCE loss (`contrastive_nce_loss`)
    against two memory banks that hold one embedding per training example
    (teacher's and student's), updated with momentum after each step. The
    loss is the sum of both directions, averaged over the batch (weighted by
    `sample_weight`).

    Example ids. The memory bank is indexed by each example's position in
    the training set, so the training data must carry them: pass the inputs
    as a dict with an `"example_id"` entry (`keras_kd.step.EXAMPLE_ID`).
    Arrays: `fit({"image": x, "example_id": np.arange(len(x))}, y)`;
    `tf.data`: `keras_kd.data.with_example_ids(dataset)` before shuffling
    and batching; a `keras.utils.PyDataset`: return
    `({"image": x, "example_id": ids}, y)` from `__getitem__`. The
    Distiller takes the ids out before the networks see the inputs.
    Without ids, training stops at once with an error saying so. In
    evaluation (no ids needed) the loss is computed only where ids are
    given, and reported as 0 otherwise; the banks never change.

    Negatives. `K = num_negatives` random example ids per anchor, uniform
    over the data set (`negatives="uniform"`, the paper), or uniform over
    the examples of *other classes* (`negatives="other_class"`, what the
    official code's data loader does; pass the class of every example as
    `example_labels`). `K` defaults to what the data set can give: the
    official 16,384, or fewer for a smaller set (every other example, or
    every example of the other classes).

    Scale-out: a batch-level loss (`level = "batch"`). Under
    `tf.distribute` every replica computes the loss, draws the negatives
    (from the same random state) and updates the banks on the *global*
    batch, so the replicas' banks stay identical and N replicas take the
    one-device step.

    The banks (`2 * num_examples * feature_dim` float32 values) and the two
    normalising constants are non-trainable variables, saved with the
    distiller; the constants are set on the first training step, as in the
    official code.

    Reference:
        Tian, Krishnan, Isola, ICLR 2020. RepDistiller `crd/` (feature
        dimension 128, K 16384, T 0.07, momentum 0.5, weight 0.8 beside
        cross-entropy and KD).

    Args:
        teacher_layer_name: the teacher layer embedded (RepDistiller: the
            pooled penultimate features).
        student_layer_name: the matching student layer.
        num_examples: the number of examples in the training set (ids run
            from 0 to `num_examples - 1`).
        feature_dim: the embedding dimension. Defaults to `128`.
        num_negatives: negatives per anchor. Defaults to the smaller of
            16,384 and what the data set can give.
        temperature: the NCE temperature. Defaults to `0.07`.
        momentum: the memory banks' momentum. Defaults to `0.5`.
        negatives: `"uniform"` or `"other_class"`. Defaults to
            `"uniform"`.
        example_labels: the class of every example, `(num_examples,)`
            integers (for `negatives="other_class"`).
        seed: seed of the negatives' sampler. Defaults to `None`.
        **kwargs: `teacher_tap`, `student_tap`, `preset`, `name` (see
            `DistillationLoss`). The term's weight: 0.08 with
            `preset="library"` (a tenth of the official value, chosen on
            the panel benchmark, where 0.8 cost a small CIFAR-10 student
            2.7 points at seed 0 and 0.08 did not), 0.8 with
            `preset="paper"`.

    Example:

    >>> crd = ContrastiveRepresentation("pool", "pool", num_examples=100)
    >>> crd.num_negatives, tuple(crd.student_bank.shape), crd.default_weight
    (99, (100, 128), 0.08)
    """

    level = "batch"
    requires = ("example_ids",)
    moving_target = True
    default_weight = 0.08
    paper_weight = 0.8

    def __init__(
        self,
        teacher_layer_name=None,
        student_layer_name=None,
        *,
        num_examples,
        feature_dim=128,
        num_negatives=None,
        temperature=0.07,
        momentum=0.5,
        negatives="uniform",
        example_labels=None,
        num_classes=None,
        seed=None,
        name="contrastive_representation",
        **kwargs,
    ):
        owner = type(self).__name__
        super().__init__(
            teacher_layer_name, student_layer_name, name=name, **kwargs
        )
        if self.num_pairs != 1:
            raise ValueError(
                f"{owner} embeds one layer per network; received "
                f"{self.num_pairs} layer pairs. Use one "
                f"{owner} per pair (each with its own `name=`)."
            )
        for what, value, low in (
            ("num_examples", num_examples, 2),
            ("feature_dim", feature_dim, 1),
        ):
            if not is_integer(value) or value < low:
                raise ValueError(
                    f"{owner}: `{what}` must be an integer >= {low}; "
                    f"received {value!r}."
                )
        if negatives not in NEGATIVE_SAMPLERS:
            raise ValueError(
                f"{owner}: `negatives` must be one of {NEGATIVE_SAMPLERS}; "
                f"received {negatives!r}."
            )
        self.num_examples = int(num_examples)
        self.feature_dim = int(feature_dim)
        self.temperature = check_real(
            temperature, "temperature", minimum=0.0, strict=True, owner=owner
        )
        self.momentum = check_real(
            momentum, "momentum", minimum=0.0, maximum=1.0, owner=owner
        )
        self.negatives = negatives
        self.seed = seed
        labels = self._check_example_labels(example_labels, num_classes)
        self.num_classes = (
            num_classes if labels is None else int(labels.max()) + 1
        )
        # What the data set can give: every other example, or every
        # example of the other classes.
        available = self.num_examples - 1
        if labels is not None:
            available = self.num_examples - int(np.bincount(labels).max())
        if num_negatives is None:
            num_negatives = min(OFFICIAL_NEGATIVES, available)
        if not is_integer(num_negatives) or num_negatives < 1:
            raise ValueError(
                f"{owner}: `num_negatives` must be an integer >= 1; "
                f"received {num_negatives!r}."
            )
        self.num_negatives = int(num_negatives)
        self._build_state(labels)

    def _check_example_labels(self, example_labels, num_classes):
        owner = type(self).__name__
        if self.negatives == "uniform":
            if example_labels is not None:
                raise ValueError(
                    f"{owner}: `example_labels` is used only with "
                    "negatives='other_class'."
                )
            return None
        if example_labels is None:
            if num_classes is None:
                raise ValueError(
                    f"{owner} with negatives='other_class' samples negatives "
                    "from the other classes, so it needs the class of every "
                    "example: pass `example_labels` (integers, shape "
                    f"({self.num_examples},), e.g. y_train)."
                )
            return None  # rebuilt from a saved file: tables are loaded
        labels = np.asarray(example_labels).reshape(-1)
        if labels.shape != (self.num_examples,) or not np.issubdtype(
            labels.dtype, np.integer
        ):
            raise ValueError(
                f"{owner}: `example_labels` must hold one integer class per "
                f"example, shape ({self.num_examples},); received "
                f"{labels.dtype} values of shape {labels.shape}."
            )
        if labels.min() < 0 or len(np.unique(labels)) < 2:
            raise ValueError(
                f"{owner}: `example_labels` must be class ids >= 0 of at "
                f"least two classes; received values {np.unique(labels)[:10]}."
            )
        return labels.astype("int64")

    def _build_state(self, labels):
        stdv = 1.0 / math.sqrt(self.feature_dim / 3.0)
        bank = dict(
            shape=(self.num_examples, self.feature_dim),
            initializer=keras.initializers.RandomUniform(-stdv, stdv),
            trainable=False,
            dtype="float32",
            aggregation="only_first_replica",
        )
        self.student_bank = self.add_weight(name="student_bank", **bank)
        self.teacher_bank = self.add_weight(name="teacher_bank", **bank)
        self.normalizers = self.add_weight(
            name="normalizers",
            shape=(2,),
            initializer=keras.initializers.Constant(-1.0),
            trainable=False,
            dtype="float32",
            aggregation="only_first_replica",
        )
        self.seed_generator = keras.random.SeedGenerator(
            self.seed, name="negatives_seed"
        )
        if self.negatives != "other_class":
            return
        classes = int(self.num_classes)

        def table(name, size, values):
            init = (
                keras.initializers.Zeros()
                if values is None
                else keras.initializers.Constant(values)
            )
            return self.add_weight(
                name=name,
                shape=(size,),
                initializer=init,
                trainable=False,
                dtype="int32",
                aggregation="only_first_replica",
            )

        order = start = count = None
        if labels is not None:
            order = np.argsort(labels, kind="stable")
            count = np.bincount(labels, minlength=classes)
            start = np.concatenate([[0], np.cumsum(count)[:-1]])
        self.example_class = table("example_class", self.num_examples, labels)
        self.class_order = table("class_order", self.num_examples, order)
        self.class_start = table("class_start", classes, start)
        self.class_count = table("class_count", classes, count)

    # --- configuration -----------------------------------------------------

    def configure(self, teacher_shapes, student_shapes, student_dtype, names):
        super().configure(teacher_shapes, student_shapes, student_dtype, names)
        t_shape, s_shape = teacher_shapes[0], student_shapes[0]
        for role, shape in (("teacher", t_shape), ("student", s_shape)):
            if shape is None or None in tuple(shape[1:]):
                raise ValueError(
                    f"{type(self).__name__} embeds features of a known size; "
                    f"the {role} tensor of {self.describe_pair(0, names)} "
                    f"has shape {shape}. Tap a layer of fixed size, such as "
                    "the global pooling before the classifier."
                )
        self.student_head = EmbeddingHead(
            self.feature_dim, dtype=student_dtype, name=f"{self.name}_student"
        )
        self.teacher_head = EmbeddingHead(
            self.feature_dim, dtype=student_dtype, name=f"{self.name}_teacher"
        )
        self.student_head.build(tuple(s_shape))
        self.teacher_head.build(tuple(t_shape))
        self.connectors = [self.student_head, self.teacher_head]

    # --- the step ------------------------------------------------------------

    def _negative_ids(self, ids):
        shape = (ops.shape(ids)[0], self.num_negatives)
        if self.negatives == "uniform":
            return keras.random.randint(
                shape, 0, self.num_examples, "int32", seed=self.seed_generator
            )
        # Uniform over the examples of the other classes: draw a position
        # among the `n - count_c` of them in the class-sorted order, then
        # skip the anchor's own class block.
        anchor_class = ops.take(self.example_class, ids, axis=0)
        start = ops.take(self.class_start, anchor_class, axis=0)[:, None]
        count = ops.take(self.class_count, anchor_class, axis=0)[:, None]
        others = self.num_examples - count
        u = keras.random.uniform(shape, seed=self.seed_generator)
        position = ops.cast(ops.floor(u * ops.cast(others, "float32")), "int32")
        position = ops.minimum(position, others - 1)
        position = ops.where(position < start, position, position + count)
        return ops.take(self.class_order, position, axis=0)

    def compute(
        self, teacher_features, student_features, training=False, context=None
    ):
        ids = None if context is None else context.example_ids
        if ids is None:
            if training:
                raise ValueError(
                    f"{type(self).__name__} '{self.name}' reads example ids "
                    "(see its docstring); this step has none."
                )
            return [ops.zeros((), "float32")], {}
        weights = None if context is None else context.sample_weight
        ids = ops.reshape(ops.cast(ids, "int32"), (-1,))
        student = self.student_head(ops.cast(student_features[0], "float32"))
        teacher = self.teacher_head(
            ops.stop_gradient(ops.cast(teacher_features[0], "float32"))
        )
        rows = ops.concatenate([ids[:, None], self._negative_ids(ids)], axis=1)
        # Copies: the banks are updated in place below, while PyTorch's
        # autograd still holds them for the backward pass of `dots`.
        teacher_bank = ops.stop_gradient(ops.copy(self.teacher_bank))
        student_bank = ops.stop_gradient(ops.copy(self.student_bank))
        # The student's anchor against the teacher's bank, and vice versa.
        dots = [
            _bank_dots(student, teacher_bank, rows),
            _bank_dots(teacher, student_bank, rows),
        ]
        settings = (self.temperature, self.num_examples)
        fresh = ops.stack(
            [_normalizer_from_dots(d, *settings, weights) for d in dots]
        )
        stored = ops.convert_to_tensor(self.normalizers)
        normalizers = ops.where(stored < 0, fresh, stored)
        per_example = _nce_from_dots(
            dots[0], *settings, normalizers[0]
        ) + _nce_from_dots(dots[1], *settings, normalizers[1])
        w = pairwise.example_weights(weights, per_example)
        value = pairwise.weighted_mean(per_example, w)
        if training:
            self.normalizers.assign(ops.stop_gradient(normalizers))
            self._update_bank(self.student_bank, ids, student, w)
            self._update_bank(self.teacher_bank, ids, teacher, w)
        return [value], {}

    def _update_bank(self, bank, ids, embedding, weights):
        """Momentum update of the rows of `ids`, re-normalised; examples of
        weight 0 leave their rows unchanged."""
        old = ops.take(bank, ids, axis=0)
        new = self.momentum * old + (1.0 - self.momentum) * (
            ops.stop_gradient(embedding)
        )
        new = new / ops.maximum(
            pairwise.safe_norm(new, -1, keepdims=True), 1e-12
        )
        new = ops.where(weights[:, None] > 0, new, old)
        bank.assign(ops.scatter_update(bank, ids[:, None], new))

    def get_config(self):
        config = super().get_config()
        config.update(
            num_examples=self.num_examples,
            feature_dim=self.feature_dim,
            num_negatives=self.num_negatives,
            temperature=self.temperature,
            momentum=self.momentum,
            negatives=self.negatives,
            num_classes=(
                None if self.num_classes is None else int(self.num_classes)
            ),
            seed=self.seed,
        )
        return config
