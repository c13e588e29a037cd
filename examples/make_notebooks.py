"""Writes the tutorial notebooks in this folder from the Python strings below.

The notebooks are generated, not edited by hand, so that a change to a
tutorial is a reviewable diff of this file. They are stored without outputs.

    python examples/make_notebooks.py           # (re)write examples/*.ipynb
    python examples/make_notebooks.py --check   # exit 1 if a notebook is stale

Every notebook opens with an "Open in Colab" badge and a Colab-only install
cell, runs top to bottom on Colab with the real settings, and has a smoke mode
(`KERAS_KD_SMOKE=1`: a few hundred images, one or two short epochs) that
`tests/test_notebooks.py` executes offline. `KERAS_KD_DATA` picks the data: a
TensorFlow Datasets name (default `cifar10`, downloaded on Colab), a local
`.npz` archive, or `bundled` (the Fashion-MNIST subset shipped with keras_kd);
`KERAS_KD_DATA_DIR` is a tfds data directory, e.g. one written offline by
`keras_kd.data.prepare_tfds_directory`.
"""

import argparse
import pathlib
import sys
import textwrap

import nbformat

# The GitHub organisation or user that hosts keras_kd. Placeholder: replace
# OWNER once the repository is public, then rerun this script.
GITHUB_OWNER = "OWNER"
REPOSITORY = f"https://github.com/{GITHUB_OWNER}/keras_kd"
COLAB_URL = (
    f"https://colab.research.google.com/github/{GITHUB_OWNER}/keras_kd/blob/main/"
    "examples/{file}"
)
BADGE = "https://colab.research.google.com/assets/colab-badge.svg"

HERE = pathlib.Path(__file__).resolve().parent


def md(text):
    return ("markdown", textwrap.dedent(text).strip("\n"))


def code(text):
    return ("code", textwrap.dedent(text).strip("\n"))


def header(file, title, body):
    badge = f"[![Open In Colab]({BADGE})]({COLAB_URL.format(file=file)})"
    return md(f"# {title}\n\n{badge}\n\n" + textwrap.dedent(body).strip("\n"))


def install(extra_packages=""):
    packages = f'"keras-kd[data] @ git+{REPOSITORY}"'
    if extra_packages:
        packages += " " + extra_packages
    return code(
        f"""
        # Colab only: install keras_kd (CI and local runs use the installed one).
        import sys

        IN_COLAB = "google.colab" in sys.modules
        if IN_COLAB:
            %pip install -q {packages}
        """
    )


SETTINGS = code(
    """
    import os

    os.environ.setdefault("KERAS_BACKEND", "tensorflow")

    # Smoke mode (CI): a few hundred images and one or two short epochs, to check
    # that every cell runs. Leave it unset for the real run.
    SMOKE = os.environ.get("KERAS_KD_SMOKE") == "1"
    # The data: a TensorFlow Datasets name (downloaded on first use), a local .npz
    # archive with x_train, y_train, x_test, y_test (offline), or "bundled" for the
    # Fashion-MNIST subset shipped inside keras_kd (offline, 28x28 grey images).
    DATA = os.environ.get("KERAS_KD_DATA") or "cifar10"
    # A tfds data directory, for a tfds name. Offline, make one from a .npz with
    # keras_kd.data.prepare_tfds_directory(npz, DATA_DIR, "cifar10_local").
    DATA_DIR = os.environ.get("KERAS_KD_DATA_DIR") or None
    SEED = 0
    print(f"SMOKE={SMOKE}  DATA={DATA!r}  DATA_DIR={DATA_DIR!r}")
    """
)

IMPORTS = code(
    """
    import keras
    import matplotlib.pyplot as plt
    import numpy as np
    import tensorflow as tf

    import keras_kd
    from keras_kd import losses

    tf.get_logger().setLevel("ERROR")  # hide tf.function retracing and SavedModel notices
    GPUS = tf.config.list_physical_devices("GPU")
    print(f"keras {keras.__version__}, tensorflow {tf.__version__}, keras_kd {keras_kd.__version__}")
    print("GPU:", GPUS or "none. On Colab: Runtime > Change runtime type > T4 GPU.")
    keras.utils.set_random_seed(SEED)
    """
)

LOAD_DATA = code(
    """
    # keras_kd.data: the same loader for a tfds name, a local .npz or the bundled data.
    arrays = keras_kd.data.load_arrays(None if DATA == "bundled" else DATA, data_dir=DATA_DIR)
    x_train, y_train = arrays["x_train"][:TRAIN_IMAGES], arrays["y_train"][:TRAIN_IMAGES]
    x_test, y_test = arrays["x_test"][:TEST_IMAGES], arrays["y_test"][:TEST_IMAGES]
    class_names = list(arrays["class_names"])
    NUM_CLASSES = len(class_names)
    INPUT_SHAPE = x_train.shape[1:]
    print(f"{len(x_train)} train / {len(x_test)} test images of {INPUT_SHAPE}, {NUM_CLASSES} classes")

    # Per-channel statistics of the training images, then seeded tf.data pipelines:
    # shuffle, augment (pad-4 random crop + flip), batch, normalise, prefetch.
    mean, std = keras_kd.data.channel_stats(x_train)
    train_ds = keras_kd.data.make_dataset(
        x_train, y_train, batch_size=BATCH_SIZE, training=True, augment="crop_flip",
        mean=mean, std=std, seed=SEED)
    test_ds = keras_kd.data.make_dataset(x_test, y_test, batch_size=256, mean=mean, std=std)
    show_images(x_train[:16], y_train[:16], class_names)
    """
)

