"""The main job's last stage: its results, their table and the saved models.

`results` gathers the test accuracies (mean ± std over seeds, and the gain
of the distilled student over the student alone, paired by seed); `report`
prints them, saying whether the gain is beyond the noise of the seeds;
`save` writes the models of `--output`.
"""

import os
import time


def _mean_std(values):
    import numpy as np

    values = np.asarray(values, dtype="float64")
    return float(values.mean()), (
        float(values.std(ddof=1)) if len(values) > 1 else 0.0
    )


def results(
    seeds,
    teacher,
    student,
    teacher_accuracy,
    alone_scores,
    distilled_scores,
    started,
):
    """The main job's results dict (what `keras_kd.cli.distill` returns)."""
    gains = [d - a for d, a in zip(distilled_scores, alone_scores)]
    alone_mean, alone_std = _mean_std(alone_scores)
    distilled_mean, distilled_std = _mean_std(distilled_scores)
    gain_mean, gain_std = _mean_std(gains)
    return {
        "teacher": teacher_accuracy,
        "student_alone": alone_mean,
        "student_alone_std": alone_std,
        "student_distilled": distilled_mean,
        "student_distilled_std": distilled_std,
        "gain": gain_mean,
        "gain_std": gain_std,
        "seeds": seeds,
        "alone_by_seed": alone_scores,
        "distilled_by_seed": distilled_scores,
        "teacher_params": teacher.count_params(),
        "student_params": student.count_params(),
        "seconds": time.time() - started,
    }


def _noise_line(results):
    """The gain and whether it is beyond the seeds' noise (one seed: none)."""
    n = len(results["seeds"])
    if n <= 1:
        return (
            "  one seed: no estimate of the noise; run with --seeds 3 or "
            "more to compare\n"
        )
    gains = [
        d - a
        for d, a in zip(results["distilled_by_seed"], results["alone_by_seed"])
    ]
    gain_mean, gain_std = results["gain"], results["gain_std"]
    noise = max(gain_std, results["student_alone_std"])
    verdict = (
        "a gain beyond the noise"
        if gain_mean > noise
        else "a loss beyond the noise"
        if gain_mean < -noise
        else "no difference beyond the noise"
    )
    return (
        f"  gain               {gain_mean:+.4f} ± {gain_std:.4f} (paired "
        "by "
        f"seed; {sum(g > 0 for g in gains)} of {n} seeds improved):\n"
        f"                     {verdict} (the larger of the gain's and "
        f"the student alone's std, {noise:.4f})\n"
    )


def report(results, methods, quick):
    """Prints the test-accuracy table of `results`."""
    n = len(results["seeds"])
    alone_std = results["student_alone_std"]
    distilled_std = results["student_distilled_std"]
    spread = f" ± {alone_std:.4f}" if n > 1 else ""
    smoke = (
        "  --quick is a smoke test of the pipeline (1 epoch, 1 seed, at most "
        "1,000 training\n  images): its accuracies say nothing about the "
        "methods.\n"
        if quick
        else ""
    )
    print(
        "\nTest accuracy "
        f"({'mean ± std over ' + str(n) + ' seeds' if n > 1 else 'one seed'})\n"
        f"  teacher            {results['teacher']:.4f}           "
        f"({results['teacher_params']:,} parameters)\n"
        f"  student alone      {results['student_alone']:.4f}{spread}  "
        f"({results['student_params']:,} parameters)\n"
        f"  student distilled  {results['student_distilled']:.4f}"
        f"{f' ± {distilled_std:.4f}' if n > 1 else ''}  ({'+'.join(methods)})\n"
        f"{_noise_line(results)}{smoke}"
        f"  wall time {results['seconds']:.0f} s",
        flush=True,
    )


def save(output, teacher, alone, student):
    """Saves the teacher and the last seed's students in `output`."""
    os.makedirs(output, exist_ok=True)
    for label, model in (
        ("teacher", teacher),
        ("student_alone", alone),
        ("student_distilled", student),
    ):
        model.save(os.path.join(output, f"{label}.keras"))
    print(f"  saved models to {output} (the last seed's students)")
