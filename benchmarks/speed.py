"""Step time and peak memory of keras_kd's Distiller against the floor.

The floor of a distillation step is what it cannot avoid: one training step of
the student on its own plus one inference pass of the teacher. In ONE process,
on the same batches, this script times

- `student`: the student's own train step (`student.compile(); train_on_batch`),
- `teacher_inference`: `teacher(x, training=False)` in a compiled `tf.function`,
- keras_kd's `Distiller` with KD, AB on 3 layer pairs + KD, NST + KD,
  attention transfer, and a FitNets-style MSE on one equal-shape pair with no
  regressor (the same math as `keras.distillation.FeatureDistillation`),
- every other method of the registry (`keras_kd.losses.registry`: FSP, RKD,
  SP, PKT, CRD, KD with logit standardisation, ..., and any method added
  later), each alone beside the task loss, with its library defaults and
  its default layers in keras_kd's ResNets (CRD's memory bank holds
  `CRD_EXAMPLES` examples, so `K = CRD_EXAMPLES - 1` negatives),
- procedures: boundary-supporting samples (`bss_kd`: 64 base samples, 10
  attack steps, KD at T = 3) and route-constrained optimisation (`rco_kd`:
  KD over a route of the teacher's anchors; the step is KD's, the stage
  change and the route's recording are timed apart),
- function matching (`fm_kd`: crops, flips and mixup inside the step, the
  same batch for both networks, + KD at T = 4),
- `keras.distillation.Distiller` with `LogitsDistillation` and with
  `FeatureDistillation` on the same equal-shape pair,

every training configuration through `train_on_batch` in a loop, interleaved
round-robin over several rounds (the order rotates each round) so that machine
noise hits all of them alike, and reports medians and each configuration's
ratio to the floor `student + teacher_inference`. It then times the loss math
alone (forward + backward of each loss function on fixed tensors of the real
shapes), measures the peak RSS of each configuration in its own subprocess,
and times `neuron_selectivity_loss` for several channel counts and spatial
sizes.

    python benchmarks/speed.py          # CIFAR sizes, batch 128, ~4 min
    python benchmarks/speed.py --quick  # small sizes, ~1.5 min
    # or torch, or KERAS_BACKEND=...:
    python benchmarks/speed.py --quick --backend jax
    # the registry's methods beyond the hand-written configurations, with
    # KD and the floors (no loss-math sections) -> speed_methods[_BACKEND]:
    python benchmarks/speed.py --configs methods --backend jax
    # the training procedures (BSS, RCO) beside KD -> speed_procedures[...]:
    python benchmarks/speed.py --configs procedures --backend jax
    # function matching beside KD:
    python benchmarks/speed.py --configs kd,fm_kd \
        --output benchmarks/results/speed_function_matching

Every backend times the same configurations against its own floor, and the
loss math and NST scaling with its own gradient machinery (`grad_step`).
Writes `benchmarks/results/speed[_quick][_BACKEND].md`
(+ `.json`, `.png`; no suffix for TensorFlow).
"""

import argparse
import datetime
import glob
import json
import os
import re
import resource
import subprocess
import sys
import time

import common

BACKEND = common.select_backend()

import keras  # noqa: E402
import numpy as np  # noqa: E402

if BACKEND == "tensorflow":
    import tensorflow as tf  # noqa: E402

import keras_kd  # noqa: E402
import keras_kd.connectors  # noqa: E402
from keras_kd import losses  # noqa: E402
from keras_kd.models import resnet  # noqa: E402

SIZES = {
    # ResNet-32 teacher (464k parameters) -> ResNet-8 student (78k), the same
    # stage widths so that stage outputs have equal shapes (needed by
    # keras.distillation.FeatureDistillation).
    "default": dict(
        batch=128,
        image=32,
        widths=(16, 32, 64),
        teacher_blocks=5,
        student_blocks=1,
        warmup=3,
        rounds=8,
        steps_per_round=4,
        memory_steps=10,
        nst_repeats=10,
    ),
    "quick": dict(
        batch=32,
        image=32,
        widths=(16, 32, 64),
        teacher_blocks=2,
        student_blocks=1,
        warmup=2,
        rounds=3,
        steps_per_round=3,
        memory_steps=4,
        nst_repeats=3,
    ),
    # The GPU pair: ResNet-50 teacher -> MobileNetV2 student
    # (keras.applications, random weights), 224 px, batch 128. For a GPU
    # machine; see benchmarks/README.md for the command.
    "imagenet": dict(
        pair="imagenet",
        batch=128,
        image=224,
        classes=1000,
        warmup=3,
        rounds=8,
        steps_per_round=4,
        memory_steps=10,
        nst_repeats=10,
    ),
    # The same pair at 64 px, batch 2: a pipeline check that runs on CPU.
    "imagenet_smoke": dict(
        pair="imagenet",
        batch=2,
        image=64,
        classes=1000,
        warmup=1,
        rounds=1,
        steps_per_round=1,
        memory_steps=1,
        nst_repeats=1,
    ),
}
ADDS = ["stage1_add", "stage2_add", "stage3_add"]
RELUS = ["stage1_relu", "stage2_relu", "stage3_relu"]
FEATURE_PAIR = "stage3_add"  # equal shapes in teacher and student

# The layers each pair taps: AB (pre-activations), NST, AT (post-ReLU) as
# (teacher, student); `skip`: configurations the pair cannot run.
PAIRS = {
    "cifar_resnet": dict(
        ab=(ADDS, ADDS),
        nst=("stage3_add", "stage3_add"),
        at=(RELUS, RELUS),
        skip=(),
    ),
    # The 14 x 14 and 7 x 7 stages at 224 px (AB on 2 pairs).
    # No stage has equal shapes in both networks, so the equal-shape
    # configurations (keras FeatureDistillation among them) do not run.
    "imagenet": dict(
        ab=(
            ["conv4_block6_add", "conv5_block3_add"],
            ["block_12_add", "Conv_1_bn"],
        ),
        nst=("conv5_block3_out", "out_relu"),
        at=(
            ["conv4_block6_out", "conv5_block3_out"],
            ["block_13_expand_relu", "out_relu"],
        ),
        skip=("ab_kd_noconn", "mse", "keras_feature"),
    ),
}