PLOT_HELPERS = code(
    '''
    # Plotting helpers (matplotlib).


    def show_images(images, labels, class_names, predicted=None, columns=8):
        """A grid of uint8 images titled by label (and prediction: green right, red wrong)."""
        rows = -(-len(images) // columns)
        fig, axes = plt.subplots(rows, columns, figsize=(1.6 * columns, 1.8 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i, (ax, image) in enumerate(zip(axes.flat, images)):
            grey = image.shape[-1] == 1
            ax.imshow(image.squeeze(-1) if grey else image, cmap="gray" if grey else None)
            title = str(class_names[labels[i]])
            color = "black"
            if predicted is not None:
                color = "green" if predicted[i] == labels[i] else "red"
                title = f"{class_names[predicted[i]]}\\n({title})"
            ax.set_title(title, fontsize=8, color=color)
        plt.tight_layout()
        plt.show()


    def plot_histories(histories, metrics=("val_accuracy", "loss"), reference=None):
        """Training curves of several runs, one panel per metric."""
        fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 3.6), squeeze=False)
        for ax, metric in zip(axes.flat, metrics):
            for label, history in histories.items():
                values = history.history.get(metric)
                if not values and metric.endswith("student_loss"):
                    # A model trained alone logs its task loss as `loss`.
                    values = history.history.get(metric.replace("student_loss", "loss"))
                if values:
                    epochs = np.arange(1, len(values) + 1)
                    ax.plot(epochs, values, marker="o", markersize=3, label=label)
            if reference is not None and metric in reference:
                ax.axhline(reference[metric], color="gray", linestyle="--", label="teacher")
            ax.set_xlabel("epoch")
            ax.set_title("task loss (student_loss; alone: loss)" if metric == "student_loss" else metric)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        plt.tight_layout()
        plt.show()


    def plot_confusion(y_true, y_pred, class_names, title):
        """Row-normalised confusion matrix."""
        n = len(class_names)
        counts = np.bincount(n * np.asarray(y_true) + np.asarray(y_pred), minlength=n * n).reshape(n, n)
        rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        fig, ax = plt.subplots(figsize=(6, 5))
        image = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
        ax.set_xticks(range(n), class_names, rotation=60, ha="right", fontsize=8)
        ax.set_yticks(range(n), class_names, fontsize=8)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(title)
        fig.colorbar(image, ax=ax)
        plt.tight_layout()
        plt.show()


    def per_layer(history, prefix, labels):
        """{label: [value per epoch]} of the logged per-layer values `prefix + label`."""
        return {label: history.history[prefix + label] for label in labels}
    '''
)

COMPILE_FIT = code(
    """
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    steps_per_epoch = -(-len(x_train) // BATCH_SIZE)


    def compile_and_fit(model, epochs, callbacks=()):
        \"\"\"Adam with cosine decay to zero, the same recipe for every model.\"\"\"
        schedule = keras.optimizers.schedules.CosineDecay(
            LEARNING_RATE, decay_steps=max(1, epochs * steps_per_epoch))
        model.compile(optimizer=keras.optimizers.Adam(schedule), loss=ce, metrics=["accuracy"])
        return model.fit(train_ds, epochs=epochs, validation_data=test_ds,
                         callbacks=list(callbacks), verbose=VERBOSE, shuffle=False)


    def accuracy(model):
        model.compile(loss=ce, metrics=["accuracy"])
        return model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"]
    """
)


def train_or_load_teacher(architecture, builder):
    return code(
        f"""
        # Train the teacher, or load it if an earlier run saved it (KERAS_KD_TEACHER: your own file).
        TEACHER_PATH = os.environ.get("KERAS_KD_TEACHER") or (
            f"teacher_{architecture}_{{os.path.basename(DATA).split('.')[0]}}_{{'smoke' if SMOKE else 'full'}}.keras")
        if os.path.exists(TEACHER_PATH):
            teacher = keras.saving.load_model(TEACHER_PATH)
            teacher_history = None
            print("loaded", TEACHER_PATH)
        else:
            teacher = {builder}
            teacher_history = compile_and_fit(teacher, TEACHER_EPOCHS)
            teacher.save(TEACHER_PATH)
        teacher_accuracy = accuracy(teacher)
        print(f"teacher: {{teacher.count_params():,}} parameters, test accuracy {{teacher_accuracy:.4f}}")
        """
    )


# --- 01 quickstart -------------------------------------------------------------------


