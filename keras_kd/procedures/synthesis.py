"""A pool of images synthesised from a teacher, and the loop that makes it.

`synthesize(teacher, num_images)` runs `TeacherInversion` batch after batch
(fresh images and optimizer state for each, as the official code does) and
returns `SynthesizedImages`: the images in raw pixels, the target classes
they were optimised for, what the teacher predicts on them, the settings and
the time spent. The pool saves to a `.npz` archive (never over an existing
file unless asked), loads back, feeds `fit` as a `tf.data` pipeline and
draws a grid with one row per class.
"""

import json
import math
import os
import time

import keras
import numpy as np

from keras_kd.procedures.base import check_int
from keras_kd.procedures.inversion import TeacherInversion

# CPU-sized: the official 2,000 iterations of 256 images take about half an
# hour per batch on 2 cores for a CIFAR-10 ResNet; see `OFFICIAL_CIFAR10`
# in keras_kd.procedures.inversion for a GPU.
DEFAULT_ITERATIONS = 200
DEFAULT_BATCH_SIZE = 64
DEFAULT_LEARNING_RATE = 0.05


class SynthesizedImages:
    """Images synthesised from a teacher, with what they were made for.

    Attributes:
        images: `(N, H, W, C)` float32, raw pixels in the teacher's
            `pixel_range`.
        labels: `(N,)` int32, the target class of each image.
        teacher_predictions: `(N,)` int32, the teacher's top class on it.
        info: a dict of the settings, the seconds spent and the backend.
    """

    def __init__(self, images, labels, teacher_predictions, info=None):
        self.images = np.asarray(images, "float32")
        self.labels = np.asarray(labels, "int32").reshape(-1)
        self.teacher_predictions = np.asarray(
            teacher_predictions, "int32"
        ).reshape(-1)
        if not (
            len(self.images)
            == len(self.labels)
            == len(self.teacher_predictions)
        ):
            raise ValueError(
                f"SynthesizedImages: {len(self.images)} images, "
                f"{len(self.labels)} labels and {len(self.teacher_predictions)}"
                " teacher predictions; expected one of each per image."
            )
        self.info = dict(info or {})

    def __len__(self):
        return len(self.images)

    def __repr__(self):
        return (
            f"SynthesizedImages({len(self)} images of shape "
            f"{self.images.shape[1:]}, teacher agreement "
            f"{self.teacher_agreement:.3f})"
        )

    @property
    def teacher_agreement(self):
        """The share of images the teacher classifies as their target."""
        if not len(self):
            return float("nan")
        return float(np.mean(self.teacher_predictions == self.labels))

    def __add__(self, other):
        if not isinstance(other, SynthesizedImages):
            return NotImplemented
        if self.images.shape[1:] != other.images.shape[1:]:
            raise ValueError(
                f"Cannot join pools of images of shapes "
                f"{self.images.shape[1:]} and {other.images.shape[1:]}."
            )
        return SynthesizedImages(
            np.concatenate([self.images, other.images]),
            np.concatenate([self.labels, other.labels]),
            np.concatenate(
                [self.teacher_predictions, other.teacher_predictions]
            ),
            {"parts": [self.info, other.info]},
        )

    def save(self, path, *, overwrite=False):
        """Writes a `.npz` archive (written beside, then moved into place;
        an existing file is kept unless `overwrite=True`). Returns the
        path."""
        path = os.fspath(path)
        if not path.endswith(".npz"):
            raise ValueError(
                f"SynthesizedImages.save writes a .npz archive; received "
                f"path {path!r}. Give a name ending in .npz."
            )
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(
                f"{path} exists; SynthesizedImages.save never replaces a file "
                "unless asked. Pass overwrite=True or choose another path."
            )
        partial = path + ".partial.npz"
        np.savez_compressed(
            partial,
            images=self.images,
            labels=self.labels,
            teacher_predictions=self.teacher_predictions,
            info=np.asarray(json.dumps(self.info, default=str)),
        )
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path):
        """The pool `save` wrote."""
        with np.load(os.fspath(path), allow_pickle=False) as archive:
            missing = {"images", "labels", "teacher_predictions"} - set(
                archive.files
            )
            if missing:
                raise ValueError(
                    f"{path} is not a SynthesizedImages archive: it lacks "
                    f"{sorted(missing)} (it holds {sorted(archive.files)})."
                )
            info = json.loads(str(archive["info"])) if "info" in archive else {}
            return cls(
                archive["images"],
                archive["labels"],
                archive["teacher_predictions"],
                info,
            )

    def dataset(self, batch_size=64, *, shuffle=True, seed=None, labels=False):
        """A `tf.data.Dataset` of image batches (with `labels=True`,
        `(images, target classes)`), shuffled each epoch with `seed`."""
        import tensorflow as tf

        elements = (self.images, self.labels) if labels else self.images
        data = tf.data.Dataset.from_tensor_slices(elements)
        if shuffle:
            data = data.shuffle(
                len(self), seed=seed, reshuffle_each_iteration=True
            )
        return data.batch(batch_size).prefetch(tf.data.AUTOTUNE)

    def plot(self, per_class=8, class_names=None):
        """An image grid: one row per class, `per_class` images each."""
        from keras_kd import plotting

        plt = plotting._pyplot()
        classes = sorted(set(self.labels.tolist()))
        low, high = self.info.get("pixel_range", (0.0, 255.0))
        fig, axes = plt.subplots(
            len(classes),
            per_class,
            figsize=(per_class * 0.9, len(classes) * 0.95),
            squeeze=False,
        )
        for row, c in enumerate(classes):
            chosen = np.flatnonzero(self.labels == c)[:per_class]
            for col in range(per_class):
                ax = axes[row, col]
                ax.axis("off")
                if col >= len(chosen):
                    continue
                image = (self.images[chosen[col]] - low) / (high - low)
                image = np.clip(image, 0.0, 1.0)
                if image.shape[-1] == 1:
                    ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(image)
            name = class_names[c] if class_names is not None else str(c)
            axes[row, 0].set_title(name, fontsize=7, loc="left")
        fig.tight_layout()


