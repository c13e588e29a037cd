"""Plots and small training helpers shared by the tutorial notebooks.

The notebooks in `examples/` import these instead of repeating them: image
grids, training curves (several runs, per-layer terms), confusion matrices,
per-class accuracy, and the data loading and compile-and-fit recipe every
tutorial uses.

Matplotlib is imported inside each plotting function, so `import
keras_kd.plotting` works without it; a plot without it raises an
`ImportError` naming the `examples` extra. Each plotting function draws one
new pyplot figure and returns nothing: a notebook shows it at the end of the
cell (call `matplotlib.pyplot.show()` in a script); `plt.gcf()` is the
figure, for saving or checking what was drawn.

Example:

```python
history = model.fit(...)
keras_kd.plotting.plot_histories({"alone": history}, ["val_accuracy"])
```
"""

import numpy as np

BUNDLED_PREFIX = "bundled"
# A model trained alone logs its task loss as `loss`, a Distiller as
# `student_loss`.
TASK_LOSS = {"student_loss": "loss", "val_student_loss": "val_loss"}


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            f"keras_kd.plotting needs matplotlib, which could not be imported "
            f'({error}). Install it with `pip install "keras-kd[examples]"` '
            "(the tutorials' extra) or `pip install matplotlib`."
        ) from error
    return plt


def _history(history):
    """The `{metric: [value per epoch]}` dict of a `History` or a dict."""
    return history.history if hasattr(history, "history") else history


def _finish(fig, axes_with_legend=()):
    for ax in axes_with_legend:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()


def show_images(images, labels, class_names, predicted=None, columns=8):
    """A grid of uint8 images titled by class (and prediction).

    Args:
        images: uint8 `(N, H, W, C)`, `C` 1 or 3.
        labels: `(N,)` class ids.
        class_names: one name per class.
        predicted: optional `(N,)` predicted class ids: titles become
            `predicted (true)`, green when right, red when wrong.
        columns: images per row. Defaults to 8.
    """
    plt = _pyplot()
    images = np.asarray(images)
    rows = -(-len(images) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False
    )
    for ax in axes.flat:
        ax.axis("off")
    for i, (ax, image) in enumerate(zip(axes.flat, images)):
        grey = image.shape[-1] == 1
        ax.imshow(
            image[..., 0] if grey else image, cmap="gray" if grey else None
        )
        title, color = str(class_names[labels[i]]), "black"
        if predicted is not None:
            color = "green" if predicted[i] == labels[i] else "red"
            title = f"{class_names[predicted[i]]}\n({title})"
        ax.set_title(title, fontsize=8, color=color)
    _finish(fig)


def plot_histories(histories, metrics=("val_accuracy", "loss"), reference=None):
    """Training curves of several runs, one panel per metric.

    Each run keeps its colour in every panel. A `Distiller` logs its task
    loss as `student_loss` (its `loss` is the total); a model trained alone
    logs no `student_loss`, and its `loss` is its task loss, so the
    `student_loss` and `val_student_loss` panels draw that run's `loss` and
    `val_loss` (labelled so). Any other metric a run did not log leaves the
    run out of that panel, and the panel title names it.

    Args:
        histories: `{label: History or {metric: [value per epoch]}}`.
        metrics: the logged names to plot, one panel each.
        reference: optional `{metric: value}` drawn as a dashed line labelled
            "teacher".
    """
    plt = _pyplot()
    fig, axes = plt.subplots(
        1, len(metrics), figsize=(5.5 * len(metrics), 3.6), squeeze=False
    )
    for ax, metric in zip(axes.flat, metrics):
        missing = []
        for index, (label, history) in enumerate(histories.items()):
            history = _history(history)
            values = history.get(metric)
            if metric in TASK_LOSS and "student_loss" not in history:
                values = history.get(TASK_LOSS[metric])
                label = f"{label} ({TASK_LOSS[metric]})"
            if not values:
                missing.append(label)
                continue
            epochs = np.arange(1, len(values) + 1)
            ax.plot(
                epochs,
                values,
                marker="o",
                markersize=3,
                color=f"C{index % 10}",
                label=label,
            )
        if reference is not None and metric in reference:
            ax.axhline(
                reference[metric], color="gray", linestyle="--", label="teacher"
            )
        title = metric
        if metric in TASK_LOSS:
            title += " (the task loss)"
        if missing:
            title += f"\n(not logged by: {', '.join(missing)})"
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _finish(fig, axes.flat)


