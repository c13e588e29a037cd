"""The input-range check: do the given inputs look like the training inputs?

Calibration and check data come from the user, and nothing in a Keras model
records what it was trained on except the moving statistics of
BatchNormalization; `input_range_warning` compares the inputs of the first
BatchNormalization layer with them (see the `keras_kd.export` docstring for
what it can and cannot see).
"""

import keras
import numpy as np


def input_range_warning(model, batches, ratio=10.0):
    """Why `batches` look unlike `model`'s training inputs, or `None`.

    Runs `model(x, training=False)` on each batch and records what its first
    BatchNormalization layer (the first one called, nested models included)
    receives. Per channel, the data's standard deviation is compared with
    `sqrt(moving_variance)` and its mean with `moving_mean` (in moving
    standard deviations). The text is returned when, as a median over
    channels, the standard deviation is more than `ratio` times too large or
    too small, or the mean more than `ratio` moving standard deviations off.

    `None` also when nothing can be said: no BatchNormalization layer is
    called, or its moving statistics are still at their initial values
    (mean 0, variance 1: never trained).

    Example:

    >>> import keras, numpy as np
    >>> inputs = keras.Input((4,))
    >>> norm = keras.layers.BatchNormalization()
    >>> model = keras.Model(inputs, norm(inputs), name="student")
    >>> # As if trained on inputs in [0, 1): mean 0.5, variance 1/12.
    >>> _ = norm.moving_mean.assign(np.full(4, 0.5))
    >>> _ = norm.moving_variance.assign(np.full(4, 1 / 12))
    >>> rng = np.random.default_rng(0)
    >>> pixels = rng.uniform(0, 255, (8, 4)).astype("float32")  # raw 0..255
    >>> print(input_range_warning(model, [pixels]).split(":")[0])
    The calibration/check data look unlike what 'student' was trained on
    >>> input_range_warning(model, [pixels / 255]) is None
    True
    """
    layers = [
        layer
        for layer in model._flatten_layers(include_self=False)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]
    if not layers:
        return None
    seen = []

    def recorder(layer):
        original = layer.call

        def call(inputs, *args, **kwargs):
            if not seen or seen[0][0] is layer:
                seen.append((layer, keras.ops.convert_to_numpy(inputs)))
            return original(inputs, *args, **kwargs)

        return call

    own = [vars(layer).get("call") for layer in layers]  # usually None
    for layer in layers:
        object.__setattr__(layer, "call", recorder(layer))
    try:
        for x in batches:
            model(x, training=False)
    finally:
        for layer, call in zip(layers, own):
            if call is None:
                object.__delattr__(layer, "call")
            else:
                object.__setattr__(layer, "call", call)
    if not seen:
        return None
    layer = seen[0][0]
    moving_mean = np.float64(keras.ops.convert_to_numpy(layer.moving_mean))
    moving_var = np.float64(keras.ops.convert_to_numpy(layer.moving_variance))
    if np.all(moving_mean == 0) and np.all(moving_var == 1):
        return None  # never updated: says nothing about the training data
    axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
    values = [np.moveaxis(v.astype(np.float64), axis, -1) for _, v in seen]
    values = np.concatenate([v.reshape(-1, v.shape[-1]) for v in values])
    # A floor relative to the training variance (not BatchNormalization's
    # epsilon, which would hide data scaled down by 255 in small layers).
    floor = 1e-6 * float(np.median(moving_var)) + 1e-12
    moving_std = np.sqrt(moving_var + floor)
    scale = np.median(np.sqrt(values.var(0) + floor) / moving_std)
    shift = np.median(np.abs(values.mean(0) - moving_mean) / moving_std)
    if 1 / ratio <= scale <= ratio and shift <= ratio:
        return None
    return (
        f"The calibration/check data look unlike what '{model.name}' was "
        f"trained on: at its first BatchNormalization layer '{layer.name}' "
        f"their standard deviation is {scale:.3g}x the one it saw in "
        f"training and their mean {shift:.3g} training standard deviations "
        "away (medians over channels). Typical cause: raw 0..255 pixels "
        "given to a model trained on inputs scaled or normalised outside it, "
        "or the reverse. Pass the data preprocessed as in training (the "
        "quantization and the parity check are only meaningful then), or "
        "put the preprocessing (`keras.layers.Rescaling`, `Normalization`) "
        "inside the model."
    )
