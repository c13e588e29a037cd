# %% [markdown]
# # Bring your own models: keras-cv and KerasHub backbones
#
# keras_kd distils between any two *functional* Keras models. This notebook
# builds teachers and students from library backbones **without presets**
# (random initialisation, custom sizes), finds the layers to tap by inspecting
# the models, lets connectors bridge mismatched widths, and augments in the
# input pipeline with core Keras `RandAugment`, `MixUp` and `CutMix`.
#
# **keras-cv or KerasHub?** keras-cv (0.9.0) is no longer developed; its
# successor for vision backbones is KerasHub. Both work with keras_kd (nested
# backbones are tapped with `"backbone_name/layer_name"`). **We recommend
# KerasHub** for new code: it is maintained, tracks new Keras releases and has
# the same backbones (note its pip dependencies pull in `tensorflow-text` and
# so the full `tensorflow` wheel). keras-cv is shown because existing code
# uses it. Each section runs only if its library is installed.
#
# **You will learn:** wrapping a backbone into a classifier that normalises
# raw pixels itself; choosing taps from `model.layers`; `FitNetsHint`
# regressors and KD, and what the hint's weight does to the total loss;
# augmentation with soft (mixed) labels.
#
# **Run sizes** (`KERAS_KD_MODE`): `full` (default; all of CIFAR-10 upscaled
# to 64x64, 20 epochs, two teachers and six students); `moderate` (3,000
# training and 1,000 test images at 32x32, small backbones, a few epochs, see
# the settings cell); `smoke` (`KERAS_KD_SMOKE=1`: the 400 real CIFAR-10
# images bundled with keras_kd). **The outputs stored in this notebook come
# from one `moderate` run on the full CIFAR-10 archive**: every number and
# curve below is that run's (one seed); at this size, with heavy
# augmentation and three epochs, all models stay weak and distillation's
# effect is within the noise. The point is the mechanics, not the accuracy.
# Data settings as in notebook 01.
#
# <!-- run-time -->

# %%
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

import keras_kd
from keras_kd import losses
from keras_kd import plotting

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm
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

# Run size: "smoke" (CI), "moderate" (the stored outputs) or "full".
MODE = os.environ.get("KERAS_KD_MODE") or (
    "smoke" if os.environ.get("KERAS_KD_SMOKE") == "1" else "full"
)
SMOKE = MODE == "smoke"
DATA = os.environ.get("KERAS_KD_DATA") or (
    "bundled:cifar10" if SMOKE else "cifar10"
)
DATA_DIR = os.environ.get("KERAS_KD_DATA_DIR") or None
SEED = 0
print(f"MODE={MODE}  SMOKE={SMOKE}  DATA={os.path.basename(DATA)!r}")
tf.get_logger().setLevel("ERROR")
GPUS = tf.config.list_physical_devices("GPU")

# %%
LEARNING_RATE = 2e-3
if SMOKE:
    TRAIN_IMAGES, TEST_IMAGES = 256, 100
    TEACHER_EPOCHS = EPOCHS = 1
    TEACHER_BLOCKS = (1, 1, 1)
    IMAGE_SIZE, BATCH_SIZE, VERBOSE = 32, 64, 2
elif MODE == "moderate":
    TRAIN_IMAGES, TEST_IMAGES = 3_000, 1_000
    TEACHER_EPOCHS = EPOCHS = 3
    TEACHER_BLOCKS = (1, 1, 1)
    IMAGE_SIZE, BATCH_SIZE, VERBOSE = 32, 64, 2
else:
    TRAIN_IMAGES = TEST_IMAGES = None
    TEACHER_EPOCHS = EPOCHS = 20
    TEACHER_BLOCKS = (2, 2, 2)
    # The backbones' ImageNet stems downsample 4x at once: upscale CIFAR.
    IMAGE_SIZE, BATCH_SIZE, VERBOSE = 64, (128 if GPUS else 64), 1
SMALL = MODE != "full"  # narrower backbones for the smoke and moderate runs

# %% [markdown]
# ## Data with RandAugment, MixUp and CutMix
#
# `keras_kd.data.make_dataset(..., rescale=False)` shuffles, crops, flips and
# batches raw pixels (0..255), as in the other notebooks: the models
# normalise inside (their first layer, see below). `keras.layers.RandAugment`
# then works on those pixels (`value_range=(0, 255)`), and each batch is
# mixed with `MixUp` or `CutMix` (one or the other at random), which turns
# the labels into soft one-hot vectors. The test pipeline gets one-hot
# labels too, so one loss (`CategoricalCrossentropy`) serves both.