# Methods timed by the hand-written configurations above, with their own
# taps; every other registered method gets a configuration of its own.
HAND_WRITTEN = {"kd", "ab", "nst", "at", "fitnets"}
# The memory bank of CRD (and the data size any method may ask for).
CRD_EXAMPLES = 5000
FACTS = {"num_examples": CRD_EXAMPLES}


def _registry_configs():
    return {
        method.name: (
            "keras_kd",
            f"Distiller: {method.name} (+ task loss), registry defaults: "
            f"{method.summary}",
        )
        for method in losses.registry.methods()
        if method.name not in HAND_WRITTEN
    }


REGISTRY_CONFIGS = _registry_configs()
PROCEDURE_CONFIGS = {
    "bss_kd": (
        "keras_kd",
        "Distiller: boundary-supporting samples (64 base samples, 10 attack "
        "steps) + KD (T=3)",
    ),
    "rco_kd": (
        "keras_kd",
        "Distiller: route-constrained optimisation (2 anchors) + KD (T=4)",
    ),
}
# Function matching (Beyer et al.): the batch augmented inside the step
# (crops, flips, mixup), once, for both networks.
FUNCTION_MATCHING_CONFIGS = {
    "fm_kd": (
        "keras_kd",
        "Distiller: function matching (crops of 4, flips, mixup 1.0) + KD "
        "(T=4)",
    ),
}
PAIRS["imagenet"]["skip"] += (
    tuple(REGISTRY_CONFIGS)
    + tuple(PROCEDURE_CONFIGS)
    + tuple(FUNCTION_MATCHING_CONFIGS)
)


def model_description(s, role):
    if s.get("pair") == "imagenet":
        return (
            "`keras.applications.ResNet50` (random weights)"
            if role == "teacher"
            else "`keras.applications.MobileNetV2` (random weights)"
        )
    blocks = s["teacher_blocks" if role == "teacher" else "student_blocks"]
    return f"`resnet(widths={s['widths']}, blocks={blocks})`"


def taps_description(s):
    pair = pair_of(s)
    (ab_t, ab_s), (nst_t, nst_s), (at_t, at_s) = (
        pair["ab"],
        pair["nst"],
        pair["at"],
    )
    text = (
        f"- keras_kd feature taps (teacher / student): AB on {ab_t} / "
        f'{ab_s} (pre-activations, `connector="always"` as the official '
        f"code, so {len(ab_t)} 1×1 conv + BN connectors); NST on {nst_t} / "
        f"{nst_s}; AT on {at_t} / {at_s}"
    )
    if "mse" not in pair["skip"]:
        text += (
            f'; MSE (`FitNetsHint`, `connector="auto"`, no regressor for '
            f"equal shapes) and keras `FeatureDistillation` on "
            f"`{FEATURE_PAIR}`"
        )
    return text + (
        ". keras Distillers use their default `student_loss_weight=0.5`."
    )


def pair_of(s):
    return PAIRS[s.get("pair", "cifar_resnet")]


def configs_of(s):
    """The configurations this size runs, in CONFIGS order."""
    return [n for n in CONFIGS if n not in pair_of(s)["skip"]]


# name -> (family, description)
CONFIGS = {
    "student": ("floor", "(a) student train step alone"),
    "teacher_inference": (
        "floor",
        "(b) teacher(x, training=False), compiled "
        "(tf.function / jax.jit; PyTorch: eager under no_grad)",
    ),
    "student_connectors": (
        "floor",
        "(a') the student with AB's three 1×1 conv + BN connectors on its "
        "taps, train step (the connectors' outputs enter the loss as "
        "1e-3 · mean square, so their forward and backward passes run)",
    ),
    "kd": ("keras_kd", "Distiller: KD (T=4)"),
    "ab_kd": ("keras_kd", "Distiller: AB on 3 pairs (connectors) + KD"),
    "ab_kd_noconn": (
        "keras_kd",
        "Distiller: AB on 3 pairs, no connectors (equal widths) + KD",
    ),
    "nst_kd": ("keras_kd", "Distiller: NST (stage 3) + KD"),
    "at": ("keras_kd", "Distiller: attention transfer, 3 pairs"),
    "mse": (
        "keras_kd",
        f"Distiller: MSE on `{FEATURE_PAIR}` (FitNetsHint, no regressor)",
    ),
    **REGISTRY_CONFIGS,
    **PROCEDURE_CONFIGS,
    **FUNCTION_MATCHING_CONFIGS,
    "keras_logits": (
        "keras.distillation",
        "keras Distiller: LogitsDistillation (T=4)",
    ),
    "keras_feature": (
        "keras.distillation",
        f"keras Distiller: FeatureDistillation mse on `{FEATURE_PAIR}`",
    ),
}


def cross_entropy():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def optimizer():
    return keras.optimizers.SGD(0.05, momentum=0.9)


def make_models(s):
    keras.utils.set_random_seed(0)
    shape = (s["image"], s["image"], 3)
    if s.get("pair") == "imagenet":
        teacher = keras.applications.ResNet50(
            weights=None,
            input_shape=shape,
            classes=s["classes"],
            classifier_activation=None,
            name="teacher",
        )
        return teacher, shape
    teacher = resnet(
        shape,
        10,
        widths=s["widths"],
        blocks=s["teacher_blocks"],
        name="teacher",
    )
    return teacher, shape


def new_student(s, shape):
    keras.utils.set_random_seed(
        1
    )  # every configuration starts from the same student
    if s.get("pair") == "imagenet":
        return keras.applications.MobileNetV2(
            weights=None,
            input_shape=shape,
            classes=s["classes"],
            classifier_activation=None,
            name="student",
        )
    return resnet(
        shape,
        10,
        widths=s["widths"],
        blocks=s["student_blocks"],
        name="student",
    )