def plot_per_layer(
    history, prefixes, layers, titles=None, shade=None, log_scale=()
):
    """Per-layer logged values over epochs, one panel per prefix.

    The distiller logs per-layer terms as `prefix + layer`, e.g.
    `val_boundary_agreement_stage1_relu`.

    Args:
        history: a `History` or `{metric: [value per epoch]}`.
        prefixes: the logged name prefixes, one panel each.
        layers: the layer names (suffixes), one line each.
        titles: optional panel titles, one per prefix (default the prefix).
        shade: optional `(first, last, label)`: epochs `first..last`
            (1-based, inclusive) shaded and labelled, e.g. a schedule stage.
        log_scale: indices of the panels drawn on a log y scale.
    """
    plt = _pyplot()
    history = _history(history)
    titles = titles or prefixes
    fig, axes = plt.subplots(
        1, len(prefixes), figsize=(5.5 * len(prefixes), 3.6), squeeze=False
    )
    for index, (ax, prefix, title) in enumerate(
        zip(axes.flat, prefixes, titles)
    ):
        for layer in layers:
            values = history[prefix + layer]
            epochs = np.arange(1, len(values) + 1)
            ax.plot(epochs, values, marker="o", markersize=3, label=layer)
        if shade is not None:
            first, last, label = shade
            ax.axvspan(
                first - 0.5, last + 0.5, color="orange", alpha=0.15, label=label
            )
        if index in log_scale:
            ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    _finish(fig, axes.flat)


def confusion_counts(y_true, y_pred, num_classes):
    """`(num_classes, num_classes)` counts: row true class, column predicted."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    flat = num_classes * y_true + y_pred
    return np.bincount(flat, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )


def plot_confusion(y_true, y_pred, class_names, title=""):
    """Row-normalised confusion matrix (each row: where a true class goes)."""
    plt = _pyplot()
    n = len(class_names)
    counts = confusion_counts(y_true, y_pred, n)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(6, 5))
    image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(image, ax=ax)
    _finish(fig)


def per_class_accuracy(y_true, y_pred, num_classes):
    """Accuracy on each class's examples (0 for a class with none)."""
    counts = confusion_counts(y_true, y_pred, num_classes)
    return np.diag(counts) / np.maximum(counts.sum(axis=1), 1)


def plot_per_class(predictions, y_true, class_names):
    """Grouped bars of per-class accuracy, one group per class.

    Args:
        predictions: `{label: (N,) predicted class ids}`.
        y_true: `(N,)` true class ids.
        class_names: one name per class.
    """
    plt = _pyplot()
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(10, 3.6))
    width = 0.8 / len(predictions)
    for i, (label, y_pred) in enumerate(predictions.items()):
        offset = (i - (len(predictions) - 1) / 2) * width
        values = per_class_accuracy(y_true, y_pred, n)
        ax.bar(np.arange(n) + offset, values, width, label=label)
    ax.set_xticks(range(n), class_names, rotation=30, ha="right")
    ax.set_ylabel("accuracy")
    _finish(fig, [ax])


def print_results(results):
    """Prints `{name: (parameters, test accuracy)}` as an aligned table."""
    width = max(len(name) for name in results)
    for name, (params, acc) in results.items():
        print(
            f"{name:{width}s} {params:>10,} parameters   "
            f"test accuracy {acc:.4f}"
        )


