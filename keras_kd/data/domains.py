"""A domain-shift pair from the bundled data: garments on backgrounds.

`on_backgrounds` puts grey images onto natural-image backgrounds (made grey
and resized), the target domain of keras_kd's domain-adaptation benchmark
and of the bundled `"fashion_mnist_on_cifar10"` data set: the same kind of
garments, other pixels around them. NumPy only.
"""

import numpy as np

BACKGROUND_STRENGTH = 0.4  # background brightness relative to the garment's
LUMA = np.array([0.299, 0.587, 0.114], "float32")  # ITU-R BT.601 grey


def grey_resized(images, size):
    """`images` (N, H, W, 3 or 1; 0..255) as grey float32 `(N, *size, 1)`,
    resized bilinearly (`keras.ops.image.resize`)."""
    import keras

    images = np.asarray(images, "float32")
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            "grey_resized: expected images shaped (N, H, W, 1) or "
            f"(N, H, W, 3); received shape {images.shape}."
        )
    grey = images @ LUMA[:, None] if images.shape[-1] == 3 else images
    return keras.ops.convert_to_numpy(
        keras.ops.image.resize(grey, tuple(size), interpolation="bilinear")
    )


def on_backgrounds(images, backgrounds, strength=BACKGROUND_STRENGTH):
    """Grey `images` on grey `backgrounds`: per pixel, the brighter of the
    image and `strength` x the background (both 0..255), float32.

    Args:
        images: `(N, H, W, 1)` grey images, 0..255.
        backgrounds: `(N, H, W, 1)`, 0..255 (see `grey_resized`).
        strength: the backgrounds' brightness factor in `[0, 1]`; `0`
            leaves the images as they are. Defaults to `0.4`.
    """
    images = np.asarray(images)
    backgrounds = np.asarray(backgrounds)
    if images.shape != backgrounds.shape:
        raise ValueError(
            "on_backgrounds: `images` and `backgrounds` must have the same "
            f"shape; received {images.shape} and {backgrounds.shape} (make "
            "the backgrounds with grey_resized(x, images.shape[1:3]))."
        )
    if not 0.0 <= strength <= 1.0:
        raise ValueError(
            f"on_backgrounds: `strength` must be in [0, 1]; received "
            f"{strength!r}."
        )
    return np.maximum(images, strength * backgrounds).astype("float32")


def fashion_mnist_on_cifar10(fashion, cifar, strength=BACKGROUND_STRENGTH):
    """The bundled Fashion-MNIST subset on the bundled CIFAR-10 images: each
    split's garments on that split's backgrounds, in a fixed order (seed 0,
    repeated as needed), rounded to uint8; labels and class names are the
    garments'."""
    rng = np.random.default_rng(0)
    arrays = dict(fashion)
    for split in ("train", "test"):
        x = fashion[f"x_{split}"]
        source = cifar[f"x_{split}"]
        repeats = -(-len(x) // len(source))
        order = np.concatenate(
            [rng.permutation(len(source)) for _ in range(repeats)]
        )[: len(x)]
        backgrounds = grey_resized(source[order], x.shape[1:3])
        mixed = on_backgrounds(x.astype("float32"), backgrounds, strength)
        arrays[f"x_{split}"] = np.clip(np.round(mixed), 0, 255).astype("uint8")
    return arrays
