"""Float64 NumPy references for the pure losses of seven distillation methods.

Written from the official code's logic (RepDistiller `distiller_zoo/FSP.py`,
`RKD.py`, `SP.py`, `PKT.py`, `crd/criterion.py`, `crd/memory.py`; mdistiller
`distillers/DKD.py`; logit-standardization-KD `distillers/KD.py`) and the
keras_kd spec, and deliberately independent of `keras_kd.losses`: every
value is built with explicit Python loops over examples, pairs, triplets,
channels or classes, in float64, with no matrix shortcut (no Gram matrix by
`@`, no pairwise distance by the `|a|^2 + |b|^2 - 2ab` expansion).

Sample weights follow the spec's frequency-weight rule: a sum over pairs
weights `(i, j)` by `w_i * w_j`, over triplets by `w_i * w_j * w_k`, a sum
over one index by `w_j`, and a mean becomes a weighted mean. `None` means
all ones; all zeros give 0.

Every `ref_*` function takes NumPy arrays and returns a float or a float64
array.
"""

import math

import numpy as np


def _f64(x):
    return np.asarray(x, np.float64)


def _weights(w, batch):
    if w is None:
        return [1.0] * batch
    w = _f64(w).reshape(-1)
    assert w.shape == (batch,), (w.shape, batch)
    return [float(v) for v in w]


def _rows(x):
    """(B, ...) -> list of B float64 vectors, flattened in NHWC order."""
    x = _f64(x)
    return [x[b].reshape(-1) for b in range(x.shape[0])]


def _dot(u, v):
    total = 0.0
    for a, b in zip(u, v):
        total += float(a) * float(b)
    return total


def _norm(u):
    return math.sqrt(_dot(u, u))


def huber(x):
    """Smooth L1 with beta 1 (torch `F.smooth_l1_loss`)."""
    x = float(x)
    return 0.5 * x * x if abs(x) < 1.0 else abs(x) - 0.5


# --------------------------------------------------------------------------
# FSP (flow of solution procedure)
# --------------------------------------------------------------------------