def quickstart():
    file = "01_quickstart.ipynb"
    return file, [
        header(
            file,
            "Quickstart: distil a CNN into a 16x smaller one",
            """
            Train a teacher CNN on CIFAR-10, then train a 16x smaller student twice with
            the same recipe: alone, and distilled from the teacher with
            `keras_kd.losses.LogitsDistillation` (Hinton et al. 2015: `T^2 * KL` between
            the softened class probabilities). Compare the two, look at the distilled
            student's mistakes, and export it to an int8 TFLite model.

            **You will learn:** `keras_kd.data` input pipelines; `keras_kd.Distiller`
            (it is a `keras.Model`: `compile`, `fit`, `evaluate`); how the distillation
            terms are logged; `keras_kd.export.export_student`.

            **Run time:** about 15-20 minutes on a Colab T4 GPU (an estimate, not a
            measurement); choose *Runtime > Change runtime type > T4 GPU* first. On a CPU,
            set `KERAS_KD_SMOKE=1` for a one-minute check that everything runs.

            **Offline:** set `KERAS_KD_DATA` to a local `.npz` archive (`x_train, y_train,
            x_test, y_test`, uint8 images) or to `bundled` (the Fashion-MNIST subset inside
            keras_kd), or `KERAS_KD_DATA_DIR` to a tfds data directory made with
            `keras_kd.data.prepare_tfds_directory`. The command line does the same with
            smaller networks: `keras-kd --data cifar10 --methods kd`.
            """,
        ),
        install(),
        SETTINGS,
        IMPORTS,
        code(
            """
            if SMOKE:
                TRAIN_IMAGES, TEST_IMAGES = 256, 128
                TEACHER_EPOCHS = EPOCHS = 1
                BATCH_SIZE, VERBOSE = 64, 2
            else:
                TRAIN_IMAGES = TEST_IMAGES = None  # all 50,000 / 10,000
                TEACHER_EPOCHS = EPOCHS = 30
                BATCH_SIZE, VERBOSE = (128 if GPUS else 64), 1
            LEARNING_RATE = 2e-3
            TEACHER_WIDTHS, STUDENT_WIDTHS = (64, 128, 256), (16, 32, 64)
            """
        ),
        PLOT_HELPERS,
        md("## Data\n\n`keras_kd.data` turns any of the sources into batched, normalised `tf.data` pipelines."),
        LOAD_DATA,
        md(
            """
            ## The teacher

            `keras_kd.models.conv_net`: three stages of two 3x3 conv + BN + ReLU. Any
            functional Keras model works as a teacher (see notebook 04).
            """
        ),
        COMPILE_FIT,
        train_or_load_teacher(
            "conv_net",
            'keras_kd.models.conv_net(INPUT_SHAPE, NUM_CLASSES, TEACHER_WIDTHS, name="teacher")'
        ),
        md("## The student alone\n\nThe baseline: the small network trained on the labels only."),
        code(
            """
            keras.utils.set_random_seed(SEED + 1)  # the same initial student in both runs
            alone = keras_kd.models.conv_net(INPUT_SHAPE, NUM_CLASSES, STUDENT_WIDTHS, name="student_alone")
            alone_history = compile_and_fit(alone, EPOCHS)
            """
        ),
        md(
            """
            ## The student distilled

            The `Distiller` runs the frozen teacher and the student once per step and
            trains the student on `task loss + 1.0 * T^2 * KL(teacher || student)`.
            `fit` logs `loss` (the total), `student_loss` (the task loss) and
            `logits_distillation_loss` separately, in the progress bar, in the history
            and in TensorBoard.
            """
        ),
        code(
            """
            keras.utils.set_random_seed(SEED + 1)
            student = keras_kd.models.conv_net(INPUT_SHAPE, NUM_CLASSES, STUDENT_WIDTHS, name="student")
            distiller = keras_kd.Distiller(teacher, student, [losses.LogitsDistillation()])
            distilled_history = compile_and_fit(distiller, EPOCHS)
            print(sorted(distilled_history.history))
            """
        ),
        md("## Alone vs distilled"),
        code(
            """
            plot_histories(
                {"student alone": alone_history, "student distilled (KD)": distilled_history},
                metrics=("val_accuracy", "accuracy", "student_loss"),
                reference={"val_accuracy": teacher_accuracy})
            """
        ),
        code(
            """
            results = {
                "teacher": (teacher.count_params(), teacher_accuracy),
                "student alone": (alone.count_params(), accuracy(alone)),
                "student distilled": (distiller.student.count_params(), accuracy(distiller.student)),
            }
            for name, (params, acc) in results.items():
                print(f"{name:18s} {params:>9,} parameters   test accuracy {acc:.4f}")
            """
        ),
        md("Where does the distilled student go wrong? A confusion matrix and a grid of predictions."),
        code(
            """
            predicted = np.argmax(distiller.student.predict(test_ds, verbose=0), axis=-1)
            plot_confusion(y_test, predicted, class_names, "distilled student")
            show_images(x_test[:24], y_test[:24], class_names, predicted=predicted[:24])
            """
        ),
        md(
            """
            ## Export the student to TFLite

            `distiller.student` is a plain Keras model: no teacher, no connectors.
            `export_student` writes a full-integer (int8) TFLite model calibrated on
            training batches, loads it back and compares it with the Keras student.
            The model takes normalised images: `(image / 255 - mean) / std`.
            """
        ),
        code(
            """
            from keras_kd.export import export_student, load_interpreter, tflite_predict

            calibration = keras_kd.data.make_dataset(x_train, y_train, batch_size=32, mean=mean, std=std)
            result = export_student(
                distiller, "student_int8.tflite", format="tflite_int8",
                representative_data=calibration, num_calibration_batches=2 if SMOKE else 100,
                overwrite=True)
            interpreter = load_interpreter(result.path)
            images, labels = next(iter(test_ds))
            tflite_predicted = tflite_predict(interpreter, images.numpy()).argmax(-1)
            print(f"int8 TFLite: {result.size_bytes / 1024:.0f} KiB, accuracy on one test batch "
                  f"{np.mean(tflite_predicted == labels.numpy()):.4f}")
            distiller.student.save("student.keras")
            """
        ),
        md(
            """
            ## Next

            - `02_activation_boundaries.ipynb`: transfer where the teacher's neurons switch
              on and off, with the two-stage schedule.
            - `03_neuron_selectivity.ipynb`: match the distribution of activation maps (MMD).
            - `04_bring_your_own_models.ipynb`: distil between keras-cv / KerasHub models.
            """
        ),
    ]


# --- 02 activation boundaries ---------------------------------------------------------


