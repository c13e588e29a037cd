"""Function matching: one augmented batch per step for teacher and student.

Backend-neutral (tests/test_backends.py runs it under JAX and PyTorch too).
The augmentations equal float64 NumPy versions (CutMix's box as the official
code draws it); behaviour: both networks receive the identical augmented
batch (a hint loss on their inputs is exactly 0, and not 0 when each network
draws its own), each runs once per step, the teacher stays frozen, the task
loss mixes both examples' labels, evaluation sees the data unchanged, the
option saves with the distiller, and bad settings fail before training.
2 replicas = 1 device: tests/test_distribute.py.
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from builders import StepCounter  # noqa: E402
from builders import cnn  # noqa: E402
from builders import data  # noqa: E402
from builders import sparse_ce  # noqa: E402

import keras_kd  # noqa: E402
from keras_kd import Distiller  # noqa: E402
from keras_kd import FunctionMatching  # noqa: E402
from keras_kd import function_matching as fm  # noqa: E402
from keras_kd import losses  # noqa: E402


def _input_hint():
    # The mean squared difference of what each network received.
    return losses.FitNetsHint("counter", "counter", connector="never")


def _distiller(matching, **kwargs):
    keras.utils.set_random_seed(0)
    # Counted in a variable: also inside compiled steps.
    teacher = cnn(8, "teacher", counter=StepCounter)
    student = cnn(4, "student", fused=True, counter=StepCounter)
    return Distiller(
        teacher,
        student,
        [losses.LogitsDistillation(temperature=1.0), _input_hint()],
        function_matching=matching,
        **kwargs,
    )


# --- the augmentations against float64 NumPy ---------------------------------


def test_crop_flip_and_mixup_equal_numpy():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(5, 6, 7, 2))
    offsets = rng.integers(0, 7, size=(5, 2))
    padded = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
    expected = np.stack(
        [padded[i, r : r + 6, c : c + 7] for i, (r, c) in enumerate(offsets)]
    )
    crops = fm.random_crop(
        keras.ops.convert_to_tensor(x, "float32"), offsets, 3
    )
    np.testing.assert_allclose(to_numpy(crops), expected, atol=1e-6)

    flips = np.array([True, False, True, True, False])
    expected = np.where(flips[:, None, None, None], x[:, :, ::-1], x)
    flipped = fm.flip_examples(keras.ops.convert_to_tensor(x, "float32"), flips)
    np.testing.assert_allclose(to_numpy(flipped), expected, atol=1e-6)

    partner = np.roll(x, 1, axis=0)
    mixed = fm.mixup(
        keras.ops.convert_to_tensor(x, "float32"),
        keras.ops.convert_to_tensor(partner, "float32"),
        0.3,
    )
    np.testing.assert_allclose(
        to_numpy(mixed), 0.3 * x + 0.7 * partner, atol=1e-6
    )


def _official_cutmix_box(height, width, lam, cy, cx):
    # CutMix's official `rand_bbox` (clovaai/CutMix-PyTorch, train.py), with
    # the centre given instead of drawn.
    cut_rat = np.sqrt(1.0 - lam)
    cut_w, cut_h = int(width * cut_rat), int(height * cut_rat)
    x1, x2 = (
        np.clip(cx - cut_w // 2, 0, width),
        np.clip(cx + cut_w // 2, 0, width),
    )
    y1, y2 = (
        np.clip(cy - cut_h // 2, 0, height),
        np.clip(cy + cut_h // 2, 0, height),
    )
    mask = np.zeros((height, width))
    mask[y1:y2, x1:x2] = 1.0
    return mask


@pytest.mark.parametrize(
    "lam, centre", [(0.7, (0.5, 0.5)), (0.2, (0.05, 0.9)), (0.95, (0.99, 0.0))]
)
def test_cutmix_box_equals_the_official_code(lam, centre):
    height, width = 9, 12
    mask = fm.cutmix_mask(
        height, width, lam, keras.ops.convert_to_tensor(centre, "float32")
    )
    cy, cx = int(centre[0] * height), int(centre[1] * width)
    expected = _official_cutmix_box(height, width, lam, cy, cx)
    np.testing.assert_array_equal(to_numpy(mask)[0, :, :, 0], expected)


# --- behaviour ---------------------------------------------------------------


def test_both_networks_see_the_same_augmented_batch_once_per_step():
    matching = FunctionMatching(mixup_alpha=1.0, cutmix_alpha=1.0, seed=3)
    distiller = _distiller(matching)
    # The teacher's weights and BatchNormalization statistics (not its
    # step counter).
    frozen = [w for w in distiller.teacher.weights if "runs" not in w.path]
    teacher_before = [to_numpy(w) for w in frozen]
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y = data(n=12)
    # Warm-up: the first fit may also run the networks on symbolic inputs to
    # infer shapes; count the steps of the second.
    distiller.fit(x, y, batch_size=4, epochs=1, verbose=0)
    counters = [
        m.get_layer("counter").runs
        for m in (distiller.teacher, distiller.student)
    ]
    before = [float(to_numpy(c)) for c in counters]
    logs = distiller.fit(x, y, batch_size=4, epochs=2, verbose=0).history
    runs = [float(to_numpy(c)) - b for c, b in zip(counters, before)]
    assert runs == [6.0, 6.0]
    # Identical inputs: the hint on them is exactly 0 at every step.
    assert logs["fitnets_hint_loss"] == [0.0, 0.0]
    for old, new in zip(teacher_before, frozen):
        np.testing.assert_array_equal(old, to_numpy(new))
    # The batch was augmented: the draws change the images.
    augmented, lam = matching.augment(x, keras.random.SeedGenerator(3))
    assert np.max(np.abs(to_numpy(augmented) - x)) > 0.1
    assert 0.0 <= float(to_numpy(lam)) <= 1.0
    # Evaluation sees the data unchanged (and the inputs agree again).
    evaluation = distiller.evaluate(x, y, verbose=0, return_dict=True)
    assert evaluation["fitnets_hint_loss"] == 0.0


def test_the_hint_detects_networks_that_draw_their_own_augmentations():
    """The control of the test above: a step where each network draws its
    own augmentation gives a hint loss above 0."""
    distiller = _distiller(FunctionMatching(mixup_alpha=0.0, seed=3))

    def draw_again(inputs, training, network=None):
        if not training:
            return inputs
        augmented, lam = distiller.function_matching.augment(
            inputs, distiller._augment_seed
        )
        distiller._augmented.step.lam = lam
        return augmented

    distiller._step_inputs = draw_again
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y = data(n=8)
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert logs["fitnets_hint_loss"][0] > 1e-3


def test_training_calls_outside_a_step_augment_their_own_inputs():
    """A network that runs again without a step between starts a new
    augmented batch: the second call sees its own inputs, not the first
    call's batch."""
    distiller = _distiller(FunctionMatching(seed=3))
    x, y = data(n=8)
    first = to_numpy(distiller(x, training=True)[0])
    second = to_numpy(distiller(x[::-1] * 2.0 + 1.0, training=True)[0])
    assert np.max(np.abs(first - second)) > 1e-3
    # Inside a step, the teacher then reads the student's batch (the hint on
    # the networks' inputs is 0), and the step empties it.
    distiller.compile(optimizer="adam", loss=sparse_ce())
    logs = distiller.fit(x, y, batch_size=8, epochs=1, verbose=0).history
    assert logs["fitnets_hint_loss"] == [0.0]


