"""keras_kd.plotting: each helper draws (or returns) exactly its inputs."""

import builtins
import importlib

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from keras_kd import plotting  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    plt.close("all")
    yield
    plt.close("all")


def test_confusion_counts_and_per_class_accuracy_match_numpy():
    rng = np.random.default_rng(0)
    y_true, y_pred = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    counts = plotting.confusion_counts(y_true, y_pred, 4)
    expected = np.zeros((4, 4), int)
    for t, p in zip(y_true, y_pred):
        expected[t, p] += 1
    np.testing.assert_array_equal(counts, expected)
    per_class = plotting.per_class_accuracy(y_true, y_pred, 4)
    for c in range(4):
        assert per_class[c] == pytest.approx(np.mean(y_pred[y_true == c] == c))


def test_plot_confusion_shows_row_normalised_counts():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    y_pred = np.array([0, 1, 1, 1, 1, 0])
    plotting.plot_confusion(y_true, y_pred, ["a", "b", "c"], "title")
    rates = plt.gcf().axes[0].images[0].get_array()
    np.testing.assert_allclose(rates, [[1 / 3, 2 / 3, 0], [0, 1, 0], [1, 0, 0]])


def test_plot_histories_draws_each_run_in_one_colour_per_panel():
    alone = {"val_accuracy": [0.2, 0.4, 0.5], "loss": [2.0, 1.5, 1.2]}
    distilled = {
        "val_accuracy": [0.3, 0.5, 0.6],
        "student_loss": [1.9, 1.4, 1.0],
        "kd_loss": [0.5, 0.4, 0.3],
    }
    plotting.plot_histories(
        {"alone": alone, "distilled": distilled},
        metrics=("val_accuracy", "student_loss", "kd_loss"),
        reference={"val_accuracy": 0.7},
    )
    accuracy_ax, task_ax, kd_ax = plt.gcf().axes
    lines = {line.get_label(): line for line in accuracy_ax.lines}
    np.testing.assert_allclose(
        lines["alone"].get_ydata(), alone["val_accuracy"]
    )
    np.testing.assert_allclose(lines["alone"].get_xdata(), [1, 2, 3])
    np.testing.assert_allclose(
        lines["distilled"].get_ydata(), distilled["val_accuracy"]
    )
    np.testing.assert_allclose(lines["teacher"].get_ydata(), [0.7, 0.7])
    # The task loss: the student alone's `loss` beside the distilled
    # student's `student_loss`, each run in its colour.
    task = {line.get_label(): line for line in task_ax.lines}
    np.testing.assert_allclose(task["alone (loss)"].get_ydata(), alone["loss"])
    np.testing.assert_allclose(
        task["distilled"].get_ydata(), distilled["student_loss"]
    )
    assert task["distilled"].get_color() == lines["distilled"].get_color()
    assert task["alone (loss)"].get_color() == lines["alone"].get_color()
    # A distillation term the student alone does not have: left out, said so.
    assert [line.get_label() for line in kd_ax.lines] == ["distilled"]
    assert kd_ax.lines[0].get_color() == lines["distilled"].get_color()
    assert "not logged by: alone" in kd_ax.get_title()


def test_plot_per_layer_draws_one_line_per_layer_and_the_shade():
    history = {
        "val_agreement_a": [0.6, 0.7],
        "val_agreement_b": [0.55, 0.65],
        "val_loss_a": [3.0, 1.0],
        "val_loss_b": [4.0, 2.0],
    }
    plotting.plot_per_layer(
        history,
        ["val_agreement_", "val_loss_"],
        ["a", "b"],
        shade=(1, 1, "stage 1"),
        log_scale=[1],
    )
    first, second = plt.gcf().axes
    for ax, prefix in ((first, "val_agreement_"), (second, "val_loss_")):
        for line, layer in zip(ax.lines, ["a", "b"]):
            assert line.get_label() == layer
            np.testing.assert_allclose(
                line.get_ydata(), history[prefix + layer]
            )
    assert second.get_yscale() == "log" and first.get_yscale() == "linear"
    shade = first.patches[0].get_extents()
    assert shade.width > 0 and first.patches[0].get_label() == "stage 1"


def test_show_images_titles_predictions_and_colours():
    images = np.arange(3 * 4 * 4, dtype=np.uint8).reshape(3, 4, 4, 1)
    plotting.show_images(
        images, [0, 1, 2], ["a", "b", "c"], predicted=[0, 2, 2], columns=2
    )
    axes = plt.gcf().axes
    assert len(axes) == 4  # 2 x 2 grid, the last one empty
    np.testing.assert_array_equal(
        axes[1].images[0].get_array(), images[1, ..., 0]
    )
    assert axes[1].get_title() == "c\n(b)"
    assert axes[1].title.get_color() == "red"
    assert axes[2].title.get_color() == "green"
    assert not axes[3].images


def test_plot_per_class_bars_are_per_class_accuracy():
    y_true = np.array([0, 0, 1, 1])
    plotting.plot_per_class(
        {"x": np.array([0, 1, 1, 1]), "y": np.array([0, 0, 0, 0])},
        y_true,
        ["a", "b"],
    )
    bars = plt.gcf().axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], [0.5, 1, 1, 0])


def test_load_data_cuts_and_reads_the_bundled_sets():
    arrays = plotting.load_data("bundled:cifar10", None, 30, 20)
    assert arrays["x_train"].shape == (30, 32, 32, 3)
    assert arrays["y_test"].shape == (20,)
    assert plotting.load_data("bundled", None, 5, None)["x_test"].shape == (
        1000,
        28,
        28,
        1,
    )


def test_compile_and_fit_decays_to_zero_over_the_run():
    pytest.importorskip("tensorflow")
    import keras

    arrays = plotting.load_data("bundled:cifar10", None, 64, 32)
    train_ds, test_ds = plotting.pipelines(arrays, batch_size=32)
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )
    history = plotting.compile_and_fit(
        model, train_ds, test_ds, 2, 1e-3, verbose=0
    )
    assert len(history.history["val_accuracy"]) == 2
    optimizer = model.optimizer
    assert int(optimizer.iterations) == 4
    assert float(optimizer.learning_rate) == pytest.approx(0.0, abs=1e-9)
    assert plotting.accuracy(model, test_ds) == pytest.approx(
        history.history["val_accuracy"][-1]
    )


def test_missing_matplotlib_names_the_examples_extra(monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    module = importlib.reload(plotting)  # importing needs no matplotlib
    with pytest.raises(ImportError, match=r"keras-kd\[examples\]"):
        module.plot_confusion([0], [0], ["a"])
