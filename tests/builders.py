"""Small models shared by the tests (a few conv layers on 8x8..16x16 inputs)."""

import keras
import numpy as np


class CallCounter(keras.layers.Layer):
    """Identity layer that counts how often it runs (eagerly)."""

    calls = None

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.count = 0

    def call(self, x):
        self.count += 1
        return x


class StepCounter(keras.layers.Layer):
    """Identity layer counting its runs in a variable, also when compiled.

    A Python counter sees only tracing under `jax.jit` / `tf.function`; the
    variable is incremented by the compiled step itself (JAX threads it as
    non-trainable state, as it does BatchNormalization's statistics).
    """

    def build(self, input_shape):
        self.runs = self.add_weight(
            shape=(),
            initializer="zeros",
            trainable=False,
            name="runs",
            dtype="float32",
        )

    def call(self, x):
        self.runs.assign(self.runs + 1.0)
        return x


def cnn(
    width,
    name,
    *,
    size=8,
    classes=5,
    fused=False,
    counter=False,
    softmax=False,
    bn=True,
):
    """conv -> relu -> conv -> bn -> relu -> gap -> dense.

    Layer names: `conv1`, `relu1` (absent if `fused`: `conv1` carries the
    ReLU), `conv2`, `bn2`, `relu2`, `pool`, `logits`; with `counter` (True
    for `CallCounter`, or a layer class) a `counter` layer on the input.
    """
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    if counter:
        layer_class = CallCounter if counter is True else counter
        x = layer_class(name="counter")(x)
    if fused:
        x = keras.layers.Conv2D(
            width, 3, padding="same", activation="relu", name="conv1"
        )(x)
    else:
        x = keras.layers.Conv2D(width, 3, padding="same", name="conv1")(x)
        x = keras.layers.ReLU(name="relu1")(x)
    x = keras.layers.Conv2D(width, 3, padding="same", name="conv2")(x)
    if bn:
        x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.ReLU(name="relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(
        classes, activation="softmax" if softmax else None, name="logits"
    )(x)
    return keras.Model(inputs, outputs, name=name)


def pair(teacher_width=8, student_width=4, **kwargs):
    """A teacher `cnn` and a narrower student whose conv1 has a fused ReLU."""
    teacher = cnn(teacher_width, "teacher", **kwargs)
    student = cnn(student_width, "student", fused=True, **kwargs)
    return teacher, student


def data(n=16, size=8, classes=5, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, size, size, 3)).astype("float32")
    y = rng.integers(0, classes, size=(n,))
    return x, y


def sparse_ce():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def all_losses():
    """One of each distillation loss, on `cnn()`'s layer names.

    AB reads `relu1`/`relu2` pre-activations (the student's `conv1` carries a
    fused ReLU, see `cnn(fused=True)`), with connectors when widths differ.
    """
    from keras_kd import losses

    return [
        losses.LogitsDistillation(temperature=4.0),
        losses.ActivationBoundary(["relu1", "relu2"], ["conv1", "relu2"]),
        losses.NeuronSelectivityTransfer("relu2", "relu2"),
        losses.FitNetsHint("bn2", "bn2"),
        losses.AttentionTransfer("relu2", "relu2"),
    ]


def export_cnn(width, prefix, name):
    """The export tests' CNN: Rescaling + RandomFlip in front, Conv-BN-ReLU,
    a residual Add, 16x16x3 raw-pixel inputs; layer names start `prefix`."""
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.Rescaling(1 / 255, name=f"{prefix}rescale")(inputs)
    x = keras.layers.RandomFlip("horizontal", name=f"{prefix}flip")(x)
    x = keras.layers.Conv2D(width, 3, padding="same", name=f"{prefix}conv1")(x)
    x = keras.layers.BatchNormalization(name=f"{prefix}bn1")(x)
    x = keras.layers.ReLU(name=f"{prefix}relu1")(x)
    y = keras.layers.Conv2D(width, 3, padding="same", name=f"{prefix}conv2")(x)
    y = keras.layers.BatchNormalization(name=f"{prefix}bn2")(y)
    x = keras.layers.Add(name=f"{prefix}add")([x, y])
    x = keras.layers.ReLU(name=f"{prefix}relu2")(x)
    x = keras.layers.GlobalAveragePooling2D(name=f"{prefix}pool")(x)
    return keras.Model(
        inputs, keras.layers.Dense(10, name=f"{prefix}logits")(x), name=name
    )


def brightness_images(n, seed):
    """Easy 16x16x3 uint8 data: the class sets the mean brightness."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, size=n)
    x = rng.normal(25.0 * y[:, None, None, None] + 10, 20, size=(n, 16, 16, 3))
    return np.clip(x, 0, 255).astype("uint8"), y


def tiny_npz(path):
    """A learnable 3-class archive of 12x12x1 images (each class a
    different brightness) for end-to-end runs of the command line."""
    rng = np.random.default_rng(0)
    y_train = np.repeat(np.arange(3), 40)
    x_train = (
        y_train[:, None, None, None] * 80
        + rng.integers(0, 40, (120, 12, 12, 1))
    ).astype("uint8")
    np.savez(
        path,
        x_train=x_train,
        y_train=y_train,
        x_test=x_train[::4],
        y_test=y_train[::4],
    )
    return path