def _target_classes(labels, total, num_classes):
    if labels is None:
        return np.arange(total) % num_classes
    labels = np.asarray(labels).reshape(-1)
    if labels.size != total:
        raise ValueError(
            f"synthesize: `labels` has {labels.size} classes for {total} "
            "images (batches are full); give one per image or None for "
            "every class in turn."
        )
    return labels


def synthesize(
    teacher,
    num_images,
    *,
    batch_size=DEFAULT_BATCH_SIZE,
    iterations=DEFAULT_ITERATIONS,
    learning_rate=DEFAULT_LEARNING_RATE,
    labels=None,
    student=None,
    seed=None,
    verbose=1,
    **options,
):
    """Synthesises `num_images` images from `teacher` (DeepInversion).

    Each batch starts from fresh noise and a fresh Adam and is optimised
    for `iterations` steps by `TeacherInversion` (`options` are its
    arguments: weights, jitter, flips, `pixel_range` ...); with a
    `student`, Adaptive DeepInversion. Target classes run through every
    class in turn unless `labels` are given.

    The defaults are sized for a CPU (64 images, 200 iterations per batch);
    the official CIFAR-10 settings are `inversion.OFFICIAL_CIFAR10` (256
    images, 2,000 iterations, Adam 0.05), for a GPU.

    Returns:
        `SynthesizedImages`, whose `info` records the settings, the seconds
        spent and the backend.

    Example:

    ```python
    pool = keras_kd.procedures.synthesize(teacher, 512, seed=0)
    pool.save("synthesized.npz")
    distiller.fit(pool.dataset(64, seed=0), epochs=10)
    ```
    """
    num_images = check_int("synthesize", "num_images", num_images)
    iterations = check_int("synthesize", "iterations", iterations)
    inversion = TeacherInversion(
        teacher, batch_size=batch_size, student=student, seed=seed, **options
    )
    inversion.compile(optimizer=keras.optimizers.Adam(learning_rate))
    batches = math.ceil(num_images / inversion.batch_size)
    total = batches * inversion.batch_size
    targets = _target_classes(labels, total, inversion.num_classes)
    steps = np.zeros((iterations, 1), "float32")
    images, predictions, histories = [], [], []
    started = time.perf_counter()
    for i in range(batches):
        if verbose:
            print(
                f"Synthesising batch {i + 1}/{batches}: "
                f"{inversion.batch_size} images, {iterations} iterations"
            )
        chosen = targets[
            i * inversion.batch_size : (i + 1) * inversion.batch_size
        ]
        inversion.reset(chosen)
        history = inversion.fit(
            steps, batch_size=1, epochs=1, shuffle=False, verbose=verbose
        )
        histories.append({k: float(v[-1]) for k, v in history.history.items()})
        batch = inversion.current_images()
        images.append(batch)
        logits = teacher.predict(batch, batch_size=len(batch), verbose=0)
        predictions.append(np.argmax(logits, axis=-1))
    seconds = time.perf_counter() - started
    info = {
        "num_images": num_images,
        "batch_size": inversion.batch_size,
        "iterations": iterations,
        "learning_rate": learning_rate,
        "seed": seed,
        "adaptive": student is not None and inversion.adaptive_weight > 0,
        "pixel_range": list(inversion.pixel_range),
        "options": {k: v for k, v in options.items() if k != "pixel_range"},
        "seconds": seconds,
        "seconds_per_image": seconds / total,
        "backend": keras.backend.backend(),
        "final_terms": histories,
    }
    return SynthesizedImages(
        np.concatenate(images)[:num_images],
        targets[:num_images],
        np.concatenate(predictions)[:num_images],
        info,
    )
