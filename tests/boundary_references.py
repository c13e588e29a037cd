"""Float64 NumPy references for BSS (boundary supporting samples).

Written from the official code's logic (bhheo/BSS_distillation
`train_BSS_distillation.py` for base-sample selection and target-class
sampling, `attacks/attack_BSS.py` and `attacks/helpers.py` for the attack)
and deliberately independent of `keras_kd.procedures.boundary`: every value
is built per example with explicit loops, in float64.

The attack reference works on a linear teacher, `Normalization` then
`Flatten` then `Dense`: logits = kernel^T flatten((x - mean) / scale) +
bias, so the gradient of a logit difference is analytic. The official
attack steps in normalised units and clamps there; here the step is taken in
the teacher's normalised units, mapped back to raw units (times `scale`),
and the raw result is clipped.

Every `ref_*` function takes NumPy arrays and returns NumPy arrays (float64
or int64), Python sets or floats.
"""

import math

import numpy as np

# The official attack adds this to the logit gap before scaling the step.
GAP_OFFSET = 1e-4


def _f64(x):
    return np.asarray(x, np.float64)


def ref_softmax(row):
    """Softmax of one float64 logit vector (temperature 1)."""
    row = _f64(row)
    top = max(float(v) for v in row)
    exps = [math.exp(float(v) - top) for v in row]
    total = sum(exps)
    return np.array([e / total for e in exps])


def _argmax(row):
    best = 0
    for c in range(1, len(row)):
        if row[c] > row[best]:
            best = c
    return best


def _descending(row):
    """Class ids sorted by decreasing value (stable on ties)."""
    return sorted(range(len(row)), key=lambda c: -float(row[c]))


# --------------------------------------------------------------------------
# Base-sample selection
# --------------------------------------------------------------------------


def ref_qualifying(teacher_logits, student_logits, labels):
    """Indices where both the teacher's and the student's argmax is the
    label, in batch order."""
    teacher_logits = _f64(teacher_logits)
    student_logits = _f64(student_logits)
    out = []
    for i in range(teacher_logits.shape[0]):
        y = int(labels[i])
        if _argmax(teacher_logits[i]) == y and _argmax(student_logits[i]) == y:
            out.append(i)
    return out


def ref_distill_scores(teacher_logits, student_logits, labels):
    """(B,) sum over c != y of (softmax(t)_c - softmax(s)_c)^2."""
    teacher_logits = _f64(teacher_logits)
    student_logits = _f64(student_logits)
    scores = np.zeros(teacher_logits.shape[0])
    for i in range(teacher_logits.shape[0]):
        p_t = ref_softmax(teacher_logits[i])
        p_s = ref_softmax(student_logits[i])
        total = 0.0
        for c in range(len(p_t)):
            if c != int(labels[i]):
                total += (p_t[c] - p_s[c]) ** 2
        scores[i] = total
    return scores


def ref_select_base_samples(
    teacher_logits, student_logits, labels, max_samples
):
    """The set of chosen base samples.

    All qualifying examples when at most `max_samples` qualify, else the
    `max_samples` qualifying ones with the largest distillation score. No
    qualifying example gives the empty set; exactly one gives that one.
    """
    qualifying = ref_qualifying(teacher_logits, student_logits, labels)
    if len(qualifying) <= max_samples:
        return set(qualifying)
    scores = ref_distill_scores(teacher_logits, student_logits, labels)
    ranked = sorted(qualifying, key=lambda i: -scores[i])
    return set(ranked[:max_samples])


def ref_selection_margin(teacher_logits, student_logits, labels, max_samples):
    """Score gap between the last kept and the first dropped qualifying
    example (inf when nothing is dropped): how far the choice is from a
    tie."""
    qualifying = ref_qualifying(teacher_logits, student_logits, labels)
    if len(qualifying) <= max_samples:
        return math.inf
    scores = ref_distill_scores(teacher_logits, student_logits, labels)
    ranked = sorted((scores[i] for i in qualifying), reverse=True)
    return ranked[max_samples - 1] - ranked[max_samples]


# --------------------------------------------------------------------------
# Target-class sampling
# --------------------------------------------------------------------------


