"""Data-free distillation: the student learns from synthesised images only.

Two ways, both the ordinary `Distiller.fit`:

- **From a pool**: `synthesize(teacher, n)` once, then
  `distiller.fit(pool.dataset(batch_size), epochs=...)`.
- **In rounds** (`distill_data_free`, Adaptive DeepInversion): each round
  synthesises new images against the *current* student (the adaptive term
  seeks images on which the two disagree), adds them to the pool and trains
  on the whole pool; the epochs count on across rounds, so callbacks and
  learning-rate schedules see one run.

The teacher is never changed: the Distiller freezes it and the inversion
trains only its images. With no labels in a synthesised pool, the student
learns from the distillation losses alone (a task loss given to `compile` is
skipped for batches without labels).

Reference: Yin et al., "Dreaming to Distill: Data-free Knowledge Transfer
via DeepInversion", CVPR 2020 (its official code ships synthesis only; the
rounds follow the paper's description of Adaptive DeepInversion).
"""

from keras_kd.procedures.base import check_int
from keras_kd.procedures.synthesis import synthesize


def distill_data_free(
    distiller,
    *,
    rounds=4,
    images_per_round=256,
    epochs_per_round=5,
    batch_size=64,
    adaptive=True,
    pool=None,
    seed=None,
    synthesis=None,
    verbose=1,
    **fit_kwargs,
):
    """Alternates synthesis and distillation; returns `(pool, history)`.

    Args:
        distiller: a compiled `keras_kd.Distiller` (e.g. with
            `LogitsDistillation`); its teacher is inverted.
        rounds: synthesis-then-fit rounds. Defaults to `4`.
        images_per_round: images synthesised per round. Defaults to `256`.
        epochs_per_round: epochs on the pool after each round. Defaults to
            `5`.
        batch_size: the distillation batch size. Defaults to `64`.
        adaptive: synthesise against the current student (Adaptive
            DeepInversion); `False` gives plain DeepInversion rounds.
            Defaults to `True`.
        pool: a `SynthesizedImages` to start from. Defaults to `None`.
        seed: seeds round `r`'s synthesis with `seed + r` (the pool is
            shuffled by Keras, as `keras.utils.set_random_seed` seeds it).
            Defaults to `None`.
        synthesis: a dict of `synthesize` arguments (`iterations`,
            `batch_size`, weights ...). Defaults to `None`.
        verbose: 0 silent, 1 a line per round and Keras's progress bars.
            Defaults to `1`.
        **fit_kwargs: passed to every `fit` (callbacks, validation data).

    Returns:
        The final pool and `{metric: [one value per epoch]}` over all
        rounds.
    """
    rounds = check_int("distill_data_free", "rounds", rounds)
    images_per_round = check_int(
        "distill_data_free", "images_per_round", images_per_round
    )
    epochs_per_round = check_int(
        "distill_data_free", "epochs_per_round", epochs_per_round
    )
    if getattr(distiller, "optimizer", None) is None:
        raise ValueError(
            "distill_data_free: compile the distiller first, e.g. "
            "distiller.compile(optimizer='adam')."
        )
    for forbidden in ("epochs", "initial_epoch", "x", "y", "batch_size"):
        if forbidden in fit_kwargs:
            raise ValueError(
                f"distill_data_free sets `{forbidden}` itself (rounds x "
                f"epochs_per_round on the synthesised pool); received "
                f"{forbidden}={fit_kwargs[forbidden]!r}."
            )
    history = {}
    for r in range(rounds):
        if verbose:
            print(
                f"Data-free round {r + 1}/{rounds}: synthesising "
                f"{images_per_round} images"
                + (" against the current student" if adaptive else "")
            )
        new = synthesize(
            distiller.teacher,
            images_per_round,
            student=distiller.student if adaptive else None,
            seed=None if seed is None else seed + r,
            verbose=verbose,
            **(synthesis or {}),
        )
        pool = new if pool is None else pool + new
        if verbose:
            print(
                f"Data-free round {r + 1}/{rounds}: distilling on "
                f"{len(pool)} images (teacher agreement "
                f"{pool.teacher_agreement:.3f})"
            )
        result = distiller.fit(
            pool.images,
            batch_size=batch_size,
            shuffle=True,
            epochs=(r + 1) * epochs_per_round,
            initial_epoch=r * epochs_per_round,
            verbose=verbose,
            **fit_kwargs,
        )
        for key, values in result.history.items():
            history.setdefault(key, []).extend(values)
    return pool, history
