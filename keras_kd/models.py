"""Small reference CNNs for the `keras-kd` command, examples and benchmarks.

Both builders name their layers so distillation taps read like the papers:
each stage ends in `stage{i}_bn` (the pre-activation, the official AB / NST
tap) followed by `stage{i}_relu`; the classifier is `logits` (no softmax).

BatchNormalization uses `momentum=0.9`, the equivalent of PyTorch's default
(0.1) that the reference implementations (RepDistiller, the official AB
code) train with; Keras's 0.99 lags far behind on short schedules.

Given `mean` and `std` (per channel, in [0, 1] units, from
`keras_kd.data.channel_stats`), both builders start with a `Normalization`
layer named `normalize` that maps raw pixels (0..255, as float) to
`(x / 255 - mean) / std`: the model then takes raw pixels, in training and
once exported (`keras_kd.export` keeps `Normalization`), and its input
pipeline must not normalise (`make_dataset(..., rescale=False)`).
"""

import functools

import keras
import numpy as np

_BatchNorm = functools.partial(keras.layers.BatchNormalization, momentum=0.9)


def pixel_normalization(mean, std, *, name="normalize"):
    """A layer mapping raw pixels 0..255 to `(x / 255 - mean) / std` per
    channel.

    Args:
        mean: per-channel mean in [0, 1] units (see
            `keras_kd.data.channel_stats`), length `C`.
        std: per-channel standard deviation in [0, 1] units, length `C`,
            all positive.
        name: layer name. Defaults to `"normalize"`.

    Returns:
        A `keras.layers.Normalization` with mean `255 * mean` and variance
        `(255 * std) ** 2` (saved with the model).

    Example:

    >>> layer = pixel_normalization([0.5], [0.25])
    >>> float(layer(np.full((1, 1, 1, 1), 255.0, "float32"))[0, 0, 0, 0])
    2.0
    """
    mean = np.asarray(mean, np.float64).reshape(-1)
    std = np.asarray(std, np.float64).reshape(-1)
    if mean.shape != std.shape or not mean.size:
        raise ValueError(
            f"`mean` and `std` must have one value per channel each; received "
            f"{mean.size} and {std.size} values. `keras_kd.data.channel_stats("
            "x_train)` returns both."
        )
    if not (
        np.all(np.isfinite(mean))
        and np.all(np.isfinite(std))
        and np.all(std > 0)
    ):
        raise ValueError(
            f"`mean` must be finite and `std` finite and positive; received "
            f"mean={mean.tolist()}, std={std.tolist()} (in [0, 1] units)."
        )
    return keras.layers.Normalization(
        mean=(255.0 * mean).tolist(),
        variance=np.square(255.0 * std).tolist(),
        name=name,
    )


def _image_input(input_shape, mean, std):
    inputs = keras.Input(input_shape, name="image")
    if mean is None and std is None:
        return inputs, inputs
    if mean is None or std is None:
        raise ValueError(
            "Pass both `mean` and `std` to normalise inside the model, or "
            f"neither; received mean={mean!r}, std={std!r}. "
            "`keras_kd.data.channel_stats(x_train)` returns both."
        )
    layer = pixel_normalization(mean, std)
    channels = np.asarray(mean).size
    if channels != input_shape[-1]:
        raise ValueError(
            f"`mean` and `std` have {channels} values; expected one per "
            f"channel of input_shape {tuple(input_shape)}."
        )
    return inputs, layer(inputs)