def activation_boundaries():
    file = "02_activation_boundaries.ipynb"
    return file, [
        header(
            file,
            "Activation boundaries: transfer where neurons switch on",
            """
            Heo et al. (AAAI 2019) transfer the *activation boundaries* of the teacher's
            hidden neurons: where each neuron switches between on (`> 0`) and off. The
            student's **pre-activation** `s` (before the ReLU), mapped to the teacher's
            width by a connector `r` (1x1 conv + BN), is pushed to the same side of zero
            as the teacher's pre-activation `t`, with a margin `mu`:

            `L = || rho(t) * relu(mu - r(s)) + (1 - rho(t)) * relu(mu + r(s)) ||^2`, where `rho(t) = 1[t > 0]`.

            Training has two stages: first the AB loss alone initialises the student
            (and its connectors), then the student trains on the task (here with KD) and
            AB is switched off. `boundary_agreement` measures the real objective: the
            fraction of teacher neurons whose on/off state the student reproduces.

            **You will learn:** pre-activation taps; connectors for mismatched widths;
            `keras_kd.callbacks.ActivationBoundarySchedule`; per-layer logs and
            TensorBoard.

            **Run time:** about 25 minutes on a Colab T4 GPU (an estimate, not a
            measurement). `KERAS_KD_SMOKE=1` runs in about a minute on a CPU.
            """,
        ),
        install(),
        SETTINGS,
        IMPORTS,
        code(
            """
            if SMOKE:
                TRAIN_IMAGES, TEST_IMAGES = 256, 128
                TEACHER_EPOCHS, EPOCHS, AB_INIT_EPOCHS = 1, 2, 1
                TEACHER_WIDTHS, TEACHER_BLOCKS = (8, 16, 32), 1
                STUDENT_WIDTHS, STUDENT_BLOCKS = (4, 8, 16), 1
                BATCH_SIZE, VERBOSE = 64, 2
            else:
                TRAIN_IMAGES = TEST_IMAGES = None
                # AB initialisation for 1/8 of the student's epochs (RepDistiller: 30 of 240).
                TEACHER_EPOCHS, EPOCHS, AB_INIT_EPOCHS = 40, 40, 5
                TEACHER_WIDTHS, TEACHER_BLOCKS = (32, 64, 128), 3  # a 2x wide ResNet-20
                STUDENT_WIDTHS, STUDENT_BLOCKS = (16, 32, 64), 1   # ResNet-8
                BATCH_SIZE, VERBOSE = (128 if GPUS else 64), 1
            LEARNING_RATE = 2e-3
            """
        ),
        PLOT_HELPERS,
        md("## Data"),
        LOAD_DATA,
        md("## The teacher: a CIFAR ResNet"),
        COMPILE_FIT,
        train_or_load_teacher(
            "resnet",
            "keras_kd.models.resnet(INPUT_SHAPE, NUM_CLASSES, TEACHER_WIDTHS, TEACHER_BLOCKS, "
            'name="teacher")'
        ),
        md(
            """
            ## Pre-activation taps

            AB reads the tensor *before* the ReLU. In `keras_kd.models.resnet` the last
            block of stage `i` ends in `stage{i}_add` (the residual sum) then
            `stage{i}_relu`. Naming the ReLU with `teacher_tap="preactivation"` (AB's
            default) reads its input, which is the `Add` output, the tap of the official
            code. Both spellings give the same tensor:
            """
        ),
        code(
            """
            from keras_kd.taps import Tap, build_extractor

            for layer in teacher.layers:
                if layer.name.startswith("stage3") and not layer.name.startswith("stage3_block"):
                    print(f"{layer.name:14s} {type(layer).__name__:20s} {layer.output.shape}")
            probe = build_extractor(teacher, [Tap("stage3_relu", "preactivation"), Tap("stage3_add", "output")])
            images, _ = next(iter(test_ds))
            _, via_relu, via_add = probe(images[:8], training=False)
            print("same tensor:", np.allclose(via_relu, via_add))
            """
        ),
        md("## The student alone"),
        code(
            """
            keras.utils.set_random_seed(SEED + 1)
            alone = keras_kd.models.resnet(INPUT_SHAPE, NUM_CLASSES, STUDENT_WIDTHS, STUDENT_BLOCKS, name="student_alone")
            alone_history = compile_and_fit(alone, EPOCHS)
            """
        ),
        md(
            """
            ## Connectors

            One AB pair per stage, shallowest first (pair weights `1/4, 1/2, 1` as in the
            official code). The student is narrower, so each pair gets a connector: a
            1x1 conv + BN from the student's width to the teacher's. Connectors train
            with the student and are never part of `distiller.student`.
            """
        ),
        code(
            """
            TAPS = [f"stage{i}_relu" for i in (1, 2, 3)]
            keras.utils.set_random_seed(SEED + 1)
            student = keras_kd.models.resnet(INPUT_SHAPE, NUM_CLASSES, STUDENT_WIDTHS, STUDENT_BLOCKS, name="student")
            ab = losses.ActivationBoundary(TAPS, TAPS)  # margin 1; per-element mean, weight 1 (preset="paper": the official sum, 3e-3)
            kd = losses.LogitsDistillation()
            distiller = keras_kd.Distiller(teacher, student, [ab, kd])
            print("pair weights:", ab.pair_weights)
            for connector in ab.connectors:
                print(f"{connector.name}: {connector.count_params():,} parameters")
            print(f"student: {distiller.student.count_params():,} parameters (no connector inside)")
            """
        ),
        md(
            """
            ## Two-stage training

            `ActivationBoundarySchedule(AB_INIT_EPOCHS)`: for the first epochs only AB
            trains (the task loss and KD are weighted 0: expect chance-level accuracy);
            then AB is weighted 0 and the task loss + KD train. The weights are
            variables, so the switch needs no recompilation. `keras.callbacks.TensorBoard`
            records every term, per layer too.
            """
        ),
        code(
            """
            LOG_DIR = "logs/activation_boundaries"
            schedule = keras_kd.callbacks.ActivationBoundarySchedule(AB_INIT_EPOCHS, verbose=1)
            tensorboard = keras.callbacks.TensorBoard(LOG_DIR)
            distilled_history = compile_and_fit(distiller, EPOCHS, callbacks=[schedule, tensorboard])
            """
        ),
        md(
            """
            ## Boundary agreement per layer

            The fraction of teacher neurons (per position and channel) on the same side
            of zero in the student, per tapped layer, on the test images. 0.5 is chance.
            The shaded epochs are the AB initialisation.
            """
        ),
        code(
            """
            fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
            for ax, prefix, title in (
                (axes[0], "val_boundary_agreement_", "boundary agreement (test)"),
                (axes[1], "val_activation_boundary_", "AB loss per layer (test, unweighted)"),
            ):
                for label, values in per_layer(distilled_history, prefix, TAPS).items():
                    ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
                ax.axvspan(0.5, AB_INIT_EPOCHS + 0.5, color="orange", alpha=0.15, label="AB initialisation")
                ax.set_xlabel("epoch")
                ax.set_title(title)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            axes[1].set_yscale("log")
            plt.tight_layout()
            plt.show()
            """
        ),
        md("## Alone vs AB + KD"),
        code(
            """
            plot_histories({"student alone": alone_history, "AB, then task + KD": distilled_history},
                           metrics=("val_accuracy", "student_loss"),
                           reference={"val_accuracy": teacher_accuracy})
            print(f"teacher {teacher_accuracy:.4f}   student alone {accuracy(alone):.4f}   "
                  f"AB + KD {accuracy(distiller.student):.4f}")
            """
        ),
        code(
            """
            predicted = np.argmax(distiller.student.predict(test_ds, verbose=0), axis=-1)
            plot_confusion(y_test, predicted, class_names, "student distilled with AB + KD")
            """
        ),
        md("On Colab, browse every logged term in TensorBoard:"),
        code(
            """
            if IN_COLAB:
                %load_ext tensorboard
                %tensorboard --logdir logs
            else:
                print("TensorBoard logs in", os.path.abspath(LOG_DIR), "- run: tensorboard --logdir logs")
            """
        ),
    ]