# %%
arrays = plotting.load_data(DATA, DATA_DIR, TRAIN_IMAGES, TEST_IMAGES)
x_train, y_train = arrays["x_train"], arrays["y_train"]
x_test, y_test = arrays["x_test"], arrays["y_test"]
if x_train.shape[-1] == 1:  # grey images: the backbones want RGB
    x_train = np.repeat(x_train, 3, axis=-1)
    x_test = np.repeat(x_test, 3, axis=-1)
class_names = list(arrays["class_names"])
NUM_CLASSES, INPUT_SHAPE = len(class_names), x_train.shape[1:]
mean, std = keras_kd.data.channel_stats(x_train)  # for the models' first layer

rand_augment = keras.layers.RandAugment(
    value_range=(0, 255), num_ops=2, factor=0.5, seed=SEED
)
mixup = keras.layers.MixUp(alpha=0.2, seed=SEED)
cutmix = keras.layers.CutMix(factor=1.0, seed=SEED)


def augment_and_mix(images, labels):
    images = rand_augment(images, training=True)
    batch = {"images": images, "labels": tf.one_hot(labels, NUM_CLASSES)}
    batch = tf.cond(
        tf.random.uniform(()) < 0.5,
        lambda: mixup(batch, training=True),
        lambda: cutmix(batch, training=True),
    )
    return batch["images"], batch["labels"]


train_ds = (
    keras_kd.data.make_dataset(
        x_train,
        y_train,
        batch_size=BATCH_SIZE,
        training=True,
        augment="crop_flip",
        rescale=False,
        seed=SEED,
    )
    .map(augment_and_mix, num_parallel_calls=tf.data.AUTOTUNE)
    .prefetch(tf.data.AUTOTUNE)
)
test_ds = keras_kd.data.make_dataset(
    x_test, y_test, batch_size=256, rescale=False
).map(lambda images, labels: (images, tf.one_hot(labels, NUM_CLASSES)))

# What the networks see: augmented, mixed images (titled by their largest
# label weight).
images, soft_labels = next(iter(train_ds))
pixels = np.clip(images.numpy()[:16], 0, 255)
plotting.show_images(
    pixels.astype("uint8"), soft_labels.numpy()[:16].argmax(-1), class_names
)

# %%
ce = keras.losses.CategoricalCrossentropy(from_logits=True)


def fit(model, epochs):
    return plotting.compile_and_fit(
        model,
        train_ds,
        test_ds,
        epochs,
        LEARNING_RATE,
        verbose=VERBOSE,
        loss=ce,
    )


def accuracy(model):
    return plotting.accuracy(model, test_ds, loss=ce)


# %% [markdown]
# ## From a backbone to a classifier, and choosing taps
#
# A backbone maps images to feature maps. Wrap it in a functional model with a
# `Normalization` layer first (`keras_kd.models.pixel_normalization(mean,
# std)`: raw pixels in, `(x / 255 - mean) / std` out, saved and exported with
# the model), a resizing layer, pooling and a `logits` layer; the backbone
# stays a nested model whose layers keras_kd reaches as `"<backbone
# name>/<layer name>"`.
#
# To choose taps, list the backbone's layers: residual networks end each block
# in an `Add` (the pre-activation the official AB/NST code taps) followed by a
# ReLU. `stage_ends` keeps the last `Add` at each resolution, so teacher and
# student taps pair up by resolution even when their depths differ.


# %%
def classifier(backbone, name):
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = keras_kd.models.pixel_normalization(mean, std)(inputs)
    x = keras.layers.Resizing(IMAGE_SIZE, IMAGE_SIZE, name="resize")(x)
    x = backbone(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name=name)


def show_block_ends(backbone):
    """Prints each residual block's `Add` and its output activation."""
    print(
        f"{backbone.name}: {len(backbone.layers)} layers, "
        f"{backbone.count_params():,} parameters"
    )
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Add) or layer.name.endswith("_out"):
            kind = type(layer).__name__
            print(f"  {layer.name:28s} {kind:11s} {layer.output.shape}")


def stage_ends(backbone):
    """{(H, W): (name, channels)} of the last `Add` at each resolution."""
    ends = {}
    for layer in backbone.layers:
        if isinstance(layer, keras.layers.Add):
            shape = layer.output.shape
            ends[tuple(shape[1:3])] = (layer.name, shape[-1])
    return ends