def keras_kd_losses(name, s):
    if name in REGISTRY_CONFIGS:
        return [losses.registry.build(name, stages=3, facts=FACTS)]
    pair = pair_of(s)
    kd = losses.get("kd", temperature=4.0)
    outputs = dict(teacher_tap="output", student_tap="output")
    return {
        "kd": [kd],
        "ab_kd": [
            losses.get("ab", *pair["ab"], connector="always", **outputs),
            kd,
        ],
        "ab_kd_noconn": [
            losses.get("ab", *pair["ab"], connector="auto", **outputs),
            kd,
        ],
        "nst_kd": [losses.get("nst", *pair["nst"], **outputs), kd],
        "at": [losses.get("at", *pair["at"])],
        "mse": [
            losses.get("fitnets", FEATURE_PAIR, FEATURE_PAIR, connector="auto")
        ],
        "bss_kd": [losses.get("kd", temperature=3.0)],
        "rco_kd": [kd],
        "fm_kd": [kd],
    }[name]


def _route(teacher, anchors=2):
    """A route of `anchors` files of the teacher's weights (a temp dir)."""
    import tempfile

    directory = tempfile.mkdtemp(prefix="keras_kd_route_")
    paths = []
    for k in range(anchors):
        paths.append(os.path.join(directory, f"anchor{k}.weights.h5"))
        teacher.save_weights(paths[-1])
    return paths


def keras_kd_procedures(name, teacher):
    from keras_kd import procedures

    if name == "bss_kd":
        return [procedures.BoundarySupportingSamples(seed=0, schedule=None)]
    if name == "rco_kd":
        return [
            procedures.RouteConstrainedOptimization(
                _route(teacher), stages=2, verbose=0
            )
        ]
    return []


def route_costs(teacher, repeats=5):
    """Milliseconds to record one anchor (atomic write + manifest) and to
    load one anchor into the teacher (a stage change)."""
    import tempfile

    from keras_kd import procedures

    directory = tempfile.mkdtemp(prefix="keras_kd_route_")
    recorder = procedures.RouteRecorder(directory)
    recorder.set_model(teacher)
    record, load = [], []
    for k in range(repeats):
        start = time.perf_counter()
        recorder._write_anchor(k + 1, None)
        record.append(time.perf_counter() - start)
    route = procedures.Route.from_directory(directory)
    for k in range(repeats):
        start = time.perf_counter()
        route.load(k % len(route), teacher)
        load.append(time.perf_counter() - start)
    size = os.path.getsize(route.paths[0])
    return {
        "record_ms": 1e3 * float(np.median(record)),
        "load_ms": 1e3 * float(np.median(load)),
        "anchor_mb": size / 2**20,
    }


class StudentWithConnectors(keras.Model):
    """The student plus the trainable layers AB + KD adds: its connectors.

    The floor of a distiller with connectors is this model's train step plus
    the teacher's inference: the connectors are model compute the user asked
    for, not the distiller's overhead.
    """

    def __init__(self, student, teacher, student_taps, teacher_taps, **kw):
        super().__init__(**kw)
        self.features = keras.Model(
            student.inputs,
            [student.outputs[0]]
            + [student.get_layer(t).output for t in student_taps],
        )
        self.connectors = [
            keras_kd.connectors.Connector(
                student.get_layer(s).output.shape,
                teacher.get_layer(t).output.shape,
                kind="projection",
                name=f"connector_{i}",
            )
            for i, (s, t) in enumerate(zip(student_taps, teacher_taps))
        ]

    def call(self, x, training=None):
        logits, *features = self.features(x, training=training)
        return [logits] + [
            c(f, training=training) for c, f in zip(self.connectors, features)
        ]

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        # The compiled loss, as the student's own step uses. A loss object
        # called here instead leaves the compiled loss unbuilt, and then
        # Keras's JAX and PyTorch `train_on_batch` re-run the symbolic build
        # of the whole model on every call (~20 ms a step at --quick).
        loss = super().compute_loss(
            x, y, y_pred[0], sample_weight, training=training
        )
        for out in y_pred[1:]:
            loss = loss + 1e-3 * keras.ops.mean(keras.ops.square(out))
        return loss

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        return super().compute_metrics(x, y, y_pred[0], sample_weight)


def build_step(name, s, teacher, shape):
    """A function `step(x, y)` that runs one step of `name` to completion."""
    if name == "teacher_inference":
        return teacher_inference(teacher), None
    student = new_student(s, shape)
    if name == "student":
        model = student
    elif name == "student_connectors":
        teacher_taps, student_taps = pair_of(s)["ab"]
        model = StudentWithConnectors(
            student, teacher, student_taps, teacher_taps
        )
    elif CONFIGS[name][0] == "keras_kd":
        kd_losses = keras_kd_losses(name, s)
        model = keras_kd.Distiller(
            teacher,
            student,
            kd_losses,
            procedures=keras_kd_procedures(name, teacher),
            function_matching=(
                keras_kd.FunctionMatching(seed=0) if name == "fm_kd" else None
            ),
        )
        if "example_ids" in keras_kd.losses.requirements(kd_losses):
            model.compile(optimizer=optimizer(), loss=cross_entropy())
            ids = keras.ops.arange(s["batch"], dtype="int32")
            return (
                lambda x, y: model.train_on_batch(
                    {"image": x, "example_id": ids}, y
                )
            ), model
    elif name == "keras_logits":
        model = keras.distillation.Distiller(
            teacher,
            student,
            [keras.distillation.LogitsDistillation(temperature=4.0)],
        )
    elif name == "keras_feature":
        model = keras.distillation.Distiller(
            teacher,
            student,
            [
                keras.distillation.FeatureDistillation(
                    loss="mse",
                    teacher_layer_name=FEATURE_PAIR,
                    student_layer_name=FEATURE_PAIR,
                )
            ],
        )
    else:
        raise ValueError(name)
    model.compile(optimizer=optimizer(), loss=cross_entropy())
    return (lambda x, y: model.train_on_batch(x, y)), model