# --- 03 neuron selectivity transfer ----------------------------------------------------


def neuron_selectivity():
    file = "03_neuron_selectivity.ipynb"
    return file, [
        header(
            file,
            "Neuron selectivity transfer: match the distribution of activation maps",
            """
            Huang & Wang (2017) treat each channel's spatial activation map, L2-normalised,
            as a sample of what the network's neurons are selective for, and match the
            teacher's and the student's distributions of those samples with the squared
            Maximum Mean Discrepancy. Channel counts may differ; no connector is needed.

            `MMD^2 = mean k(t_i, t_i') + mean k(s_j, s_j') - 2 mean k(t_i, s_j)` with a
            **linear** `k(x, y) = x.y`, **polynomial** `(x.y + c)^d` (the paper's choice,
            `d = 2, c = 0`) or **Gaussian** `exp(-||x - y||^2 / 2 sigma^2)` kernel.

            **You will learn:** the three kernels side by side; NST alone and with KD;
            per-layer MMD logs.

            **Run time:** about 35 minutes on a Colab T4 GPU (an estimate, not a
            measurement): one teacher and five students. `KERAS_KD_SMOKE=1` runs in
            about a minute on a CPU.
            """,
        ),
        install(),
        SETTINGS,
        IMPORTS,
        code(
            """
            if SMOKE:
                TRAIN_IMAGES, TEST_IMAGES = 256, 128
                TEACHER_EPOCHS = EPOCHS = 1
                TEACHER_WIDTHS, TEACHER_BLOCKS = (8, 16, 32), 1
                STUDENT_WIDTHS, STUDENT_BLOCKS = (4, 8, 16), 1
                BATCH_SIZE, VERBOSE = 64, 2
            else:
                TRAIN_IMAGES = TEST_IMAGES = None
                TEACHER_EPOCHS, EPOCHS = 40, 30
                TEACHER_WIDTHS, TEACHER_BLOCKS = (32, 64, 128), 3  # a 2x wide ResNet-20
                STUDENT_WIDTHS, STUDENT_BLOCKS = (16, 32, 64), 1   # ResNet-8
                BATCH_SIZE, VERBOSE = (128 if GPUS else 64), 1
            LEARNING_RATE = 2e-3
            # The weight lambda of the NST term. 50 is the official code's value for the
            # polynomial kernel; the MMD of each kernel has its own scale, so tune it per kernel.
            NST_WEIGHTS = {"linear": 50.0, "polynomial": 50.0, "gaussian": 50.0}
            """
        ),
        PLOT_HELPERS,
        md(
            """
            ## The kernels on random feature maps

            `neuron_selectivity_loss(teacher, student, kernel)` is a pure function on
            tensors `(B, H, W, C)`. It is zero when the student's maps are the teacher's,
            stays small for a subset of the teacher's channels (channel counts need not
            match), and grows as the maps drift apart.
            """
        ),
        code(
            """
            from keras_kd.losses import neuron_selectivity_loss

            rng = np.random.default_rng(SEED)
            t = rng.normal(size=(4, 8, 8, 32)).astype("float32")
            cases = {
                "same maps": t,
                "half the channels": t[..., ::2],
                "noisier maps": t + rng.normal(scale=2.0, size=t.shape).astype("float32"),
                "unrelated maps": rng.normal(size=(4, 8, 8, 16)).astype("float32") ** 2,
            }
            for kernel in ("linear", "polynomial", "gaussian"):
                values = [float(neuron_selectivity_loss(t, s, kernel)) for s in cases.values()]
                print(f"{kernel:10s}", "  ".join(f"{c}: {v:.4f}" for c, v in zip(cases, values)))
            """
        ),
        md("## Data and teacher"),
        LOAD_DATA,
        COMPILE_FIT,
        train_or_load_teacher(
            "resnet",
            "keras_kd.models.resnet(INPUT_SHAPE, NUM_CLASSES, TEACHER_WIDTHS, TEACHER_BLOCKS, "
            'name="teacher")'
        ),
        md(
            """
            ## Students

            One NST pair per stage, each read before the stage's final ReLU (the official
            tap), summed as in RepDistiller. The same initial student for every run.
            """
        ),
        code(
            """
            TAPS = [f"stage{i}_relu" for i in (1, 2, 3)]


            def new_student(name):
                keras.utils.set_random_seed(SEED + 1)
                return keras_kd.models.resnet(INPUT_SHAPE, NUM_CLASSES, STUDENT_WIDTHS, STUDENT_BLOCKS, name=name)


            def nst(kernel):
                return losses.NeuronSelectivityTransfer(
                    TAPS, TAPS, kernel=kernel, teacher_tap="preactivation", student_tap="preactivation")


            histories, students = {}, {}
            alone = new_student("student_alone")
            histories["alone"] = compile_and_fit(alone, EPOCHS)
            students["alone"] = alone
            """
        ),
        md("### NST alone, with each kernel"),
        code(
            """
            for kernel in ("linear", "polynomial", "gaussian"):
                print(f"--- NST, {kernel} kernel")
                distiller = keras_kd.Distiller(
                    teacher, new_student(f"student_nst_{kernel}"), [nst(kernel)],
                    distillation_loss_weights=[NST_WEIGHTS[kernel]])
                histories[f"NST {kernel}"] = compile_and_fit(distiller, EPOCHS)
                students[f"NST {kernel}"] = distiller.student
            """
        ),
        md("### NST (polynomial) with KD"),
        code(
            """
            distiller = keras_kd.Distiller(
                teacher, new_student("student_nst_kd"),
                [nst("polynomial"), losses.LogitsDistillation()],
                distillation_loss_weights=[NST_WEIGHTS["polynomial"], 1.0])
            histories["NST polynomial + KD"] = compile_and_fit(distiller, EPOCHS)
            students["NST polynomial + KD"] = distiller.student
            """
        ),
        md(
            """
            ## MMD per layer over training

            The unweighted MMD^2 of each layer pair on the test images, one panel per
            kernel (the kernels' scales differ). Deeper layers are where the student
            has the least capacity to copy the teacher.
            """
        ),
        code(
            """
            kernels = ("linear", "polynomial", "gaussian")
            fig, axes = plt.subplots(1, 3, figsize=(15, 3.6))
            for ax, kernel in zip(axes, kernels):
                for label, values in per_layer(histories[f"NST {kernel}"], "val_neuron_selectivity_", TAPS).items():
                    ax.plot(np.arange(1, len(values) + 1), values, marker="o", markersize=3, label=label)
                ax.set_title(f"{kernel} kernel: MMD^2 per layer (test)")
                ax.set_xlabel("epoch")
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            plt.tight_layout()
            plt.show()
            """
        ),
        md("## Accuracy"),
        code(
            """
            plot_histories(histories, metrics=("val_accuracy", "student_loss"),
                           reference={"val_accuracy": teacher_accuracy})
            final = {name: accuracy(model) for name, model in students.items()}
            print(f"{'teacher':22s} {teacher_accuracy:.4f}")
            for name, value in final.items():
                print(f"{name:22s} {value:.4f}")
            """
        ),
        md("Per-class accuracy of the student alone and with NST + KD:"),
        code(
            """
            fig, ax = plt.subplots(figsize=(10, 3.6))
            width = 0.4
            for offset, name in ((-width / 2, "alone"), (width / 2, "NST polynomial + KD")):
                predicted = np.argmax(students[name].predict(test_ds, verbose=0), axis=-1)
                per_class = [np.mean(predicted[y_test == c] == c) if np.any(y_test == c) else 0.0
                             for c in range(NUM_CLASSES)]
                ax.bar(np.arange(NUM_CLASSES) + offset, per_class, width, label=name)
            ax.set_xticks(range(NUM_CLASSES), class_names, rotation=30, ha="right")
            ax.set_ylabel("accuracy")
            ax.legend()
            plt.tight_layout()
            plt.show()
            """
        ),
    ]


