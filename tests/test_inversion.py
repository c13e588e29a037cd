"""Teacher inversion (DeepInversion) and the synthesised pool.

Backend-neutral (tests/test_backends.py runs it under JAX and PyTorch too).
The objective is checked against float64 NumPy on the networks' own
features; behaviour: only the images train, teacher and student never
change, the images stay in the raw pixel range, the jitter is a circular
shift, each batch starts from a fresh optimizer, and bad teachers or
arguments fail before anything runs.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import to_numpy  # noqa: E402

from keras_kd.procedures import inversion as inversion_lib  # noqa: E402
from keras_kd.procedures.inversion import TeacherInversion  # noqa: E402
from keras_kd.procedures.synthesis import SynthesizedImages  # noqa: E402
from keras_kd.procedures.synthesis import synthesize  # noqa: E402

MEAN = np.array([100.0, 120.0, 140.0])
STD = np.array([40.0, 50.0, 60.0])


def _net(width, name, *, classes=5, softmax=False, bn=True):
    """Normalization -> (conv -> BN -> ReLU) x 2 -> GAP -> dense."""
    inputs = keras.Input((8, 8, 3), name="image")
    x = keras.layers.Normalization(
        mean=MEAN.tolist(), variance=(STD**2).tolist(), name="normalize"
    )(inputs)
    for i in (1, 2):
        x = keras.layers.Conv2D(width, 3, padding="same", name=f"conv{i}")(x)
        if bn:
            x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
        x = keras.layers.ReLU(name=f"relu{i}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(
        classes, activation="softmax" if softmax else None, name="logits"
    )(x)
    model = keras.Model(inputs, outputs, name=name)
    rng = np.random.default_rng(len(name))
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(size=width).astype("float32"))
            layer.moving_variance.assign(
                rng.uniform(0.5, 2.0, size=width).astype("float32")
            )
    return model


def _weights(model):
    return [to_numpy(v).copy() for v in model.variables]


def _softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _js(p, q):
    m = 0.5 * (p + q)
    return 0.5 * (np.sum(p * np.log(p / m), -1) + np.sum(q * np.log(q / m), -1))


@pytest.mark.parametrize("softmax", [False, True])
def test_objective_equals_the_weighted_float64_terms(softmax):
    keras.utils.set_random_seed(1)
    teacher = _net(6, "teacher", softmax=softmax)
    student = _net(3, "student")
    weights = dict(
        feature_weight=2.0,
        first_feature_multiplier=3.0,
        tv_weight=0.01,
        l2_weight=0.1,
        adaptive_weight=0.5,
        temperature=3.0,
    )
    inversion = TeacherInversion(
        teacher,
        batch_size=4,
        student=student,
        jitter=0,
        flip=False,
        seed=0,
        **weights,
    )
    targets = np.array([0, 1, 2, 4])
    inversion.reset(targets)
    total = float(to_numpy(inversion.compute_loss(y_pred=inversion(None))))

    z = to_numpy(inversion.images).astype(np.float64)
    raw = (MEAN + STD * z).astype("float32")
    bn_layers = [teacher.get_layer("bn1"), teacher.get_layer("bn2")]
    pre = teacher.get_layer("logits")
    probe = keras.Model(
        teacher.input,
        [layer.input for layer in bn_layers] + [pre.input],
    )
    *bn_inputs, pooled = [
        np.asarray(to_numpy(t), np.float64) for t in probe(raw)
    ]
    kernel, bias = (np.asarray(to_numpy(v), np.float64) for v in pre.weights)
    logits = pooled @ kernel + bias
    target = np.mean(-np.log(_softmax(logits)[np.arange(4), targets]))
    features = 0.0
    for i, (layer, x) in enumerate(zip(bn_layers, bn_inputs)):
        flat = x.reshape(-1, x.shape[-1])
        mean, var = flat.mean(0), flat.var(0)
        term = np.linalg.norm(
            mean - to_numpy(layer.moving_mean).astype(np.float64)
        ) + np.linalg.norm(
            var - to_numpy(layer.moving_variance).astype(np.float64)
        )
        features += (3.0 if i == 0 else 1.0) * term
    diffs = [
        z[:, :, :-1] - z[:, :, 1:],
        z[:, :-1] - z[:, 1:],
        z[:, 1:, :-1] - z[:, :-1, 1:],
        z[:, :-1, :-1] - z[:, 1:, 1:],
    ]
    tv = sum(np.sqrt(np.sum(d**2)) for d in diffs)
    l2 = np.sqrt(np.sum(z**2))
    student_logits = np.asarray(to_numpy(student(raw)), np.float64)
    adaptive = 1.0 - np.mean(
        _js(_softmax(logits / 3.0), _softmax(student_logits / 3.0))
    )
    expected = target + 2.0 * features + 0.01 * tv + 0.1 * l2 + 0.5 * adaptive
    assert total == pytest.approx(expected, rel=1e-4)


def test_synthesis_changes_neither_network_and_keeps_the_pixel_range():
    keras.utils.set_random_seed(2)
    teacher = _net(6, "teacher")
    student = _net(3, "student")
    before = _weights(teacher), _weights(student)
    pool = synthesize(
        teacher,
        6,
        batch_size=4,
        iterations=3,
        learning_rate=0.5,
        student=student,
        seed=0,
        verbose=0,
    )
    after = _weights(teacher), _weights(student)
    for old, new in zip(before[0] + before[1], after[0] + after[1]):
        np.testing.assert_array_equal(old, new)
    assert pool.images.shape == (6, 8, 8, 3)
    assert pool.images.min() >= 0.0 and pool.images.max() <= 255.0
    np.testing.assert_array_equal(pool.labels, [0, 1, 2, 3, 4, 0])
    expected = np.argmax(to_numpy(teacher(pool.images)), -1)
    np.testing.assert_array_equal(pool.teacher_predictions, expected)
    assert pool.info["adaptive"] is True
    assert pool.info["iterations"] == 3
    assert pool.info["seconds_per_image"] > 0
    assert set(pool.info["final_terms"][0]) >= {
        "loss",
        "target_loss",
        "features_loss",
        "tv_loss",
        "l2_loss",
        "adaptive_loss",
    }


def test_only_the_images_train_and_they_move():
    teacher = _net(4, "teacher")
    inversion = TeacherInversion(teacher, batch_size=2, seed=3)
    assert inversion.trainable_variables == [inversion.images]
    inversion.compile(optimizer=keras.optimizers.Adam(0.1))
    inversion.reset([0, 1])
    start = to_numpy(inversion.images).copy()
    inversion.fit(np.zeros((3, 1), "float32"), batch_size=1, verbose=0)
    assert not np.allclose(to_numpy(inversion.images), start)


def test_each_batch_starts_from_fresh_images_and_optimizer_state():
    teacher = _net(4, "teacher")
    inversion = TeacherInversion(teacher, batch_size=2, seed=4)
    inversion.compile(optimizer=keras.optimizers.Adam(0.1))
    inversion.reset([0, 1])
    initial = [to_numpy(v).copy() for v in inversion.optimizer.variables]
    first = to_numpy(inversion.images).copy()
    inversion.fit(np.zeros((2, 1), "float32"), batch_size=1, verbose=0)
    assert int(to_numpy(inversion.optimizer.iterations)) == 2
    inversion.reset([2, 3])
    for value, v in zip(initial, inversion.optimizer.variables):
        np.testing.assert_array_equal(to_numpy(v), value)
    assert not np.allclose(to_numpy(inversion.images), first)
    np.testing.assert_array_equal(to_numpy(inversion.targets), [2, 3])


def test_images_start_and_stay_inside_the_pixel_range():
    teacher = _net(4, "teacher")
    inversion = TeacherInversion(
        teacher, batch_size=3, pixel_range=(90.0, 150.0), seed=5
    )
    inversion.compile(optimizer=keras.optimizers.Adam(5.0))
    inversion.reset([0, 1, 2])
    inversion.fit(np.zeros((2, 1), "float32"), batch_size=1, verbose=0)
    raw = to_numpy(inversion.raw_images())
    assert raw.min() >= 90.0 - 1e-3 and raw.max() <= 150.0 + 1e-3
    # The step of 5 normalised units pushed pixels onto both bounds.
    assert raw.min() < 90.5 and raw.max() > 149.5


@pytest.mark.parametrize("shift", [-2, -1, 0, 1, 2])
def test_jitter_is_a_circular_shift(shift):
    x = np.arange(2 * 5 * 4 * 1, dtype="float32").reshape(2, 5, 4, 1)
    for axis, size in ((1, 5), (2, 4)):
        out = inversion_lib._roll(
            keras.ops.convert_to_tensor(x),
            keras.ops.convert_to_tensor(shift, "int32"),
            axis,
            size,
        )
        np.testing.assert_array_equal(to_numpy(out), np.roll(x, shift, axis))


def test_units_are_those_the_teacher_normalises_to():
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="rescale")(inputs)
    x = keras.layers.Normalization(
        mean=[0.5, 0.4, 0.3], variance=[0.04, 0.09, 0.16], name="norm"
    )(x)
    x = keras.layers.Conv2D(2, 3, name="conv")(x)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    teacher = keras.Model(inputs, keras.layers.Dense(3)(x))
    a, b = inversion_lib.input_affine_of(teacher)
    raw = np.random.default_rng(0).uniform(0, 255, (2, 4, 4, 3))
    normalised = keras.Model(inputs, teacher.get_layer("norm").output)
    np.testing.assert_allclose(
        a * raw + b,
        to_numpy(normalised(raw.astype("float32"))),
        rtol=1e-5,
        atol=1e-5,
    )
    inversion = TeacherInversion(teacher, batch_size=2, seed=0)
    z = (a * raw + b).astype("float32")
    np.testing.assert_allclose(
        to_numpy(inversion.raw_images(z)), raw, rtol=1e-4, atol=1e-3
    )


def test_pool_saves_loads_and_never_replaces_a_file(tmp_path):
    rng = np.random.default_rng(0)
    pool = SynthesizedImages(
        rng.uniform(0, 255, (5, 8, 8, 3)),
        [0, 1, 2, 3, 4],
        [0, 1, 2, 0, 4],
        {"pixel_range": [0.0, 255.0], "seed": 0},
    )
    assert pool.teacher_agreement == pytest.approx(0.8)
    path = pool.save(tmp_path / "pool.npz")
    back = SynthesizedImages.load(path)
    np.testing.assert_array_equal(back.images, pool.images)
    np.testing.assert_array_equal(back.labels, pool.labels)
    assert back.info == pool.info
    kept = (tmp_path / "pool.npz").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pool.save(tmp_path / "pool.npz")
    assert (tmp_path / "pool.npz").read_bytes() == kept
    with pytest.raises(ValueError, match="ends in .npz|ending in .npz"):
        pool.save(tmp_path / "pool.bin")
    joined = pool + back
    assert len(joined) == 10


@pytest.mark.parametrize(
    "build, kwargs, error, match",
    [
        (lambda: _net(4, "plain", bn=False), {}, ValueError, "has none"),
        (
            lambda: _net(4, "teacher"),
            {"adaptive_weight": 1.0},
            ValueError,
            "needs the student",
        ),
        (lambda: _net(4, "teacher"), {"jitter": 8}, ValueError, "jitter"),
        (
            lambda: _net(4, "teacher"),
            {"pixel_range": (1.0, 1.0)},
            ValueError,
            "low < high",
        ),
        (
            lambda: _net(4, "teacher"),
            {"tv_mode": "diagonal"},
            ValueError,
            "tv_mode",
        ),
    ],
)
def test_bad_teachers_and_arguments_fail_before_anything_runs(
    build, kwargs, error, match
):
    with pytest.raises(error, match=match):
        TeacherInversion(build(), batch_size=2, **kwargs)


def test_a_teacher_without_a_fixed_image_input_is_refused():
    inputs = keras.Input((None, None, 3))
    x = keras.layers.Conv2D(2, 3)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    teacher = keras.Model(inputs, keras.layers.Dense(3)(x), name="any_size")
    with pytest.raises(ValueError, match="static shape"):
        TeacherInversion(teacher)

    class Subclassed(keras.Model):
        def call(self, x):
            return x

    with pytest.raises(ValueError, match="functional or Sequential"):
        TeacherInversion(Subclassed())


def test_target_classes_outside_the_teacher_are_refused():
    inversion = TeacherInversion(_net(4, "teacher"), batch_size=2)
    with pytest.raises(ValueError, match=r"\[0, 5\)"):
        inversion.reset([0, 5])
    with pytest.raises(ValueError, match="expected 2 target classes"):
        inversion.reset([0, 1, 2])


def test_data_free_rounds_train_the_student_and_never_the_teacher():
    from keras_kd import Distiller
    from keras_kd.losses import LogitsDistillation
    from keras_kd.procedures import distill_data_free

    keras.utils.set_random_seed(6)
    teacher = _net(6, "teacher")
    student = _net(3, "student")
    distiller = Distiller(teacher, student, [LogitsDistillation()])
    distiller.compile(optimizer=keras.optimizers.Adam(0.01))
    before_teacher, before_student = _weights(teacher), _weights(student)
    pool, history = distill_data_free(
        distiller,
        rounds=2,
        images_per_round=4,
        epochs_per_round=1,
        batch_size=4,
        seed=0,
        synthesis={"iterations": 2, "batch_size": 4},
        verbose=0,
    )
    for old, new in zip(before_teacher, _weights(teacher)):
        np.testing.assert_array_equal(old, new)
    assert any(
        not np.array_equal(old, new)
        for old, new in zip(before_student, _weights(student))
    )
    assert len(pool) == 8
    assert [part["adaptive"] for part in pool.info["parts"]] == [True, True]
    assert len(history["loss"]) == 2
    assert np.all(np.isfinite(history["loss"]))
    with pytest.raises(ValueError, match="sets `epochs` itself"):
        distill_data_free(distiller, epochs=3)