def paired_taps(teacher_backbone, student_backbone):
    teacher_ends = stage_ends(teacher_backbone)
    student_ends = stage_ends(student_backbone)
    pairs = []
    for size in teacher_ends:
        if size in student_ends:
            t_name, t_width = teacher_ends[size]
            s_name, s_width = student_ends[size]
            print(
                f"{size}: teacher {t_name} ({t_width} ch) <- "
                f"student {s_name} ({s_width} ch)"
            )
            pairs.append(
                (
                    f"{teacher_backbone.name}/{t_name}",
                    f"{student_backbone.name}/{s_name}",
                )
            )
    return pairs


# %% [markdown]
# The distillation: KD on the logits plus a FitNets hint (Romero et al. 2015)
# on the middle stage, trained jointly as in RepDistiller. The student is
# narrower, so `FitNetsHint` builds a regressor (conv + BN) from the
# student's width to the teacher's; it trains with the student and is not
# part of `distiller.student`.
#
# **The hint's weight.** RepDistiller weighs the hint 100
# (`FitNetsHint.paper_weight`, `preset="paper"`), its value for 240-epoch SGD
# on CIFAR-100; the library default is 10, chosen on the README's panel of
# training regimes. The hint is a mean squared error between
# feature maps, of order 1, so at 100 the weighted hint makes up most of the
# total loss and the task loss (about 2.3 at the start here) is a small part
# of what the optimizer follows. Each library below therefore trains the
# student twice, at RepDistiller's 100 and at `HINT_WEIGHT`, set through
# `Distiller(..., distillation_loss_weights=[hint_weight, kd_weight])` (KD
# at its own default); `term_sizes` prints each term's share of the total
# at the last epoch.

# %%
HINT_WEIGHT = 1.0
results, histories = {}, {}


def term_sizes(history, distiller):
    """Each weighted term of the last epoch's training loss, and its share."""
    logs = {name: values[-1] for name, values in history.history.items()}
    weights = distiller.loss_weights
    terms = {
        "task": weights["student"] * logs["student_loss"],
        "hint": weights["fitnets_hint"] * logs["fitnets_hint_loss"],
        "KD": weights["logits_distillation"] * logs["logits_distillation_loss"],
    }
    shares = ", ".join(
        f"{name} {value:.3g} ({value / logs['loss']:.0%})"
        for name, value in terms.items()
    )
    print(
        f"  hint weight {weights['fitnets_hint']:g}, last epoch: total "
        f"{logs['loss']:.3g} = {shares}"
    )


def run(library, teacher_backbone, new_student_backbone):
    """Teacher, student alone, KD + hint at 100 and at HINT_WEIGHT."""
    print(f"=== {library}")
    teacher = classifier(teacher_backbone, f"{library}_teacher")
    fit(teacher, TEACHER_EPOCHS)
    results[f"{library} teacher"] = (teacher.count_params(), accuracy(teacher))
    alone = classifier(new_student_backbone("alone"), f"{library}_alone")
    histories[f"{library}: alone"] = fit(alone, EPOCHS)
    results[f"{library} student alone"] = (
        alone.count_params(),
        accuracy(alone),
    )
    kd_weight = losses.LogitsDistillation.default_weight
    for weight in (losses.FitNetsHint.paper_weight, HINT_WEIGHT):
        tag = f"{weight:g}".replace(".", "_")
        student_backbone = new_student_backbone(f"hint_{tag}")
        pairs = paired_taps(teacher_backbone, student_backbone)
        hint_teacher, hint_student = pairs[len(pairs) // 2]  # middle stage
        student = classifier(student_backbone, f"{library}_hint_{tag}")
        hint = losses.FitNetsHint(hint_teacher, hint_student)
        distiller = keras_kd.Distiller(
            teacher,
            student,
            [hint, losses.LogitsDistillation()],
            distillation_loss_weights=[weight, kd_weight],
        )
        for connector in hint.connectors:
            print(f"connector {connector.name}: {connector.count_params():,}")
        label = f"KD + hint x{distiller.loss_weights['fitnets_hint']:g}"
        history = fit(distiller, EPOCHS)
        term_sizes(history, distiller)
        histories[f"{library}: {label}"] = history
        results[f"{library} {label}"] = (
            student.count_params(),
            accuracy(student),
        )
    return student


# %% [markdown]
# ## keras-cv
#
# `keras_cv.models.ResNetBackbone` (ResNet v1, bottleneck blocks), built from
# its constructor arguments, no preset. The student has a quarter of the
# teacher's width and one block per stack (keras-cv names these layers
# `v2_stack_*` even in ResNet v1).


# %%
def keras_cv_resnet(filters, blocks, name):
    return keras_cv.models.ResNetBackbone(
        stackwise_filters=list(filters),
        stackwise_blocks=list(blocks),
        stackwise_strides=[1, 2, 2],
        include_rescaling=False,
        input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        name=name,
    )


if keras_cv is None:
    print("keras-cv is not installed: skipping (pip install keras-cv).")
else:
    teacher_filters, student_filters = (
        ((16, 32, 64), (4, 8, 16)) if SMALL else ((64, 128, 256), (16, 32, 64))
    )
    teacher_backbone = keras_cv_resnet(
        teacher_filters, TEACHER_BLOCKS, "cv_teacher_backbone"
    )
    show_block_ends(teacher_backbone)

    def new_cv_student(tag):  # the same initial student in every run
        keras.utils.set_random_seed(SEED + 1)
        return keras_cv_resnet(student_filters, (1, 1, 1), f"cv_{tag}")

    last_student = run("keras-cv", teacher_backbone, new_cv_student)

# %% [markdown]
# ## KerasHub
#
# `keras_hub.models.ResNetBackbone` with basic blocks, no preset. KerasHub's
# ResNet requires 64 filters in the stem and the first stack, so the student
# saves its parameters in the deeper stacks (and in depth), and only those
# pairs need a connector.


# %%
def keras_hub_resnet(filters, blocks, name):
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=list(filters),
        stackwise_num_blocks=list(blocks),
        stackwise_num_strides=[1, 2, 2],
        block_type="basic_block",
        use_pre_activation=False,
        image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
        name=name,
    )


