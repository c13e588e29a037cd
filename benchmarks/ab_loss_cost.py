"""Where the activation-boundary step cost goes, and a cheaper equal formula.

`speed.py` finds the AB + KD configuration above the 1.05x floor target; this
script splits the extra cost of the AB term on the CIFAR shapes of
`speed.py` (batch 128; pre-activations of a ResNet with widths 16, 32, 64:
(128, 32, 32, 16), (128, 16, 16, 32), (128, 8, 8, 64)), forward + backward
in one `tf.function`:

- `activation_boundary_loss` as keras_kd writes it (two masked branches);
- the same loss as one branch, `relu(margin - sign(t) * s)^2` with
  `sign(t) = +1 if t > 0 else -1` (equal values: the maximum absolute
  difference is printed);
- plus `boundary_agreement` (the metric the Distiller logs every step);
- plus the three 1x1 conv + BN connectors (training mode).

    python benchmarks/ab_loss_cost.py

Writes `benchmarks/results/ab_loss_cost.md`.
"""

import datetime
import os
import sys

import common

common.quiet_tensorflow()

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from keras_kd.connectors import Connector  # noqa: E402
from keras_kd.losses import activation_boundary_loss, boundary_agreement  # noqa: E402

BATCH = 128
SHAPES = [(BATCH, 32, 32, 16), (BATCH, 16, 16, 32), (BATCH, 8, 8, 64)]
PAIR_WEIGHTS = (0.25, 0.5, 1.0)
REPEATS = 30


def current_form(t, s):
    return activation_boundary_loss(t, s, reduction="none")


def sign_form(t, s, margin=1.0):
    """The same per-example loss with one branch: relu(margin - sign(t) s)^2."""
    sign = ops.where(ops.greater(t, 0.0), 1.0, -1.0)
    per_element = ops.square(ops.relu(margin - sign * s))
    return ops.sum(ops.reshape(per_element, (ops.shape(s)[0], -1)), axis=1)


def main():
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    rng = np.random.default_rng(0)
    teacher = [tf.constant(rng.standard_normal(s, np.float32)) for s in SHAPES]
    student = [tf.Variable(rng.standard_normal(s, np.float32)) for s in SHAPES]
    connectors = [Connector(s, s, kind="projection") for s in SHAPES]
    connector_vars = [v for c in connectors for v in c.trainable_variables]

    def timed(loss_fn, use_connectors=False, metric=False):
        variables = student + (connector_vars if use_connectors else [])

        @tf.function
        def step():
            extra = 0.0
            with tf.GradientTape() as tape:
                total = 0.0
                for w, t, s, c in zip(PAIR_WEIGHTS, teacher, student, connectors):
                    if use_connectors:
                        s = c(s, training=True)
                    total = total + w * ops.mean(loss_fn(t, s))
                    if metric:
                        extra = extra + boundary_agreement(t, s)
            grads = tape.gradient(total, variables)
            return total + extra + sum(tf.reduce_sum(g) for g in grads)

        return 1e3 * common.median_seconds(lambda: step().numpy(), REPEATS,
                                           warmup=3)

    cases = [
        ("activation_boundary_loss (keras_kd)", current_form, False, False),
        ("one-branch form relu(margin - sign(t)·s)²", sign_form, False, False),
        ("keras_kd loss + boundary_agreement", current_form, False, True),
        ("keras_kd loss + 3 connectors (1×1 conv + BN)", current_form, True, False),
        ("keras_kd loss + connectors + boundary_agreement", current_form, True, True),
    ]
    results = {name: [] for name, *_ in cases}
    for _ in range(2):
        for name, fn, conn, metric in cases:
            results[name].append(timed(fn, conn, metric))
    diff = max(float(ops.max(ops.abs(current_form(t, s) - sign_form(t, s))))
               for t, s in zip(teacher, student))
    scale = max(float(ops.max(current_form(t, s))) for t, s in zip(teacher, student))
    header = ["forward + backward, 3 CIFAR pairs, batch 128", "ms (median, 2 rounds)"]
    rows = [[name, " / ".join(f"{v:.1f}" for v in values)] for name, values in results.items()]
    common.print_table(header, rows)
    print(f"\nmax |keras_kd - one-branch| per-example value: {diff:g} (values up to {scale:g})")
    lines = common.header_markdown("Activation-boundary loss: where the step cost goes",
                                   started)
    lines += [f"Shapes {SHAPES}, pair weights {PAIR_WEIGHTS}, random normal inputs, "
              f"{REPEATS} timed calls per case after 3 warm-up calls, the whole list run "
              "twice (both medians shown).", ""]
    lines += common.markdown_table(header, rows)
    lines += ["", f"Maximum absolute difference between the two forms' per-example "
              f"values: {diff:g} (values up to {scale:g})."]
    common.write_text(os.path.join(common.RESULTS_DIR, "ab_loss_cost.md"), lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