def teacher_inference(teacher):
    """`step(x, y)`: the teacher's compiled inference pass, synchronised."""
    if BACKEND == "tensorflow":
        fn = tf.function(lambda x: tf.reduce_sum(teacher(x, training=False)))
        return lambda x, y: fn(x).numpy()
    if BACKEND == "jax":
        import jax

        @jax.jit
        def forward(trainable, non_trainable, x):
            out, _ = teacher.stateless_call(
                trainable, non_trainable, x, training=False
            )
            return out.sum()

        teacher.trainable = False  # as in every Distiller built after this

        def step(x, y):
            # Current buffers each call: a Distiller's step donates the
            # teacher's state and replaces it with new arrays.
            return float(
                forward(
                    [v.value for v in teacher.trainable_variables],
                    [v.value for v in teacher.non_trainable_variables],
                    x,
                )
            )

        return step
    import torch

    def step(x, y):
        with torch.no_grad():
            return float(keras.ops.sum(teacher(x, training=False)))

    return step


def batches(s, count=4):
    rng = np.random.default_rng(0)
    return [
        (
            keras.ops.convert_to_tensor(
                rng.standard_normal(
                    (s["batch"], s["image"], s["image"], 3), dtype=np.float32
                )
            ),
            keras.ops.convert_to_tensor(
                rng.integers(0, s.get("classes", 10), s["batch"])
            ),
        )
        for _ in range(count)
    ]


def time_interleaved(steps, data, s):
    """Round-robin timing; returns {name: [seconds per step]}."""
    names = list(steps)
    for name in names:  # warm-up: tracing, first allocations
        for i in range(s["warmup"]):
            steps[name](*data[i % len(data)])
    times = {name: [] for name in names}
    k = 0
    for r in range(s["rounds"]):
        order = names[r % len(names) :] + names[: r % len(names)]
        if r % 2:
            order = order[::-1]
        for name in order:
            for _ in range(s["steps_per_round"]):
                x, y = data[k % len(data)]
                k += 1
                start = time.perf_counter()
                steps[name](x, y)
                times[name].append(time.perf_counter() - start)
        print(f"  round {r + 1}/{s['rounds']} done", flush=True)
    return times


# --- loss math alone ----------------------------------------------------------


def grad_step(fn, constants, inputs, variables=()):
    """A blocking call: forward + backward of `fn(constants, inputs)`.

    Gradients with respect to every tensor in `inputs` (the student side)
    and every Keras variable in `variables` (e.g. a loss's connectors); the
    `constants` (the teacher side) take none but are arguments, not values
    baked into the program, so no compiler folds the teacher's half of the
    loss away. Compiled as the backend's own train step is: a `tf.function`
    (TensorFlow), a `jax.jit` of `jax.value_and_grad`, with the variables
    passed in through a `keras.StatelessScope` (JAX), eager autograd
    (PyTorch).
    """
    variables = list(variables)
    if BACKEND == "tensorflow":
        fixed = [tf.Variable(c, trainable=False) for c in constants]
        tensors = [tf.Variable(x) for x in inputs]

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                value = fn(fixed, tensors)
            grads = tape.gradient(value, tensors + variables)
            return value + sum(tf.reduce_sum(g) for g in grads if g is not None)

        return lambda: step().numpy()
    if BACKEND == "jax":
        import jax

        def pure(values, fixed, tensors):
            with keras.StatelessScope(state_mapping=zip(variables, values)):
                return fn(fixed, tensors)

        step = jax.jit(jax.value_and_grad(pure, argnums=(0, 2)))
        values = [v.value for v in variables]
        fixed = [keras.ops.convert_to_tensor(c) for c in constants]
        tensors = [keras.ops.convert_to_tensor(x) for x in inputs]
        return lambda: jax.block_until_ready(step(values, fixed, tensors))
    import torch

    fixed = [keras.ops.convert_to_tensor(c).detach() for c in constants]
    tensors = [
        keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
        for x in inputs
    ]
    params = [v.value for v in variables]

    def step():
        value = fn(fixed, tensors)
        torch.autograd.grad(value, tensors + params, allow_unused=True)
        return float(value.detach())

    return step


def loss_math_times(s, teacher, shape, repeats):
    """Forward + backward of each configuration's loss functions.

    On fixed teacher and student tensors of the CIFAR pair's shapes.
    """
    student = new_student(s, shape)
    x = batches(s, 1)[0][0]
    names = ["logits"] + ADDS + RELUS
    t_model = keras.Model(
        teacher.input,
        [teacher.output] + [teacher.get_layer(n).output for n in ADDS + RELUS],
    )
    s_model = keras.Model(
        student.input,
        [student.output] + [student.get_layer(n).output for n in ADDS + RELUS],
    )
    t_values = list(t_model(x, training=False))
    s_values = list(s_model(x, training=False))
    from keras_kd.losses import activation_boundary_loss
    from keras_kd.losses import attention_transfer_loss
    from keras_kd.losses import fitnets_hint_loss
    from keras_kd.losses import logits_distillation_loss
    from keras_kd.losses import neuron_selectivity_loss

    def kd(t, v):
        return logits_distillation_loss(t["logits"], v["logits"], 4.0)

    formulas = {
        "kd (loss functions)": kd,
        "ab_kd (loss functions, no connectors or metrics)": lambda t, v: (
            kd(t, v)
            + 3e-3
            * sum(
                w * activation_boundary_loss(t[n], v[n])
                for w, n in zip((0.25, 0.5, 1.0), ADDS)
            )
        ),
        "nst_kd (loss functions)": lambda t, v: (
            kd(t, v)
            + 50 * neuron_selectivity_loss(t["stage3_add"], v["stage3_add"])
        ),
        "at (loss functions)": lambda t, v: (
            1000 * sum(attention_transfer_loss(t[n], v[n]) for n in RELUS) / 3
        ),
        "mse (loss functions)": lambda t, v: (
            100 * fitnets_hint_loss(t[FEATURE_PAIR], v[FEATURE_PAIR])
        ),
    }
    results = {}
    for name, formula in formulas.items():

        def fn(fixed, tensors, formula=formula):
            return formula(dict(zip(names, fixed)), dict(zip(names, tensors)))

        results[name] = common.median_seconds(
            grad_step(fn, t_values, s_values), repeats
        )
    return results