if keras_hub is None:
    print("KerasHub is not installed: skipping (pip install keras-hub).")
else:
    teacher_filters = (64, 64, 128) if SMALL else (64, 128, 256)
    teacher_backbone = keras_hub_resnet(
        teacher_filters, TEACHER_BLOCKS, "hub_teacher_backbone"
    )
    show_block_ends(teacher_backbone)

    def new_hub_student(tag):  # the same initial student in every run
        keras.utils.set_random_seed(SEED + 1)
        return keras_hub_resnet((64, 32, 64), (1, 1, 1), f"hub_{tag}")

    last_student = run("KerasHub", teacher_backbone, new_hub_student)

# %% [markdown]
# ## Results

# %%
if results:
    plotting.print_results(results)
    plotting.plot_histories(
        histories, metrics=("val_accuracy", "val_student_loss")
    )

# %% [markdown]
# **Reading the stored run.** Three epochs on 3,000 images, one seed, and
# weak teachers (keras-cv 0.2430, KerasHub 0.3390). At RepDistiller's
# weight of 100 the weighted hint made up 96% (keras-cv) and 98% (KerasHub)
# of the last epoch's training loss: totals of 62 to 166 over the three
# epochs against a task loss of 2.2 to 2.4, so the optimizer followed the
# hint almost alone, and both students ended below the ones trained alone
# (keras-cv 0.2000 against 0.2070, KerasHub 0.2890 against 0.3140). At
# weight 1 the hint was 23% and 33% of the total, and the students reached
# 0.1970 (keras-cv) and 0.3170 (KerasHub). A point or two is within one
# seed's noise here, so these numbers rank neither the weights nor the
# method; they show how the weight sets the terms' sizes. The weight 100
# comes from RepDistiller's 240-epoch SGD runs; on the README's panel it put
# a student below training alone, and the library default is 10. With
# short Adam schedules like this one, start from a
# weight that keeps the hint comparable to the task loss, train the teacher
# properly first, and watch the logged terms (`loss`, `student_loss`,
# `fitnets_hint_loss`). This notebook is about the mechanics of tapping and
# connecting foreign models, not about their accuracy.

# %%
if results:
    predicted = np.argmax(last_student.predict(test_ds, verbose=0), axis=-1)
    plotting.show_images(x_test[:24], y_test[:24], class_names, predicted[:24])

# %% [markdown]
# ## Your own models
#
# - **Functional models only** for feature losses (hints, AB, NST, AT): a
#   subclassed model has no graph to tap (`LogitsDistillation` still works).
# - **Same input** for teacher and student: resize inside the model if needed,
#   and normalise inside it too (`keras_kd.models.pixel_normalization(mean,
#   std)` first), so the pipelines and the exported student take raw pixels.
# - **Taps**: print `model.layers` (or `model.summary(expand_nested=True)`),
#   pick tensors at the same resolution, prefer the pre-activation for AB and
#   NST; an unknown name fails at once with the closest valid names.
# - **Widths**: AB builds 1x1 conv + BN connectors, FitNets conv + BN
#   regressors; NST and attention transfer compare distributions and need
#   none.
# - **Weights**: compare each weighted term with the task loss in the logs
#   (`distiller.loss_weights` gives the weights); a term that makes up most
#   of the total, as FitNets' weight 100 does above, decides what the
#   student learns.
