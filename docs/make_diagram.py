"""Draws docs/distiller.png, the README's picture of one Distiller step.

python docs/make_diagram.py
"""

import os

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyBboxPatch  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

BOXES = {
    # name: (x, y, width, height, face, edge, title, lines)
    "batch": (
        0.2,
        2.6,
        1.6,
        1.2,
        "#eeeeee",
        "#666666",
        "batch",
        ["images, labels"],
    ),
    "teacher": (
        2.5,
        3.6,
        3.2,
        1.7,
        "#dbe8f7",
        "#3b6ea5",
        "teacher",
        ["frozen, training=False", "one pass: logits and taps", "no gradient"],
    ),
    "student": (
        2.5,
        1.1,
        3.2,
        1.7,
        "#e3f3df",
        "#3d8a34",
        "student",
        [
            "one pass: logits and taps",
            "+ connectors (1x1 conv + BN)",
            "trained",
        ],
    ),
    "losses": (
        6.5,
        2.8,
        3.3,
        2.5,
        "#fbefd9",
        "#b7791f",
        "distillation losses",
        [
            "logits: KD, DKD",
            "features: AB, NST, AT,",
            "FitNets, FSP",
            "the batch: RKD, SP, PKT, CRD",
        ],
    ),
    "task": (
        6.5,
        1.1,
        3.3,
        1.2,
        "#fbefd9",
        "#b7791f",
        "task loss",
        ["labels vs. student logits"],
    ),
    "total": (
        10.6,
        2.4,
        1.8,
        1.2,
        "#f3e1f0",
        "#8a3d7c",
        "total",
        ["Σ weight · loss"],
    ),
}
ARROWS = [
    ((1.8, 3.4), (2.5, 4.4)),
    ((1.8, 3.0), (2.5, 2.0)),
    ((5.7, 4.4), (6.5, 4.4)),
    ((5.7, 2.3), (6.5, 3.3)),
    ((5.7, 1.7), (6.5, 1.7)),
    ((9.8, 3.9), (10.6, 3.3)),
    ((9.8, 1.7), (10.6, 2.7)),
]


def main():
    fig, ax = plt.subplots(figsize=(10, 4.4))
    for x, y, w, h, face, edge, title, lines in BOXES.values():
        ax.add_patch(
            FancyBboxPatch(
                (x, y),
                w,
                h,
                boxstyle="round,pad=0.02,rounding_size=0.15",
                facecolor=face,
                edgecolor=edge,
                linewidth=1.5,
            )
        )
        top = y + h - 0.35
        ax.text(
            x + w / 2,
            top,
            title,
            ha="center",
            va="center",
            fontsize=11,
            fontweight="bold",
        )
        for i, line in enumerate(lines):
            ax.text(
                x + w / 2,
                top - 0.4 * (i + 1),
                line,
                ha="center",
                va="center",
                fontsize=9.5,
            )
    for start, end in ARROWS:
        ax.annotate(
            "",
            xy=end,
            xytext=start,
            arrowprops={"arrowstyle": "->", "color": "#444444"},
        )
    green = "#3d8a34"
    ax.plot([11.5, 11.5, 4.1], [2.4, 0.65, 0.65], color=green, ls="--")
    ax.annotate(
        "",
        xy=(4.1, 1.1),
        xytext=(4.1, 0.63),
        arrowprops={"arrowstyle": "->", "color": green},
    )
    ax.text(
        7.8,
        0.25,
        "gradients reach the student and connectors only",
        ha="center",
        fontsize=9.5,
        color=green,
    )
    ax.set_xlim(0, 12.6)
    ax.set_ylim(0, 5.5)
    ax.axis("off")
    fig.tight_layout()
    path = os.path.join(HERE, "distiller.png")
    fig.savefig(path, dpi=110)
    print("wrote", path)


if __name__ == "__main__":
    main()
