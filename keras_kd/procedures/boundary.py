"""Boundary-supporting samples (BSS): distil near the teacher's boundary.

Each training step moves a few training examples towards the teacher's
decision boundary with a targeted gradient attack on the teacher, and the
student learns the teacher's outputs on those samples too (Heo et al.,
"Knowledge Distillation with Adversarial Samples Supporting Decision
Boundary", AAAI 2019; official code: github.com/bhheo/BSS_distillation,
`attacks/attack_BSS.py` and `train_BSS_distillation.py`).

This module holds the three pure functions (`boundary_samples.py` the
procedure that uses them), the official algorithm written with static
shapes (a fixed number of base samples and masks instead of index lists) so
that the attack runs inside the compiled step on TensorFlow and JAX (XLA
included) and in PyTorch's eager step:

- `select_base_samples`: the examples both networks classify correctly; of
  more than `max_samples`, those with the largest
  `sum_{c != y} (p_T,c - p_S,c)^2`.
- `sample_target_classes`: a class drawn from the teacher's softmax over
  every class but its top one.
- `boundary_attack`: ten steps of
  `x <- x + eta (f_y - f_k + 1e-4) g / ||g||`, `g = grad_x (f_k - f_y)` on
  the teacher's logits, where a sample moves only while the teacher still
  predicts its base class `y`.
"""

import keras
import numpy as np

from keras_kd import backend as backend_lib

_EPS = 1e-4  # the official attack's offset of the logit gap


def select_base_samples(teacher_logits, student_logits, labels, max_samples):
    """The base samples of one step: `(indices, mask)`, static shapes.

    An example qualifies when the teacher's and the student's top class
    both equal its label. Of the qualifying examples, at most `max_samples`
    are kept: those where the networks' probabilities differ most on the
    other classes, `score = sum_{c != y} (softmax(t)_c - softmax(s)_c)^2`
    (the official code sorts by this only when more than `max_samples`
    qualify, keeping all of them otherwise; the kept set is the same).

    Args:
        teacher_logits: `(B, K)`.
        student_logits: `(B, K)`.
        labels: `(B,)` integer class ids.
        max_samples: the most base samples, an int >= 1.

    Returns:
        `indices`, `(k,)` int32 with `k = min(max_samples, B)` (`k =
        max_samples` when the batch size is not static), and `mask`, `(k,)`
        float32, 1 where `indices[i]` is a base sample. With fewer than `k`
        qualifying examples the rest of `indices` point at other examples,
        masked out (zero or one qualifying example work).
    """
    ops = keras.ops
    teacher_logits = ops.cast(teacher_logits, "float32")
    student_logits = ops.cast(student_logits, "float32")
    labels = ops.cast(labels, "int32")
    classes = ops.shape(teacher_logits)[-1]
    batch = teacher_logits.shape[0]
    # Static when the batch size is (k = min(max_samples, B)); otherwise
    # (TensorFlow traces a possibly short last batch as None) k is
    # `max_samples` and the ranking is padded with non-qualifying entries.
    k = int(max_samples) if batch is None else min(int(max_samples), batch)
    qualifies = ops.logical_and(
        ops.equal(
            ops.cast(ops.argmax(teacher_logits, axis=-1), "int32"), labels
        ),
        ops.equal(
            ops.cast(ops.argmax(student_logits, axis=-1), "int32"), labels
        ),
    )
    diff = ops.square(
        ops.softmax(teacher_logits, axis=-1)
        - ops.softmax(student_logits, axis=-1)
    )
    others = 1.0 - ops.one_hot(labels, classes, dtype="float32")
    score = ops.sum(diff * others, axis=-1)
    # Qualifying examples first (score in [0, 2]), then the rest.
    ranked = ops.where(qualifies, score, score - 4.0)
    if batch is None:
        ranked = ops.concatenate([ranked, ops.full((k,), -8.0)], axis=0)
        qualifies = ops.concatenate(
            [qualifies, ops.zeros((k,), dtype="bool")], axis=0
        )
    _, indices = ops.top_k(ranked, k=k)
    indices = ops.cast(indices, "int32")
    mask = ops.cast(ops.take(qualifies, indices, axis=0), "float32")
    if batch is None:  # padding points at the last example, masked
        last = ops.cast(ops.shape(teacher_logits)[0], "int32") - 1
        indices = ops.minimum(indices, last)
    return indices, mask


def sample_target_classes(teacher_logits, uniform):
    """The class each adversarial sample is pushed towards.

    Drawn from the teacher's softmax (T = 1) over every class but its top
    one: with the other classes sorted by probability, the first whose
    cumulative probability reaches `uniform * sum(their probabilities)`
    (the official code's draw; its default, the second class, is kept for
    a draw that rounding leaves unmatched).

    Args:
        teacher_logits: `(B, K)`.
        uniform: `(B,)` numbers in `[0, 1)`.

    Returns:
        `(B,)` int32 class ids, never the teacher's top class.
    """
    ops = keras.ops
    probabilities = ops.softmax(ops.cast(teacher_logits, "float32"), axis=-1)
    classes = probabilities.shape[-1]
    sorted_p, order = ops.top_k(probabilities, k=classes)
    rest_p, rest_order = sorted_p[:, 1:], order[:, 1:]
    threshold = ops.cast(uniform, "float32") * ops.sum(rest_p, axis=-1)
    reached = ops.greater_equal(
        ops.cumsum(rest_p, axis=-1), ops.expand_dims(threshold, -1)
    )
    position = ops.argmax(ops.cast(reached, "int32"), axis=-1)
    found = ops.any(reached, axis=-1)
    position = ops.where(found, position, ops.zeros_like(position))
    chosen = ops.take_along_axis(
        rest_order, ops.expand_dims(ops.cast(position, "int32"), -1), axis=-1
    )
    return ops.cast(ops.squeeze(chosen, -1), "int32")