# --- 04 bring your own models -----------------------------------------------------------


def bring_your_own_models():
    file = "04_bring_your_own_models.ipynb"
    return file, [
        header(
            file,
            "Bring your own models: keras-cv and KerasHub backbones",
            """
            keras_kd distils between any two *functional* Keras models. This notebook
            builds teachers and students from library backbones **without presets**
            (random initialisation, custom sizes), finds the layers to tap by inspecting
            the models, lets connectors bridge mismatched widths, and augments in the
            input pipeline with core Keras `RandAugment`, `MixUp` and `CutMix`.

            **keras-cv or KerasHub?** keras-cv (0.9.0) is no longer developed; its
            successor for vision backbones is KerasHub. Both work with keras_kd (nested
            backbones are tapped with `"backbone_name/layer_name"`). **We recommend
            KerasHub** for new code: it is maintained, tracks new Keras releases and has
            the same backbones (note its pip dependencies pull in `tensorflow-text` and
            so the full `tensorflow` wheel). keras-cv is shown because existing code
            uses it. Each section runs only if its library is installed.

            **You will learn:** wrapping a backbone into a classifier; choosing taps from
            `model.layers`; `FitNetsHint` regressors and KD; augmentation with soft
            (mixed) labels.

            **Run time:** about 45 minutes on a Colab T4 GPU (an estimate, not a
            measurement): two teachers and four students. `KERAS_KD_SMOKE=1` runs in a
            couple of minutes on a CPU.
            """,
        ),
        install("keras-cv keras-hub"),
        SETTINGS,
        IMPORTS,
        code(
            """
            import warnings

            warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm, imported by kagglehub
            try:
                import keras_cv
            except ImportError:  # pip install keras-cv
                keras_cv = None
            try:
                import keras_hub
            except ImportError:  # pip install keras-hub
                keras_hub = None
            print("keras-cv:", keras_cv.__version__ if keras_cv else "not installed")
            print("KerasHub:", keras_hub.__version__ if keras_hub else "not installed")

            if SMOKE:
                TRAIN_IMAGES, TEST_IMAGES = 256, 128
                TEACHER_EPOCHS = EPOCHS = 1
                TEACHER_BLOCKS = (1, 1, 1)
                IMAGE_SIZE, BATCH_SIZE, VERBOSE = 32, 64, 2
            else:
                TRAIN_IMAGES = TEST_IMAGES = None
                TEACHER_EPOCHS = EPOCHS = 20
                TEACHER_BLOCKS = (2, 2, 2)
                # The backbones' ImageNet stems downsample 4x at once: upscale CIFAR's 32x32.
                IMAGE_SIZE, BATCH_SIZE, VERBOSE = 64, (128 if GPUS else 64), 1
            LEARNING_RATE = 2e-3
            """
        ),
        PLOT_HELPERS,
        md(
            """
            ## Data with RandAugment, MixUp and CutMix

            `keras_kd.data.make_dataset` shuffles, crops, flips and batches; here it stops
            before normalising (no `mean`/`std`) so that `keras.layers.RandAugment` sees
            pixels in `[0, 1]`. Then each batch is mixed with `MixUp` or `CutMix` (one or
            the other at random), which turns the labels into soft one-hot vectors, and
            normalised. The test pipeline gets one-hot labels too, so one loss
            (`CategoricalCrossentropy`) serves both.
            """
        ),
        code(
            """
            arrays = keras_kd.data.load_arrays(None if DATA == "bundled" else DATA, data_dir=DATA_DIR)
            x_train, y_train = arrays["x_train"][:TRAIN_IMAGES], arrays["y_train"][:TRAIN_IMAGES]
            x_test, y_test = arrays["x_test"][:TEST_IMAGES], arrays["y_test"][:TEST_IMAGES]
            if x_train.shape[-1] == 1:  # grey images (e.g. the bundled data): the backbones want RGB
                x_train, x_test = np.repeat(x_train, 3, axis=-1), np.repeat(x_test, 3, axis=-1)
            class_names = list(arrays["class_names"])
            NUM_CLASSES = len(class_names)
            INPUT_SHAPE = x_train.shape[1:]
            mean, std = keras_kd.data.channel_stats(x_train)
            MEAN, STD = mean.astype("float32"), std.astype("float32")

            rand_augment = keras.layers.RandAugment(value_range=(0, 1), num_ops=2, factor=0.5, seed=SEED)
            mixup = keras.layers.MixUp(alpha=0.2, seed=SEED)
            cutmix = keras.layers.CutMix(factor=1.0, seed=SEED)


            def augment_and_normalise(images, labels):
                images = rand_augment(images, training=True)
                batch = {"images": images, "labels": tf.one_hot(labels, NUM_CLASSES)}
                batch = tf.cond(tf.random.uniform(()) < 0.5,
                                lambda: mixup(batch, training=True),
                                lambda: cutmix(batch, training=True))
                return (batch["images"] - MEAN) / STD, batch["labels"]


            train_ds = keras_kd.data.make_dataset(
                x_train, y_train, batch_size=BATCH_SIZE, training=True, augment="crop_flip", seed=SEED,
            ).map(augment_and_normalise, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)
            test_ds = keras_kd.data.make_dataset(x_test, y_test, batch_size=256, mean=mean, std=std).map(
                lambda images, labels: (images, tf.one_hot(labels, NUM_CLASSES)))

            # What the networks see: augmented, mixed images (titled by their largest label weight).
            images, soft_labels = next(iter(train_ds))
            pixels = np.clip((images.numpy()[:16] * STD + MEAN) * 255, 0, 255).astype("uint8")
            show_images(pixels, soft_labels.numpy()[:16].argmax(-1), class_names)
            """
        ),
        code(
            """
            ce = keras.losses.CategoricalCrossentropy(from_logits=True)
            steps_per_epoch = -(-len(x_train) // BATCH_SIZE)


            def compile_and_fit(model, epochs, callbacks=()):
                schedule = keras.optimizers.schedules.CosineDecay(
                    LEARNING_RATE, decay_steps=max(1, epochs * steps_per_epoch))
                model.compile(optimizer=keras.optimizers.Adam(schedule), loss=ce, metrics=["accuracy"])
                return model.fit(train_ds, epochs=epochs, validation_data=test_ds,
                                 callbacks=list(callbacks), verbose=VERBOSE, shuffle=False)


            def accuracy(model):
                model.compile(loss=ce, metrics=["accuracy"])
                return model.evaluate(test_ds, verbose=0, return_dict=True)["accuracy"]
            """
        ),
        md(
            """
            ## From a backbone to a classifier, and choosing taps

            A backbone maps images to feature maps. Wrap it in a functional model with a
            resizing layer, pooling and a `logits` layer; the backbone stays a nested
            model whose layers keras_kd reaches as `"<backbone name>/<layer name>"`.

            To choose taps, list the backbone's layers: residual networks end each block
            in an `Add` (the pre-activation the official AB/NST code taps) followed by a
            ReLU. `stage_ends` keeps the last `Add` at each resolution, so teacher and
            student taps pair up by resolution even when their depths differ.
            """
        ),
        code(
            '''
            def classifier(backbone, name):
                inputs = keras.Input(INPUT_SHAPE, name="image")
                x = keras.layers.Resizing(IMAGE_SIZE, IMAGE_SIZE, name="resize")(inputs)
                x = backbone(x)
                x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
                outputs = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
                return keras.Model(inputs, outputs, name=name)


            def show_block_ends(backbone):
                """Prints each residual block's `Add` (pre-activation) and its output activation."""
                print(f"{backbone.name}: {len(backbone.layers)} layers, {backbone.count_params():,} parameters")
                for layer in backbone.layers:
                    if isinstance(layer, keras.layers.Add) or layer.name.endswith("_out"):
                        print(f"  {layer.name:28s} {type(layer).__name__:11s} {layer.output.shape}")


            def stage_ends(backbone):
                """{(H, W): (name, channels)} of the last `Add` layer at each resolution."""
                ends = {}
                for layer in backbone.layers:
                    if isinstance(layer, keras.layers.Add):
                        shape = layer.output.shape
                        ends[tuple(shape[1:3])] = (layer.name, shape[-1])
                return ends


            def paired_taps(teacher_backbone, student_backbone):
                teacher_ends, student_ends = stage_ends(teacher_backbone), stage_ends(student_backbone)
                pairs = []
                for size in teacher_ends:
                    if size in student_ends:
                        (t_name, t_width), (s_name, s_width) = teacher_ends[size], student_ends[size]
                        print(f"{size}: teacher {t_name} ({t_width} ch) <- student {s_name} ({s_width} ch)")
                        pairs.append((f"{teacher_backbone.name}/{t_name}", f"{student_backbone.name}/{s_name}"))
                return pairs
            '''
        ),
        md(
            """
            The distillation: KD on the logits plus a FitNets hint (Romero et al. 2015) on
            the middle stage, trained jointly as in RepDistiller. The student is narrower,
            so `FitNetsHint` builds a regressor (conv + BN) from the student's width to
            the teacher's; it trains with the student and is not part of
            `distiller.student`.
            """
        ),
        code(
            """
            results, histories = {}, {}


            def run(library, teacher_backbone, student_backbone, alone_backbone):
                print(f"=== {library}")
                teacher = classifier(teacher_backbone, f"{library}_teacher")
                compile_and_fit(teacher, TEACHER_EPOCHS)
                pairs = paired_taps(teacher_backbone, student_backbone)
                hint_teacher, hint_student = pairs[len(pairs) // 2]  # the middle stage
                student = classifier(student_backbone, f"{library}_student")
                distiller = keras_kd.Distiller(teacher, student, [
                    losses.FitNetsHint(hint_teacher, hint_student),
                    losses.LogitsDistillation(),
                ])
                for connector in distiller.get_loss("fitnets_hint").connectors:
                    print(f"connector {connector.name}: {connector.count_params():,} parameters")
                alone = classifier(alone_backbone, f"{library}_student_alone")
                histories[f"{library}: alone"] = compile_and_fit(alone, EPOCHS)
                histories[f"{library}: KD + hint"] = compile_and_fit(distiller, EPOCHS)
                results[library] = {
                    "teacher": (teacher.count_params(), accuracy(teacher)),
                    "student alone": (alone.count_params(), accuracy(alone)),
                    "student distilled": (student.count_params(), accuracy(distiller.student)),
                }
                return distiller
            """
        ),
        md(
            """
            ## keras-cv

            `keras_cv.models.ResNetBackbone` (ResNet v1, bottleneck blocks), built from
            its constructor arguments, no preset. The student has a quarter of the
            teacher's width and one block per stack (keras-cv names these layers
            `v2_stack_*` even in ResNet v1).
            """
        ),
        code(
            """
            def keras_cv_resnet(filters, blocks, name):
                return keras_cv.models.ResNetBackbone(
                    stackwise_filters=list(filters), stackwise_blocks=list(blocks),
                    stackwise_strides=[1, 2, 2], include_rescaling=False,
                    input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), name=name)


            if keras_cv is None:
                print("keras-cv is not installed: skipping (pip install keras-cv).")
            else:
                teacher_filters, student_filters = ((16, 32, 64), (4, 8, 16)) if SMOKE else ((64, 128, 256), (16, 32, 64))
                teacher_backbone = keras_cv_resnet(teacher_filters, TEACHER_BLOCKS, "cv_teacher_backbone")
                show_block_ends(teacher_backbone)
                keras.utils.set_random_seed(SEED + 1)
                student_backbone = keras_cv_resnet(student_filters, (1, 1, 1), "cv_student_backbone")
                keras.utils.set_random_seed(SEED + 1)
                alone_backbone = keras_cv_resnet(student_filters, (1, 1, 1), "cv_alone_backbone")
                cv_distiller = run("keras-cv", teacher_backbone, student_backbone, alone_backbone)
            """
        ),
        md(
            """
            ## KerasHub

            `keras_hub.models.ResNetBackbone` with basic blocks, no preset. KerasHub's
            ResNet requires 64 filters in the stem and the first stack, so the student
            saves its parameters in the deeper stacks (and in depth), and only those
            pairs need a connector.
            """
        ),
        code(
            """
            def keras_hub_resnet(filters, blocks, name):
                return keras_hub.models.ResNetBackbone(
                    input_conv_filters=[64], input_conv_kernel_sizes=[3],
                    stackwise_num_filters=list(filters), stackwise_num_blocks=list(blocks),
                    stackwise_num_strides=[1, 2, 2], block_type="basic_block",
                    use_pre_activation=False, image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), name=name)


            if keras_hub is None:
                print("KerasHub is not installed: skipping (pip install keras-hub).")
            else:
                teacher_filters = (64, 64, 128) if SMOKE else (64, 128, 256)
                teacher_backbone = keras_hub_resnet(teacher_filters, TEACHER_BLOCKS, "hub_teacher_backbone")
                show_block_ends(teacher_backbone)
                keras.utils.set_random_seed(SEED + 1)
                student_backbone = keras_hub_resnet((64, 32, 64), (1, 1, 1), "hub_student_backbone")
                keras.utils.set_random_seed(SEED + 1)
                alone_backbone = keras_hub_resnet((64, 32, 64), (1, 1, 1), "hub_alone_backbone")
                hub_distiller = run("KerasHub", teacher_backbone, student_backbone, alone_backbone)
            """
        ),
        md("## Results"),
        code(
            """
            for library, rows in results.items():
                for name, (params, acc) in rows.items():
                    print(f"{library:9s} {name:18s} {params:>10,} parameters   test accuracy {acc:.4f}")
            if histories:
                plot_histories(histories, metrics=("val_accuracy", "student_loss"))
            """
        ),
        code(
            """
            last = hub_distiller if keras_hub is not None else (cv_distiller if keras_cv is not None else None)
            if last is not None:
                predicted = np.argmax(last.student.predict(test_ds, verbose=0), axis=-1)
                show_images(x_test[:24], y_test[:24], class_names, predicted=predicted[:24])
            """
        ),
        md(
            """
            ## Your own models

            - **Functional models only** for feature losses (hints, AB, NST, AT): a
              subclassed model has no graph to tap (`LogitsDistillation` still works).
            - **Same input** for teacher and student: resize inside the model if needed.
            - **Taps**: print `model.layers` (or `model.summary(expand_nested=True)`),
              pick tensors at the same resolution, prefer the pre-activation for AB and
              NST; an unknown name fails at once with the closest valid names.
            - **Widths**: AB builds 1x1 conv + BN connectors, FitNets conv + BN
              regressors; NST and attention transfer compare distributions and need none.
            """
        ),
    ]


NOTEBOOKS = (quickstart, activation_boundaries, neuron_selectivity, bring_your_own_models)


def build(cells, file):
    notebook = nbformat.v4.new_notebook()
    stem = file.split("_")[0]
    for index, (kind, source) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        notebook.cells.append(make(source, id=f"nb{stem}-{index:02d}"))
    notebook.metadata = {
        "accelerator": "GPU",
        "colab": {"provenance": [], "gpuType": "T4", "toc_visible": True},
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    nbformat.validate(notebook)
    return nbformat.writes(notebook) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if a notebook differs from what this script writes")
    args = parser.parse_args(argv)
    stale = []
    for make in NOTEBOOKS:
        file, cells = make()
        text = build(cells, file)
        path = HERE / file
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(file)
        else:
            path.write_text(text, encoding="utf-8")
            print("wrote", path)
    if stale:
        print("stale (rerun python examples/make_notebooks.py):", ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