def distiller_loss_times(built, teacher, batch, repeats):
    """Forward + backward of each keras_kd Distiller's distillation losses.

    Every `DistillationLoss.compute` of the Distiller (with its connectors,
    in training mode, and its metrics such as `boundary_agreement`), weighted
    by the Distiller's loss weights, on fixed teacher/student features of
    the real shapes; gradients with respect to the student features and the
    connectors. Excludes the forward/backward passes of the networks.
    """
    x, _ = batch
    results = {}
    for name, (_, model) in built.items():
        # Registry methods may read labels or example ids: their step times
        # are measured above, their math is not separated here.
        if CONFIGS[name][0] != "keras_kd" or name in REGISTRY_CONFIGS:
            continue
        weights = model.configured_loss_weights
        student = model.student

        def features(net, names):
            names = names if isinstance(names, (list, tuple)) else [names]
            outputs = [
                net.output if n is None else net.get_layer(n).output
                for n in names
            ]
            values = keras.Model(net.input, outputs)(x, training=False)
            if not isinstance(values, (list, tuple)):
                values = [values]
            return list(values)

        t_feats = [
            features(teacher, loss.teacher_layer_name)
            for loss in model.distillation_losses
        ]
        s_feats = [
            features(student, loss.student_layer_name)
            for loss in model.distillation_losses
        ]
        sizes = [len(group) for group in t_feats]
        connector_variables = [
            v
            for loss in model.distillation_losses
            for v in loss.trainable_variables
        ]

        def fn(fixed, flat, model=model, sizes=sizes):
            total, logged, start = 0.0, keras.ops.zeros(()), 0
            for loss, size in zip(model.distillation_losses, sizes):
                t_group = list(fixed[start : start + size])
                s_group = list(flat[start : start + size])
                start += size
                pair_losses, metrics = loss.compute(
                    t_group, s_group, training=True
                )
                value = sum(
                    w * keras.ops.mean(v)
                    for w, v in zip(loss.pair_weights, pair_losses)
                )
                total = total + weights[loss.name] * value
                logged = logged + sum(
                    keras.ops.mean(m) for m in metrics.values()
                )
            # The metrics take no gradient; adding 0 * them keeps them in
            # the compiled computation.
            return total + 0.0 * keras.ops.stop_gradient(logged)

        results[
            f"{name} (Distiller's losses: connectors + metrics included)"
        ] = common.median_seconds(
            grad_step(
                fn,
                [v for group in t_feats for v in group],
                [v for group in s_feats for v in group],
                connector_variables,
            ),
            repeats,
        )
    return results


# --- NST scaling --------------------------------------------------------------


def nst_scaling(batch, repeats):
    from keras_kd.losses import neuron_selectivity_loss

    rows = []
    for side in (8, 16, 32):
        for channels in (16, 32, 64, 128, 256):
            rng = np.random.default_rng(0)
            t_value, s_value = (
                rng.standard_normal((batch, side, side, channels), np.float32)
                for _ in range(2)
            )

            def fn(fixed, tensors):
                return neuron_selectivity_loss(fixed[0], tensors[0])

            seconds = common.median_seconds(
                grad_step(fn, [t_value], [s_value]), repeats, warmup=1
            )
            flops = batch * channels * channels * side * side
            rows.append(
                dict(
                    hw=side * side,
                    channels=channels,
                    seconds=seconds,
                    ns_per_bc2hw=1e9 * seconds / flops,
                )
            )
            print(
                f"  NST C={channels:4d} HW={side * side:5d}: "
                f"{1e3 * seconds:8.2f} ms",
                flush=True,
            )
    return rows


# --- memory -------------------------------------------------------------------


def current_rss_mb():
    with open("/proc/self/statm", encoding="utf-8") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_child(name, size):
    s = SIZES[size]
    teacher, shape = make_models(s)
    data = batches(s)
    step, _ = build_step(name, s, teacher, shape)
    before = current_rss_mb()
    reset = True
    try:  # reset the high-water mark (VmHWM) so it covers the steps only
        with open("/proc/self/clear_refs", "w", encoding="utf-8") as f:
            f.write("5")
    except OSError:
        reset = False
    for i in range(s["warmup"] + s["memory_steps"]):
        step(*data[i % len(data)])
    peak = (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )  # KiB on Linux
    if reset:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) / 1024
    print(
        json.dumps(
            {
                "name": name,
                "peak_mb": peak,
                "before_steps_mb": before,
                "hwm_reset": reset,
                "ru_maxrss_mb": resource.getrusage(
                    resource.RUSAGE_SELF
                ).ru_maxrss
                / 1024,
            }
        )
    )


def measure_memory(size, s, names):
    results = {}
    for name in names:
        out = subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                "--size",
                size,
                "--backend",
                BACKEND,
                "--memory-child",
                name,
                "--dtype-policy",
                keras.config.dtype_policy().name,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        lines = [
            line for line in out.stdout.splitlines() if line.startswith("{")
        ]
        if out.returncode or not lines:
            print(out.stderr[-2000:])
            raise RuntimeError(f"memory child {name} failed")
        results[name] = json.loads(lines[-1])
        peak, before = (
            results[name]["peak_mb"],
            results[name]["before_steps_mb"],
        )
        print(
            f"  {name:18s} peak RSS {peak:7.0f} MB (+{peak - before:.0f} MB "
            "over the RSS after building)",
            flush=True,
        )
    return results


# --- report -------------------------------------------------------------------


def plot(path, medians, floor):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    names = [n for n in CONFIGS if CONFIGS[n][0] != "floor" and n in medians]
    colors = ["C0" if CONFIGS[n][0] == "keras_kd" else "C1" for n in names]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.bar(names, [1e3 * medians[n] for n in names], color=colors)
    ax.axhline(1e3 * floor, color="k", ls="--", lw=1, label="floor (a)+(b)")
    ax.axhline(1.05e3 * floor, color="grey", ls=":", lw=1, label="1.05 x floor")
    ax.set_ylabel("median step time (ms)")
    ax.set_title("keras_kd (blue) and keras.distillation (orange)")
    ax.tick_params(axis="x", rotation=30)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _results_stem(size, backend, methods=False):
    suffix = "" if backend == "tensorflow" else f"_{backend}"
    base = {"procedures": "speed_procedures", True: "speed_methods"}.get(
        methods, "speed"
    )
    return os.path.join(
        common.RESULTS_DIR,
        (base if size == "default" else f"{base}_{size}") + suffix,
    )