def ref_adaptive_avg_pool(x, out_h, out_w):
    """PyTorch `adaptive_avg_pool2d` on one (H, W, C) map.

    Output cell (i, j) averages input rows floor(i*H/out_h) ..
    ceil((i+1)*H/out_h) - 1 and the same for columns.
    """
    x = _f64(x)
    h_in, w_in, channels = x.shape
    out = np.zeros((out_h, out_w, channels))
    for i in range(out_h):
        r0 = (i * h_in) // out_h
        r1 = -((-(i + 1) * h_in) // out_h)  # ceil
        for j in range(out_w):
            c0 = (j * w_in) // out_w
            c1 = -((-(j + 1) * w_in) // out_w)
            for c in range(channels):
                total, count = 0.0, 0
                for r in range(r0, r1):
                    for q in range(c0, c1):
                        total += x[r, q, c]
                        count += 1
                out[i, j, c] = total / count
    return out


def ref_fsp_matrix(bottom, top):
    """(B, H1, W1, C1), (B, H2, W2, C2) -> (B, C1, C2) FSP matrices."""
    bottom, top = _f64(bottom), _f64(top)
    batch, h1, w1, c1 = bottom.shape
    _, h2, w2, c2 = top.shape
    out = np.zeros((batch, c1, c2))
    for b in range(batch):
        bot_map, top_map = bottom[b], top[b]
        if h1 > h2:
            bot_map = ref_adaptive_avg_pool(bot_map, h2, w2)
        elif h1 < h2:
            top_map = ref_adaptive_avg_pool(top_map, h1, w1)
        h, w = bot_map.shape[:2]
        assert top_map.shape[:2] == (h, w)
        for i in range(c1):
            for j in range(c2):
                total = 0.0
                for r in range(h):
                    for q in range(w):
                        total += bot_map[r, q, i] * top_map[r, q, j]
                out[b, i, j] = total / (h * w)
    return out


def ref_fsp_loss(
    teacher_bottom, teacher_top, student_bottom, student_top, mode="code"
):
    """Per-example FSP loss, (B,): mean ("code") or sum ("paper")."""
    g_t = ref_fsp_matrix(teacher_bottom, teacher_top)
    g_s = ref_fsp_matrix(student_bottom, student_top)
    out = []
    for b in range(g_t.shape[0]):
        total, count = 0.0, 0
        for i in range(g_t.shape[1]):
            for j in range(g_t.shape[2]):
                total += (g_t[b, i, j] - g_s[b, i, j]) ** 2
                count += 1
        out.append(total / count if mode == "code" else total)
    return np.array(out)


# --------------------------------------------------------------------------
# RKD (relational knowledge distillation)
# --------------------------------------------------------------------------


def _distances(rows):
    n = len(rows)
    d = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            if i != j:
                d[i][j] = _norm(rows[i] - rows[j])
    return d


def _normalised_distances(rows, w, mode):
    n = len(rows)
    d = _distances(rows)
    if mode == "code":
        # RepDistiller's pdist clamps squared distances at 1e-12 and zeroes
        # only the diagonal: identical distinct rows are 1e-6 apart and
        # count in `t_d[t_d > 0].mean()`.
        d = [
            [d[i][j] if i == j else max(d[i][j], 1e-6) for j in range(n)]
            for i in range(n)
        ]
    num, den = 0.0, 0.0
    for i in range(n):
        for j in range(n):
            if mode == "code":
                use = d[i][j] > 0  # RepDistiller: t_d[t_d > 0].mean()
            else:
                use = i != j  # the paper: all distinct pairs
            if use:
                num += w[i] * w[j] * d[i][j]
                den += w[i] * w[j]
    mu = num / den
    return [[d[i][j] / mu for j in range(n)] for i in range(n)]


def ref_rkd_distance(teacher, student, mode="code", sample_weight=None):
    t_rows, s_rows = _rows(teacher), _rows(student)
    n = len(t_rows)
    w = _weights(sample_weight, n)
    if sum(w) == 0:
        return 0.0
    d_t = _normalised_distances(t_rows, w, mode)
    d_s = _normalised_distances(s_rows, w, mode)
    num, den = 0.0, 0.0
    for i in range(n):
        for j in range(n):
            if mode == "paper" and i == j:
                continue
            num += w[i] * w[j] * huber(d_s[i][j] - d_t[i][j])
            den += w[i] * w[j]
    return num / den


def _unit_differences(rows):
    """e[i][j] = (x_j - x_i) / max(|x_j - x_i|, 1e-12) (0 when j == i)."""
    n = len(rows)
    e = [[None] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            diff = rows[j] - rows[i]
            e[i][j] = diff / max(_norm(diff), 1e-12)
    return e


def ref_rkd_angle(teacher, student, mode="code", sample_weight=None):
    t_rows, s_rows = _rows(teacher), _rows(student)
    n = len(t_rows)
    w = _weights(sample_weight, n)
    if sum(w) == 0:
        return 0.0
    e_t, e_s = _unit_differences(t_rows), _unit_differences(s_rows)
    num, den = 0.0, 0.0
    for i in range(n):
        for j in range(n):
            for k in range(n):
                if mode == "paper" and (i == j or j == k or i == k):
                    continue
                a_t = _dot(e_t[i][j], e_t[i][k])
                a_s = _dot(e_s[i][j], e_s[i][k])
                weight = w[i] * w[j] * w[k]
                num += weight * huber(a_s - a_t)
                den += weight
    return num / den


def ref_rkd(
    teacher,
    student,
    distance_weight=25.0,
    angle_weight=50.0,
    mode="code",
    sample_weight=None,
):
    return distance_weight * ref_rkd_distance(
        teacher, student, mode, sample_weight
    ) + angle_weight * ref_rkd_angle(teacher, student, mode, sample_weight)


# --------------------------------------------------------------------------
# SP (similarity preserving)
# --------------------------------------------------------------------------


def _row_normalised_gram(rows, w):
    n = len(rows)
    g = [[_dot(rows[i], rows[j]) for j in range(n)] for i in range(n)]
    out = []
    for i in range(n):
        norm = math.sqrt(sum(w[j] * g[i][j] ** 2 for j in range(n)))
        norm = max(norm, 1e-12)
        out.append([g[i][j] / norm for j in range(n)])
    return out


def ref_sp(teacher, student, sample_weight=None):
    t_rows, s_rows = _rows(teacher), _rows(student)
    n = len(t_rows)
    w = _weights(sample_weight, n)
    if sum(w) == 0:
        return 0.0
    g_t = _row_normalised_gram(t_rows, w)
    g_s = _row_normalised_gram(s_rows, w)
    total = 0.0
    for i in range(n):
        for j in range(n):
            total += w[i] * w[j] * (g_t[i][j] - g_s[i][j]) ** 2
    return total / sum(w) ** 2


# --------------------------------------------------------------------------
# PKT (probabilistic knowledge transfer)
# --------------------------------------------------------------------------


def _pkt_probabilities(rows, w, mode, eps):
    n = len(rows)
    unit = [r / (_norm(r) + eps) for r in rows]
    k = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            k[i][j] = (_dot(unit[i], unit[j]) + 1.0) / 2.0
    p = [[0.0] * n for _ in range(n)]
    for i in range(n):
        z = 0.0
        for j in range(n):
            if mode == "paper" and j == i:
                continue
            z += w[j] * k[i][j]
        for j in range(n):
            p[i][j] = k[i][j] / z
    return p


def ref_pkt(teacher, student, mode="code", epsilon=1e-7, sample_weight=None):
    t_rows, s_rows = _rows(teacher), _rows(student)
    n = len(t_rows)
    w = _weights(sample_weight, n)
    if sum(w) == 0:
        return 0.0
    p = _pkt_probabilities(t_rows, w, mode, epsilon)
    q = _pkt_probabilities(s_rows, w, mode, epsilon)

    def term(i, j):
        return p[i][j] * math.log((p[i][j] + epsilon) / (q[i][j] + epsilon))

    if mode == "code":
        num, den = 0.0, 0.0
        for i in range(n):
            for j in range(n):
                num += w[i] * w[j] * term(i, j)
                den += w[i] * w[j]
        return num / den
    num = 0.0
    for i in range(n):
        kl_i = 0.0
        for j in range(n):
            if j != i:
                kl_i += w[j] * term(i, j)
        num += w[i] * kl_i
    return num / sum(w)


# --------------------------------------------------------------------------
# CRD (contrastive representation distillation)
# --------------------------------------------------------------------------


def ref_nce_loss(anchor, bank_rows, temperature, num_examples, normalizer):
    """Per-example ContrastLoss of RepDistiller, (B,)."""
    anchor, bank_rows = _f64(anchor), _f64(bank_rows)
    eps = 1e-7
    m = bank_rows.shape[1] - 1
    noise = m * (1.0 / num_examples)
    out = []
    for b in range(anchor.shape[0]):
        loss = 0.0
        for k in range(m + 1):
            score = _dot(bank_rows[b, k], anchor[b]) / temperature
            p = math.exp(score) / normalizer
            if k == 0:
                loss -= math.log(p / (p + noise + eps))
            else:
                loss -= math.log(noise / (p + noise + eps))
        out.append(loss)
    return np.array(out)


def ref_nce_normalizer(
    anchor, bank_rows, temperature, num_examples, sample_weight=None
):
    """The Z of RepDistiller's ContrastMemory on its first step."""
    anchor, bank_rows = _f64(anchor), _f64(bank_rows)
    w = _weights(sample_weight, anchor.shape[0])
    num, den = 0.0, 0.0
    for b in range(anchor.shape[0]):
        for k in range(bank_rows.shape[1]):
            score = _dot(bank_rows[b, k], anchor[b]) / temperature
            num += w[b] * math.exp(score)
            den += w[b]
    return num / den * num_examples


# --------------------------------------------------------------------------
# Logits: standardisation, KD, DKD
# --------------------------------------------------------------------------


def ref_standardize(logits, ddof=1, epsilon=1e-7):
    """Row z-scores: (z - mean) / (std(z, ddof) + epsilon)."""
    logits = _f64(logits)
    out = np.zeros_like(logits)
    for b in range(logits.shape[0]):
        row = [float(v) for v in logits[b]]
        mean = sum(row) / len(row)
        var = sum((v - mean) ** 2 for v in row) / (len(row) - ddof)
        std = math.sqrt(var)
        for c, v in enumerate(row):
            out[b, c] = (v - mean) / (std + epsilon)
    return out


def _logsumexp(values):
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _log_softmax(values):
    lse = _logsumexp(values)
    return [v - lse for v in values]


def _kl_from_logs(log_p, log_q):
    """KL(p || q) from log-probabilities; terms with p == 0 are 0."""
    total = 0.0
    for lp, lq in zip(log_p, log_q):
        p = math.exp(lp)
        if p > 0:
            total += p * (lp - lq)
    return total


def ref_kd(teacher, student, temperature=1.0, standardize=False, ddof=1):
    """Per-example T^2 KL(softmax(z_t/T) || softmax(z_s/T)), (B,)."""
    teacher, student = _f64(teacher), _f64(student)
    if standardize:
        teacher = ref_standardize(teacher, ddof)
        student = ref_standardize(student, ddof)
    out = []
    for b in range(teacher.shape[0]):
        log_p = _log_softmax([v / temperature for v in teacher[b]])
        log_q = _log_softmax([v / temperature for v in student[b]])
        out.append(temperature**2 * _kl_from_logs(log_p, log_q))
    return np.array(out)


# --------------------------------------------------------------------------
# Finite differences (float64) for gradient checks
# --------------------------------------------------------------------------


def ref_numeric_grad(fn, x, h=1e-5):
    """Central-difference gradient of the scalar `fn(x)` w.r.t. array `x`."""
    x = _f64(x).copy()
    out = np.zeros_like(x)
    flat, grad = x.reshape(-1), out.reshape(-1)
    for n in range(flat.size):
        keep = flat[n]
        flat[n] = keep + h
        up = fn(x)
        flat[n] = keep - h
        down = fn(x)
        flat[n] = keep
        grad[n] = (up - down) / (2 * h)
    return out