def test_task_loss_mixes_both_examples_labels():
    distiller = _distiller(FunctionMatching(crop_padding=0, flip=False))
    distiller.compile(optimizer="adam", loss=sparse_ce())
    rng = np.random.default_rng(2)
    logits = rng.normal(size=(6, 5))
    y = rng.integers(0, 5, size=6)
    distiller._augmented.step.lam = keras.ops.convert_to_tensor(0.3, "float32")
    value = distiller._task_loss(
        keras.ops.convert_to_tensor(y),
        keras.ops.convert_to_tensor(logits, "float32"),
        None,
        True,
    )
    distiller._clear_step_inputs()
    log_p = logits - np.log(np.sum(np.exp(logits), axis=1, keepdims=True))
    own = -log_p[np.arange(6), y]
    partner = -log_p[np.arange(6), np.roll(y, 1)]
    expected = np.mean(0.3 * own + 0.7 * partner)
    np.testing.assert_allclose(float(to_numpy(value)), expected, rtol=1e-5)


def test_saved_with_the_distiller_and_trains_on_tf_data(tmp_path):
    matching = FunctionMatching(crop_padding=2, cutmix_alpha=0.5, seed=5)
    distiller = _distiller(matching)
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y = data(n=8)
    # A TensorFlow data pipeline (keras_kd.data's), on every backend.
    dataset = keras_kd.data.make_dataset(x, y, batch_size=4, rescale=False)
    distiller.fit(dataset, epochs=1, verbose=0)
    path = str(tmp_path / "distiller.keras")
    distiller.save(path)
    loaded = keras.saving.load_model(
        path, custom_objects={"StepCounter": StepCounter}
    )
    assert loaded.function_matching.get_config() == matching.get_config()
    # The seed's state is saved: a resumed run draws on where it stopped.
    state = to_numpy(distiller._augment_seed.state)
    assert state[1] > 0
    np.testing.assert_array_equal(to_numpy(loaded._augment_seed.state), state)
    np.testing.assert_allclose(
        loaded.predict(x, verbose=0),
        distiller.student.predict(x, verbose=0),
        atol=1e-5,
    )
    loaded.fit(dataset, epochs=1, verbose=0)


def test_bad_settings_fail_before_training():
    with pytest.raises(ValueError, match="no augmentation"):
        FunctionMatching(crop_padding=0, flip=False, mixup_alpha=0)
    with pytest.raises(ValueError, match="crop_padding"):
        FunctionMatching(crop_padding=-1)
    with pytest.raises(TypeError, match="mixup_alpha"):
        FunctionMatching(mixup_alpha="1")
    with pytest.raises(ValueError, match="cutmix_alpha"):
        FunctionMatching(cutmix_alpha=float("nan"))
    with pytest.raises(TypeError, match="FunctionMatching"):
        _distiller({"mixup_alpha": 1.0})
    teacher, student = cnn(8, "teacher"), cnn(4, "student")
    dkd = losses.DecoupledKnowledgeDistillation()
    with pytest.raises(ValueError, match="reads the labels"):
        Distiller(teacher, student, [dkd], function_matching=FunctionMatching())
    # Crops and flips keep the labels: allowed with DKD.
    Distiller(
        teacher,
        student,
        [dkd],
        function_matching=FunctionMatching(mixup_alpha=0.0),
    )
    inputs = keras.Input((6,))
    flat = keras.Model(inputs, keras.layers.Dense(5)(inputs), name="flat")
    inputs = keras.Input((6,))
    flat_teacher = keras.Model(inputs, keras.layers.Dense(5)(inputs))
    kd = losses.LogitsDistillation()
    with pytest.raises(ValueError, match=r"takes shape \(None, 6\)"):
        Distiller(flat_teacher, flat, kd, function_matching=FunctionMatching())
    # Mixup alone works on any numeric input.
    Distiller(
        flat_teacher,
        flat,
        kd,
        function_matching=FunctionMatching(crop_padding=0, flip=False),
    )
    assert keras_kd.FunctionMatching is FunctionMatching