def boundary_attack(
    teacher,
    x,
    target_classes,
    *,
    steps=10,
    step_size=0.3,
    input_scale=1.0,
    clip=None,
    active=None,
):
    """Moves `x` towards the teacher's boundary with `target_classes`.

    The official attack (`attacks/attack_BSS.py`, `AttackBSS.run`): the base
    class `y` of each sample is the teacher's top class on `x`; then, for
    `steps` steps, with `f` the teacher's logits on the current samples and
    `g = grad_x (f_k - f_y)` (`k` the target class),

    `x <- clip(x + step_size * (f_y - f_k + 1e-4) * g / ||g||_2)`,

    where only the samples the teacher still classifies as `y` move (the
    official mask is taken anew at every step). The step is taken in the
    units the teacher normalises its inputs to: for a model that computes
    `(x - mean) / input_scale` first, as keras_kd's models do, the step in
    those units is the official one and the raw step is `input_scale` times
    it (the official `0.3` and clamp `+-2.5` are in normalised units, where
    a raw-pixel step would be about 60 times too small).

    Guard (not in the official code): a sample whose gradient is zero or not
    finite does not move; the official division by `||g|| = 0` gives NaN
    inputs, and then a NaN loss.

    Args:
        teacher: a `keras.Model` (or callable) returning logits.
        x: `(B, ...)` float inputs in the teacher's raw units.
        target_classes: `(B,)` int class ids.
        steps: attack steps. Defaults to `10` (official).
        step_size: `eta`, in normalised units. Defaults to `0.3` (official).
        input_scale: the teacher's input normalisation scale (a number, or
            one per channel of the last axis). Defaults to `1.0`.
        clip: `(low, high)` raw input range; `None` for no clipping.
        active: optional `(B,)` float mask; samples with 0 never move.

    Returns:
        The adversarial samples, like `x` (no gradient flows through them).
    """
    ops = keras.ops
    backend = backend_lib.get()
    x = ops.stop_gradient(ops.cast(ops.convert_to_tensor(x), "float32"))
    target_classes = ops.convert_to_tensor(target_classes)
    scale = ops.cast(ops.convert_to_tensor(input_scale), "float32")
    base = None
    reduce_axes = tuple(range(1, len(x.shape)))

    def objective(v, base_onehot):
        logits = ops.cast(teacher(v, training=False), "float32")
        target = ops.one_hot(target_classes, logits.shape[-1], dtype="float32")
        if base_onehot is None:
            base_onehot = ops.one_hot(
                ops.argmax(ops.stop_gradient(logits), axis=-1),
                logits.shape[-1],
                dtype="float32",
            )
        difference = ops.sum(logits * (target - base_onehot), axis=-1)
        return ops.sum(difference), (logits, base_onehot, target)

    x_adv = x
    for _ in range(int(steps)):
        gradient, (logits, base_onehot, target) = backend.input_gradient(
            lambda v, b=base: objective(v, b), x_adv
        )
        base = ops.stop_gradient(base_onehot)
        logits = ops.stop_gradient(logits)
        gradient = ops.stop_gradient(gradient)
        still_base = ops.cast(
            ops.equal(ops.argmax(logits, axis=-1), ops.argmax(base, axis=-1)),
            "float32",
        )
        moving = still_base if active is None else still_base * active
        gap = ops.sum(logits * (base - target), axis=-1)  # f_y - f_k
        # The gradient in normalised units, and its norm there.
        g = gradient * scale
        norm = ops.sqrt(ops.sum(ops.square(g), axis=reduce_axes))
        usable = ops.logical_and(ops.greater(norm, 0.0), ops.isfinite(norm))
        factor = ops.where(
            usable, step_size * (gap + _EPS) / ops.where(usable, norm, 1.0), 0.0
        )
        factor = factor * moving
        shape = (-1,) + (1,) * len(reduce_axes)
        delta = (
            ops.reshape(factor, shape)
            * ops.where(ops.isfinite(g), g, 0.0)
            * scale
        )
        x_adv = x_adv + delta
        if clip is not None:
            x_adv = ops.clip(x_adv, clip[0], clip[1])
    return ops.stop_gradient(x_adv)


def input_scale_of(model):
    """The scale of the normalisation a model applies to its raw inputs.

    Reads the layers right after the input (inside a leading nested model
    too, past random augmentation layers, which are the identity at
    inference): a `Rescaling(scale)` divides the scale by `scale`, a
    `Normalization` multiplies it by its standard deviation. `1.0` when the
    model starts with neither (its inputs are already normalised; pass
    `input_scale=` otherwise). Returns a float or a NumPy array over
    channels.
    """
    scale = 1.0
    for layer in _leading_layers(model):
        if type(layer).__name__.startswith("Random"):
            continue  # augmentation: the identity at inference
        if isinstance(layer, keras.layers.Rescaling):
            scale = scale / np.asarray(
                keras.ops.convert_to_numpy(layer.scale), "float64"
            )
        elif isinstance(layer, keras.layers.Normalization):
            if layer.invert:
                break
            variance = keras.ops.convert_to_numpy(layer.variance)
            scale = scale * np.sqrt(
                np.maximum(np.asarray(variance, "float64"), 1e-7)
            ).reshape(-1)
        else:
            break
    scale = np.asarray(scale, "float32")
    return float(scale) if scale.size == 1 else scale


def _leading_layers(model):
    """The layers of `model` in order, nested models opened in place."""
    for layer in getattr(model, "layers", []):
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, keras.Model):
            yield from _leading_layers(layer)
        else:
            yield layer