def load_data(source, data_dir=None, train_images=None, test_images=None):
    """The tutorials' data: `keras_kd.data` arrays, cut to the first images.

    Args:
        source: `"bundled"` (the Fashion-MNIST subset inside keras_kd),
            `"bundled:<name>"` (`keras_kd.data.load_bundled(name)`, e.g.
            `"bundled:cifar10"`), a `.npz` path or a TensorFlow Datasets name
            (`keras_kd.data.load_arrays`).
        data_dir: tfds data directory, for a tfds name.
        train_images: keep the first this many training images (`None`: all).
        test_images: keep the first this many test images (`None`: all).

    Returns:
        The `load_arrays` dict, with the image and label arrays cut.
    """
    from keras_kd import data

    if source == BUNDLED_PREFIX:
        arrays = data.load_bundled()
    elif source.startswith(BUNDLED_PREFIX + ":"):
        arrays = data.load_bundled(source.split(":", 1)[1])
    else:
        arrays = data.load_arrays(source, data_dir=data_dir)
    arrays = dict(arrays)
    for split, count in (("train", train_images), ("test", test_images)):
        arrays["x_" + split] = arrays["x_" + split][:count]
        arrays["y_" + split] = arrays["y_" + split][:count]
    return arrays


def pipelines(arrays, batch_size, seed=0, augment="crop_flip"):
    """Seeded train and test `tf.data` pipelines of raw pixels.

    `keras_kd.data.make_dataset(..., rescale=False)`: shuffled, augmented
    (`augment`) training batches and plain test batches of 256, pixels
    0..255 as float32, not normalised. The tutorials normalise inside the
    models instead (`keras_kd.models.resnet(..., mean=mean, std=std)` with
    `mean, std = keras_kd.data.channel_stats(arrays["x_train"])`), so a
    trained or exported model takes raw pixels too.

    Returns:
        `(train_ds, test_ds)`.
    """
    from keras_kd import data

    train_ds = data.make_dataset(
        arrays["x_train"],
        arrays["y_train"],
        batch_size=batch_size,
        training=True,
        augment=augment,
        rescale=False,
        seed=seed,
    )
    test_ds = data.make_dataset(
        arrays["x_test"], arrays["y_test"], batch_size=256, rescale=False
    )
    return train_ds, test_ds


def compile_and_fit(
    model,
    train_ds,
    test_ds,
    epochs,
    learning_rate,
    callbacks=(),
    verbose=1,
    loss=None,
    decay_epochs=None,
):
    """Adam with cosine decay to zero over the run, then `fit`.

    The one recipe of every tutorial, for teachers, students alone and
    distillers alike (a `Distiller` is a `keras.Model`).

    Args:
        model: a `keras.Model` or `keras_kd.Distiller`.
        train_ds: a finite batched training `tf.data.Dataset`.
        test_ds: the validation data (logged as `val_*`).
        epochs: epochs to train.
        learning_rate: the initial learning rate.
        callbacks: `fit` callbacks.
        verbose: `fit` verbosity.
        loss: the task loss; defaults to sparse categorical cross-entropy
            on logits.
        decay_epochs: epochs the cosine decay spans (default `epochs`).
            With `ActivationBoundarySchedule`, whose stage 2 restarts the
            optimizer and so the schedule, give the length of stage 2.

    Returns:
        The `History`.
    """
    import keras

    loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps = int(train_ds.cardinality())
    if steps < 1:
        raise ValueError(
            "`train_ds` must be a finite dataset of known length (as "
            "keras_kd.data.make_dataset returns) for the cosine schedule; "
            f"its cardinality is {steps}."
        )
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, (decay_epochs or epochs) * steps)
    )
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=loss,
        metrics=["accuracy"],
    )
    return model.fit(
        train_ds,
        epochs=epochs,
        validation_data=test_ds,
        callbacks=list(callbacks),
        verbose=verbose,
        shuffle=False,
    )


def accuracy(model, test_ds, loss=None):
    """Test accuracy of a plain Keras model (recompiled without optimizer)."""
    import keras

    loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(loss=loss, metrics=["accuracy"])
    return model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"]