def _runs_of(size, backend, methods=False):
    """A backend's committed runs of one size: the main file, then reruns.

    Reruns are written with `--output benchmarks/results/STEM_runK`.
    """
    stem = _results_stem(size, backend, methods)
    paths = [stem + ".json"] + sorted(
        glob.glob(stem + "_run*.json"),
        key=lambda p: int(re.search(r"_run(\d+)\.json$", p).group(1)),
    )
    runs = []
    for path in paths:
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                runs.append((os.path.basename(path)[:-5], json.load(f)))
    return runs


def _ratio_cell(values):
    """One run: its ratio; several: the median and the range."""
    if not values:
        return "not run"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return (
        f"{float(np.median(values)):.3f} ({min(values):.3f}–{max(values):.3f})"
    )


def compare_backends(size, methods=False):
    """The three backends' results of one size, ratios side by side
    (`methods`: the runs of `--configs methods`)."""
    runs = {}
    for backend in ("tensorflow", "jax", "torch"):
        found = _runs_of(size, backend, methods)
        if found:
            runs[backend] = found
    if not runs:
        print(f"no speed results of size {size!r} to compare")
        return 1
    header = ["config", "what"] + [
        f"× floor, {b}" + (f" ({len(r)} runs)" if len(r) > 1 else "")
        for b, r in runs.items()
    ]
    rows = [
        ["floor", "(a) + (b), ms"]
        + [
            " / ".join(f"{1e3 * r['floor']:.1f}" for _, r in found)
            for found in runs.values()
        ]
    ]
    for name, (family, what) in CONFIGS.items():
        if family == "floor" or not any(
            name in r["medians"] for found in runs.values() for _, r in found
        ):
            continue
        rows.append(
            [name, what]
            + [
                _ratio_cell(
                    [
                        r["medians"][name] / r["floor"]
                        for _, r in found
                        if name in r["medians"]
                    ]
                )
                for found in runs.values()
            ]
        )
    if any(
        r.get("floor_with_connectors")
        for found in runs.values()
        for _, r in found
    ):
        rows.append(
            ["ab_kd", "AB + KD against (a') + (b), the floor with connectors"]
            + [
                _ratio_cell(
                    [
                        r["medians"]["ab_kd"] / r["floor_with_connectors"]
                        for _, r in found
                        if r.get("floor_with_connectors")
                    ]
                )
                for found in runs.values()
            ]
        )
    print()
    common.print_table(header, rows)
    # TensorFlow's stem has no backend suffix: speed[_SIZE]_backends.
    stem = _results_stem(size, "tensorflow", methods) + "_backends"
    lines = [
        f"# Step time against the floor, by Keras backend ({size} sizes)",
        "",
        "Command (from the repository root):",
        "",
        "```bash",
        common.command_line(),
        "```",
        "",
        "Read from the results files named below (each holds its command, "
        "machine and versions). Each backend's ratios are to its own floor, "
        "(a) the student's train step plus (b) the teacher's inference, "
        "timed in the same process; the setup is in those files. Where a "
        "backend has several runs (separate processes, one after another), "
        "a cell gives the median of their ratios and, in brackets, the "
        "lowest and highest; the floor row lists each run's floor.",
        "",
    ]
    lines += common.markdown_table(header, rows)
    lines += [
        "",
        "| backend | file | started (UTC) | load at start, end | note |",
    ]
    lines += ["| --- | --- | --- | --- | --- |"]
    for backend, found in runs.items():
        for name, r in found:
            start, end = r.get("load_at_start"), r.get("load_at_end")
            load = (
                f"{start[0]:.2f}, {end[0]:.2f}"
                if start and end
                else "in the .md"
            )
            lines.append(
                f"| {backend} | `{name}.md` | {r.get('started', 'in the .md')}"
                f" | {load} | {r.get('note', '')} |"
            )
    common.write_text(stem + ".md", lines)
    print(f"\nwrote {stem}.md")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, ~1.5 min"
    )
    parser.add_argument("--size", choices=sorted(SIZES), default=None)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        default=BACKEND,
        help="Keras backend (default: KERAS_BACKEND or tensorflow)",
    )
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--note",
        default="",
        help="a sentence on the machine's load, written into the results file",
    )
    parser.add_argument("--output", default=None)
    parser.add_argument(
        "--dtype-policy",
        default=None,
        help="Keras dtype policy for every model, e.g. mixed_bfloat16 "
        "(default: float32)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="timing rounds (default: 8, or 3 with --quick); more rounds "
        "steady the medians on a loaded machine",
    )
    parser.add_argument(
        "--configs",
        default=None,
        help="run only these configurations (comma-separated; the floors "
        "always run), or 'methods' for every registry method beyond the "
        "hand-written ones, with KD beside them, or 'procedures' (BSS, RCO "
        "and KD); skips the loss-math and NST sections and writes "
        "results/speed_methods[_SIZE][_BACKEND] (speed_procedures...)",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run nothing: put the committed results of the three backends "
        "(this size) side by side in results/speed[_SIZE]_backends.md (with "
        "--configs methods: results/speed_methods[_SIZE]_backends.md)",
    )
    args = parser.parse_args(argv)
    size = args.size or ("quick" if args.quick else "default")
    if args.compare:
        return compare_backends(
            size,
            methods="procedures"
            if args.configs == "procedures"
            else args.configs == "methods",
        )
    if args.dtype_policy:
        keras.config.set_dtype_policy(args.dtype_policy)
    if args.memory_child:
        memory_child(args.memory_child, size)
        return 0
    s = dict(SIZES[size])
    if args.rounds is not None:
        if args.rounds < 1:
            parser.error(f"--rounds must be >= 1; received {args.rounds}")
        s["rounds"] = args.rounds
    started = datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%d %H:%M"
    )
    load_at_start = os.getloadavg()
    wall = time.time()
    selected = configs_of(s)
    if args.configs:
        wanted = {
            "methods": ["kd", *REGISTRY_CONFIGS],
            "procedures": ["kd", *PROCEDURE_CONFIGS],
        }.get(args.configs) or [c for c in args.configs.split(",") if c]
        unknown = [c for c in wanted if c not in selected]
        if unknown:
            parser.error(
                f"unknown configurations {unknown}; this size runs {selected}"
            )
        floors = ["student", "teacher_inference"]
        if "ab_kd" in wanted:
            floors.append("student_connectors")
        selected = [c for c in selected if c in floors or c in wanted]
    stem = args.output or _results_stem(
        size,
        BACKEND,
        methods="procedures"
        if args.configs == "procedures"
        else bool(args.configs),
    )
    if args.dtype_policy and not args.output:
        stem += f"_{args.dtype_policy}"

    teacher, shape = make_models(s)
    student_params = new_student(s, shape).count_params()
    print(
        f"sizes {size}: {json.dumps(s)}; teacher {teacher.count_params():,} "
        "params, "
        f"student {student_params:,}",
        flush=True,
    )
    data = batches(s)
    built = {name: build_step(name, s, teacher, shape) for name in selected}
    steps = {name: b[0] for name, b in built.items()}
    print("timing steps (interleaved)", flush=True)
    times = time_interleaved(steps, data, s)
    medians = {n: float(np.median(v)) for n, v in times.items()}
    floor = medians["student"] + medians["teacher_inference"]

    math, nst = {}, []
    # The loss math reads the CIFAR pair's taps.
    if "pair" not in s and not args.configs:
        print("timing the loss math alone", flush=True)
        math = loss_math_times(s, teacher, shape, max(10, s["nst_repeats"]))
        math.update(
            distiller_loss_times(
                built, teacher, data[0], max(10, s["nst_repeats"])
            )
        )
        print("NST scaling", flush=True)
        nst = nst_scaling(s["batch"], s["nst_repeats"])
    memory = (
        {}
        if args.skip_memory
        else (
            print("peak memory (one subprocess each)", flush=True)
            or measure_memory(size, s, selected)
        )
    )
    routes = route_costs(teacher) if "rco_kd" in selected else None
    if routes:
        print(
            f"route: record an anchor {routes['record_ms']:.1f} ms, load one "
            f"{routes['load_ms']:.1f} ms ({routes['anchor_mb']:.2f} MiB)",
            flush=True,
        )
    load_at_end = os.getloadavg()

    header = [
        "config",
        "what",
        "median ms",
        "IQR ms",
        "steps",
        "× floor",
        "peak RSS MB",
        "Δ RSS MB",
    ]
    rows = []
    for name in selected:
        family, what = CONFIGS[name]
        v = 1e3 * np.asarray(times[name])
        q1, q3 = np.percentile(v, [25, 75])
        ratio = "—" if family == "floor" else f"{medians[name] / floor:.3f}"
        mem = memory.get(name)
        rows.append(
            [
                name,
                what,
                f"{1e3 * medians[name]:.1f}",
                f"{q1:.0f}–{q3:.0f}",
                len(v),
                ratio,
                f"{mem['peak_mb']:.0f}" if mem else "",
                f"{mem['peak_mb'] - mem['before_steps_mb']:.0f}" if mem else "",
            ]
        )
    rows.append(
        ["floor", "(a) + (b)", f"{1e3 * floor:.1f}", "", "", "1.000", "", ""]
    )
    print()
    common.print_table(header, rows)

    floor_connectors = (
        medians["student_connectors"] + medians["teacher_inference"]
        if "student_connectors" in medians
        else None
    )
    conn_header = ["config", "median ms", "floor with connectors ms", "×"]
    conn_rows = (
        [
            [
                "ab_kd",
                f"{1e3 * medians['ab_kd']:.1f}",
                f"{1e3 * floor_connectors:.1f}",
                f"{medians['ab_kd'] / floor_connectors:.3f}",
            ]
        ]
        if floor_connectors and "ab_kd" in medians
        else []
    )
    print()
    common.print_table(conn_header, conn_rows)

    vs = [
        [what, medians[a], medians[b]]
        for what, a, b in [
            ("KD", "kd", "keras_logits"),
            ("equal-shape feature MSE", "mse", "keras_feature"),
        ]
        if a in medians and b in medians
    ]
    vs_rows = [
        [w, f"{1e3 * a:.1f}", f"{1e3 * b:.1f}", f"{b / a:.2f}×"]
        for w, a, b in vs
    ]
    vs_header = [
        "workload",
        "keras_kd ms",
        "keras.distillation ms",
        "keras / keras_kd",
    ]
    print()
    common.print_table(vs_header, vs_rows)

    math_header = [
        "loss functions (forward + backward, fixed tensors)",
        "median ms",
        "config step − floor, ms",
    ]
    math_rows = []
    for name, sec in math.items():
        key = name.split(" ")[0]
        math_rows.append(
            [name, f"{1e3 * sec:.2f}", f"{1e3 * (medians[key] - floor):.1f}"]
        )
    print()
    common.print_table(math_header, math_rows)

    nst_header = ["H·W", "C", "ms (fwd + bwd)", "ns per B·C²·HW"]
    nst_rows = [
        [
            r["hw"],
            r["channels"],
            f"{1e3 * r['seconds']:.2f}",
            f"{r['ns_per_bc2hw']:.4f}",
        ]
        for r in nst
    ]
    print()
    common.print_table(nst_header, nst_rows)

    wall = time.time() - wall
    note = [args.note, ""] if args.note else []
    lines = common.header_markdown(
        "Step time and memory: keras_kd against the floor and "
        "keras.distillation "
        f"(Keras on {BACKEND})",
        started,
        note
        + [
            f"Load average (1, 5, 15 min) at start {load_at_start[0]:.2f} "
            f"{load_at_start[1]:.2f} {load_at_start[2]:.2f}, at end "
            f"{load_at_end[0]:.2f} "
            f"{load_at_end[1]:.2f} {load_at_end[2]:.2f}; wall time "
            f"{wall / 60:.1f} min.",
            "",
        ],
    )
    lines += [
        "## Setup",
        "",
        f"- Teacher {model_description(s, 'teacher')}, "
        f"{teacher.count_params():,} parameters; student "
        f"{model_description(s, 'student')}, {student_params:,} parameters; "
        "inputs "
        f"{s['batch']}×{s['image']}×{s['image']}×3 (the same {len(data)} "
        "random batches "
        "for every configuration), SGD with momentum, cross-entropy from "
        f"logits; dtype policy `{keras.config.dtype_policy().name}`.",
        "- Every training configuration runs `model.train_on_batch(x, y)` in a "
        "loop (one "
        "compiled `train_function` each; Keras's default `jit_compile` for the "
        "backend: "
        "XLA on TensorFlow and JAX, eager on PyTorch); `teacher_inference` is "
        "`teacher(x, training=False)` in a `tf.function` (TensorFlow), a "
        "`jax.jit` of "
        "`stateless_call` (JAX) or eager under `torch.no_grad()` (PyTorch), "
        "synchronised by fetching a scalar.",
        f"- {s['warmup']} warm-up steps each, then {s['rounds']} rounds; each "
        "round runs "
        f"{s['steps_per_round']} steps of every configuration, the order "
        "rotated (and "
        "reversed every other round). Medians over all "
        f"{s['rounds'] * s['steps_per_round']} timed steps; IQR = "
        "interquartile range.",
        "- Floor = median (a) + median (b): a student step and a teacher "
        "forward pass.",
        taps_description(s),
        "- Peak RSS: each configuration in its own subprocess (imports, build, "
        "then "
        f"{s['warmup'] + s['memory_steps']} steps including the first, traced "
        "one). "
        "The peak is the process's high-water mark `VmHWM` "
        "(/proc/self/status), reset "
        "(`/proc/self/clear_refs` = 5) after building so that it covers the "
        "steps only "
        "(importing TensorFlow alone peaks near 550 MB and would hide the "
        "differences; "
        "`resource.getrusage(RUSAGE_SELF).ru_maxrss` is the fallback where the "
        "reset is not "
        "allowed). Δ RSS = that peak minus the RSS just before the first step.",
        "",
        "## Step time",
        "",
    ]
    lines += common.markdown_table(header, rows)
    lines += ["", "![step time](" + os.path.basename(stem) + ".png)"]
    if conn_rows:
        lines += [
            "",
            "## AB + KD against the floor with its connectors",
            "",
            'AB\'s connectors (`connector="always"`, as the official code) '
            "are three trainable 1×1 conv + BN layers: compute the user "
            "asked for, which the plain floor leaves out. Their floor is "
            "(a') + (b).",
            "",
        ]
        lines += common.markdown_table(conn_header, conn_rows)
    if routes:
        kd_ms = 1e3 * medians["kd"]
        lines += [
            "",
            "## The route's own costs (route-constrained optimisation)",
            "",
            "Recording an anchor (`RouteRecorder`: the teacher's weights to a "
            "temporary file, fsync, rename, then the manifest replaced "
            "atomically) and loading one into the teacher (a stage change), "
            "medians of 5; an anchor is "
            f"{routes['anchor_mb']:.2f} MiB. Once per recorded epoch and "
            "once per stage, against a KD step of "
            f"{kd_ms:.1f} ms.",
            "",
        ]
        lines += common.markdown_table(
            ["what", "median ms", "× KD step"],
            [
                [
                    "record one anchor",
                    f"{routes['record_ms']:.1f}",
                    f"{routes['record_ms'] / kd_ms:.2f}",
                ],
                [
                    "load one anchor (stage change)",
                    f"{routes['load_ms']:.1f}",
                    f"{routes['load_ms'] / kd_ms:.2f}",
                ],
            ],
        )
    if vs_rows:
        lines += [
            "",
            "## keras_kd against keras.distillation (same student, teacher, "
            "batches)",
            "",
        ]
        lines += common.markdown_table(vs_header, vs_rows)
    if math:
        compiled = {
            "tensorflow": "one `tf.function`",
            "jax": "one `jax.jit` of `jax.value_and_grad`",
            "torch": "eager PyTorch autograd, as the train step runs",
        }[BACKEND]
        lines += [
            "",
            "## The loss math alone",
            "",
            "Forward + backward (gradient with respect to the student tensors "
            "and any connector) of the loss functions alone, on fixed teacher "
            "and student tensors of the real shapes, in "
            f"{compiled}; compare with each configuration's step time minus "
            "the floor.",
            "",
        ]
        lines += common.markdown_table(math_header, math_rows)
        lines += [
            "",
            "## Cost of `neuron_selectivity_loss` (polynomial kernel)",
            "",
            f"Batch {s['batch']}, C_T = C_S = C, forward + backward (gradient "
            "with "
            "respect to the student map), medians of "
            f"{s['nst_repeats']} calls. The matmul form costs O(B·C²·HW): the "
            "last "
            "column is roughly constant once the matmul dominates (small C is "
            "dominated by the O(B·C·HW) normalisation and fixed per-call "
            "costs).",
            "",
        ]
        lines += common.markdown_table(nst_header, nst_rows)
    common.write_text(stem + ".md", lines)
    with open(stem + ".json", "w", encoding="utf-8") as f:
        json.dump(
            {
                "sizes": s,
                "times": times,
                "medians": medians,
                "floor": floor,
                "floor_with_connectors": floor_connectors,
                "backend": BACKEND,
                "started": started,
                "note": args.note,
                "load_at_start": load_at_start,
                "load_at_end": load_at_end,
                "loss_math": math,
                "nst": nst,
                "memory": memory,
                "route": routes,
            },
            f,
            indent=1,
        )
    plot(stem + ".png", medians, floor)
    print(f"\nwrote {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