def _target_one(logits_row, u):
    """(target class, distance from `u` to the nearest class boundary in
    `u` units) for one example."""
    p = ref_softmax(logits_row)
    order = _descending(p)
    rest = order[1:]
    total = sum(p[c] for c in rest)
    threshold = float(u) * total
    target = order[1]  # the official default
    cumulative = 0.0
    chosen = False
    margin = math.inf
    for c in rest:
        cumulative += p[c]
        margin = min(margin, abs(cumulative - threshold) / total)
        if not chosen and cumulative >= threshold:
            target = c
            chosen = True
    return target, margin


def ref_sample_target_classes(teacher_logits, uniform):
    """(B,) int64: the first class, in the teacher's descending softmax
    order without its top class, whose cumulative probability reaches
    `uniform * (1 - p_top)`."""
    teacher_logits = _f64(teacher_logits)
    uniform = _f64(uniform)
    return np.array(
        [
            _target_one(teacher_logits[i], uniform[i])[0]
            for i in range(teacher_logits.shape[0])
        ],
        np.int64,
    )


def ref_target_margin(teacher_logits, uniform):
    """(B,) distance of each `uniform` to its nearest class boundary."""
    teacher_logits = _f64(teacher_logits)
    uniform = _f64(uniform)
    return np.array(
        [
            _target_one(teacher_logits[i], uniform[i])[1]
            for i in range(teacher_logits.shape[0])
        ]
    )


# --------------------------------------------------------------------------
# Boundary attack on a linear teacher
# --------------------------------------------------------------------------


def _per_element(value, shape):
    """A scalar or per-channel (last axis) value as a float64 array of
    `shape` (one example)."""
    return np.broadcast_to(_f64(value), shape).astype(np.float64)


def ref_linear_logits(x, kernel, bias, mean, scale):
    """(B, K) logits of kernel^T flatten((x - mean) / scale) + bias."""
    x = _f64(x)
    kernel = _f64(kernel)
    bias = _f64(bias)
    mean_e = _per_element(mean, x.shape[1:]).reshape(-1)
    scale_e = _per_element(scale, x.shape[1:]).reshape(-1)
    out = np.zeros((x.shape[0], kernel.shape[1]))
    for i in range(x.shape[0]):
        flat = x[i].reshape(-1)
        for k in range(kernel.shape[1]):
            total = float(bias[k])
            for d in range(flat.shape[0]):
                total += kernel[d, k] * (flat[d] - mean_e[d]) / scale_e[d]
            out[i, k] = total
    return out


def ref_boundary_attack(
    x,
    target_classes,
    kernel,
    bias,
    mean,
    scale,
    steps=10,
    step_size=0.3,
    clip=(-math.inf, math.inf),
):
    """The official BSS attack on the linear teacher.

    Returns `(x_adv, active, margin)`: `x_adv` the attacked raw inputs;
    `active` a (steps, B) bool array, row j saying which examples moved at
    step j (rows after an early stop are all False); `margin` the smallest
    gap between the base logit and the best other logit over every move
    decision taken (how far the run is from a decision tie).
    """
    x = _f64(x).copy()
    kernel = _f64(kernel)
    batch = x.shape[0]
    shape = x.shape[1:]
    scale_e = _per_element(scale, shape).reshape(-1)
    lo, hi = float(clip[0]), float(clip[1])
    logits = ref_linear_logits(x, kernel, bias, mean, scale)
    base = [_argmax(row) for row in logits]
    active = np.zeros((steps, batch), bool)
    margin = math.inf
    for step in range(steps):
        logits = ref_linear_logits(x, kernel, bias, mean, scale)
        for i in range(batch):
            b = base[i]
            other = max(logits[i, c] for c in range(len(logits[i])) if c != b)
            margin = min(margin, abs(logits[i, b] - other))
            active[step, i] = _argmax(logits[i]) == b
        if not active[step].any():
            break
        for i in range(batch):
            if not active[step, i]:
                continue
            b, t = base[i], int(target_classes[i])
            gap = logits[i, b] - logits[i, t]
            # d(f_t - f_b) / d x_n (normalised input), flattened.
            grad_n = [kernel[d, t] - kernel[d, b] for d in range(len(scale_e))]
            norm = math.sqrt(sum(g * g for g in grad_n))
            flat = x[i].reshape(-1)
            for d in range(len(grad_n)):
                delta_n = step_size * (gap + GAP_OFFSET) * grad_n[d] / norm
                flat[d] += scale_e[d] * delta_n
            x[i] = flat.reshape(shape)
        x = np.minimum(np.maximum(x, lo), hi)
    return x, active, margin