def conv_net(
    input_shape,
    classes,
    widths=(16, 32, 64),
    *,
    mean=None,
    std=None,
    name="conv_net",
):
    """A VGG-style CNN: per stage two 3x3 conv + BN + ReLU, then max-pool.

    Args:
        input_shape: `(H, W, C)` of the images.
        classes: number of classes.
        widths: channels of each stage. Defaults to `(16, 32, 64)`.
        mean: per-channel mean of the training images in [0, 1] units; with
            `std`, the model starts with `pixel_normalization(mean, std)`
            and takes raw pixels 0..255. Defaults to `None` (no
            normalisation inside).
        std: per-channel standard deviation, in [0, 1] units. Defaults to
            `None`.
        name: model name. Defaults to `"conv_net"`.

    Returns:
        A functional `keras.Model` returning logits. Taps: `stage{i}_relu`
        (its pre-activation is `stage{i}_bn`), `stage{i}_bn`, `pool`.

    Example:

    >>> model = conv_net((28, 28, 1), 10, widths=(8, 16, 32))
    >>> model.output.shape
    (None, 10)
    """
    inputs, x = _image_input(input_shape, mean, std)
    for i, width in enumerate(widths, start=1):
        x = keras.layers.Conv2D(
            width, 3, padding="same", use_bias=False, name=f"stage{i}_conv1"
        )(x)
        x = _BatchNorm(name=f"stage{i}_bn1")(x)
        x = keras.layers.ReLU(name=f"stage{i}_relu1")(x)
        x = keras.layers.Conv2D(
            width, 3, padding="same", use_bias=False, name=f"stage{i}_conv"
        )(x)
        x = _BatchNorm(name=f"stage{i}_bn")(x)
        x = keras.layers.ReLU(name=f"stage{i}_relu")(x)
        if i < len(widths):
            x = keras.layers.MaxPooling2D(name=f"stage{i}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet(
    input_shape,
    classes,
    widths=(16, 32, 64),
    blocks=2,
    *,
    mean=None,
    std=None,
    name="resnet",
):
    """A CIFAR-style post-activation ResNet (He et al. 2016, basic blocks).

    Each block is conv-BN-ReLU-conv-BN, `Add` with the shortcut (1x1 conv +
    BN when the shape changes), then ReLU. The last block of stage `i` names
    its `Add` `stage{i}_add` and its ReLU `stage{i}_relu`: the `Add` output
    is the pre-activation the official AB and NST code taps.

    Args:
        input_shape: `(H, W, C)` of the images.
        classes: number of classes.
        widths: channels of each stage (stage 2 onward halves the
            resolution). Defaults to `(16, 32, 64)`.
        blocks: basic blocks per stage (`6 * blocks + 2` layers deep:
            `blocks=3` is ResNet-20). Defaults to `2`.
        mean: per-channel mean of the training images in [0, 1] units; with
            `std`, the model starts with `pixel_normalization(mean, std)`
            and takes raw pixels 0..255. Defaults to `None`.
        std: per-channel standard deviation, in [0, 1] units. Defaults to
            `None`.
        name: model name. Defaults to `"resnet"`.

    Returns:
        A functional `keras.Model` returning logits.

    Example:

    >>> model = resnet((32, 32, 3), 10, widths=(8, 16, 32), blocks=1)
    >>> model.get_layer("stage3_add").output.shape
    (None, 8, 8, 32)
    """
    inputs, x = _image_input(input_shape, mean, std)
    x = keras.layers.Conv2D(
        widths[0], 3, padding="same", use_bias=False, name="stem_conv"
    )(x)
    x = _BatchNorm(name="stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    for i, width in enumerate(widths, start=1):
        for j in range(1, blocks + 1):
            last = j == blocks
            prefix = f"stage{i}" if last else f"stage{i}_block{j}"
            strides = 2 if (i > 1 and j == 1) else 1
            shortcut = x
            y = keras.layers.Conv2D(
                width,
                3,
                strides=strides,
                padding="same",
                use_bias=False,
                name=f"{prefix}_conv1",
            )(x)
            y = _BatchNorm(name=f"{prefix}_bn1")(y)
            y = keras.layers.ReLU(name=f"{prefix}_relu1")(y)
            y = keras.layers.Conv2D(
                width,
                3,
                padding="same",
                use_bias=False,
                name=f"{prefix}_conv2",
            )(y)
            y = _BatchNorm(name=f"{prefix}_bn2")(y)
            if strides != 1 or shortcut.shape[-1] != width:
                shortcut = keras.layers.Conv2D(
                    width,
                    1,
                    strides=strides,
                    use_bias=False,
                    name=f"{prefix}_proj",
                )(shortcut)
                shortcut = _BatchNorm(name=f"{prefix}_proj_bn")(shortcut)
            x = keras.layers.Add(name=f"{prefix}_add")([y, shortcut])
            x = keras.layers.ReLU(name=f"{prefix}_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(classes, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)
