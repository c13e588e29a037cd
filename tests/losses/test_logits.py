"""logits_distillation_loss vs a float64 NumPy reference, loop over classes.

Tolerance: rtol=1e-4, atol=1e-5 (float32 vs float64).
"""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from backend_utils import compiled  # noqa: E402
from backend_utils import compiled_unknown_batch  # noqa: E402
from backend_utils import dtype_name  # noqa: E402
from backend_utils import grad  # noqa: E402
from backend_utils import to_numpy  # noqa: E402
from backend_utils import value_and_grad  # noqa: E402
from keras import ops  # noqa: E402

from keras_kd.losses.logits import LogitsDistillation  # noqa: E402
from keras_kd.losses.logits import logits_distillation_loss  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


def np_softmax(z):
    z = np.asarray(z, np.float64)
    e = np.exp(z - z.max())
    return e / e.sum()


def np_kd_per_example(z_t, z_s, temperature):
    out = []
    for zt, zs in zip(z_t, z_s):
        p_t = np_softmax(zt / temperature)
        p_s = np_softmax(zs / temperature)
        kl = 0.0
        for k in range(len(p_t)):
            kl += p_t[k] * (np.log(p_t[k]) - np.log(p_s[k]))
        out.append(temperature**2 * kl)
    return np.array(out)


def random_logits(shape=(3, 10), scale=3.0, seed=0):
    rng = np.random.default_rng(seed)
    return (
        (scale * rng.normal(size=shape)).astype("float32"),
        (scale * rng.normal(size=shape)).astype("float32"),
    )


@pytest.mark.parametrize("temperature", [1.0, 2.5, 4.0, 4])
def test_matches_numpy(temperature):
    z_t, z_s = random_logits(seed=1)
    expected = np_kd_per_example(z_t, z_s, float(temperature))
    per_example = logits_distillation_loss(
        z_t, z_s, temperature, reduction="none"
    )
    assert tuple(per_example.shape) == (3,)
    assert dtype_name(per_example) == "float32"
    np.testing.assert_allclose(
        ops.convert_to_numpy(per_example), expected, rtol=RTOL, atol=ATOL
    )
    mean = logits_distillation_loss(z_t, z_s, temperature)
    assert tuple(mean.shape) == ()
    np.testing.assert_allclose(
        float(mean), expected.mean(), rtol=RTOL, atol=ATOL
    )


def test_default_temperature_is_1_and_the_paper_preset_4():
    z_t, z_s = random_logits(seed=2)
    np.testing.assert_allclose(
        float(logits_distillation_loss(z_t, z_s)),
        np_kd_per_example(z_t, z_s, 1.0).mean(),
        rtol=RTOL,
        atol=ATOL,
    )
    library, paper = LogitsDistillation(), LogitsDistillation(preset="paper")
    assert float(to_numpy(library.temperature)) == 1.0
    assert float(to_numpy(paper.temperature)) == 4.0
    assert (library.default_weight, paper.default_weight) == (1.0, 0.9)
    # An explicit temperature wins over the preset.
    explicit = LogitsDistillation(temperature=2.0, preset="paper")
    assert float(to_numpy(explicit.temperature)) == 2.0
    assert explicit.get_config()["preset"] == "paper"
    restored = LogitsDistillation.from_config(explicit.get_config())
    assert float(to_numpy(restored.temperature)) == 2.0
    assert restored.default_weight == 0.9


def test_large_logits_are_stable():
    z_t, z_s = random_logits(scale=60.0, seed=3)
    out = ops.convert_to_numpy(
        logits_distillation_loss(z_t, z_s, 1.0, reduction="none")
    )
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(
        out, np_kd_per_example(z_t, z_s, 1.0), rtol=RTOL, atol=1e-3
    )


def test_identical_logits_give_zero():
    z_t, _ = random_logits(seed=4)
    np.testing.assert_allclose(
        ops.convert_to_numpy(
            logits_distillation_loss(z_t, z_t, reduction="none")
        ),
        0.0,
        atol=1e-5,
    )


def test_temperature_as_variable():
    z_t, z_s = random_logits(seed=5)
    temperature = keras.Variable(2.0, trainable=False)
    np.testing.assert_allclose(
        float(logits_distillation_loss(z_t, z_s, temperature)),
        np_kd_per_example(z_t, z_s, 2.0).mean(),
        rtol=RTOL,
        atol=ATOL,
    )
    temperature.assign(5.0)
    np.testing.assert_allclose(
        float(logits_distillation_loss(z_t, z_s, temperature)),
        np_kd_per_example(z_t, z_s, 5.0).mean(),
        rtol=RTOL,
        atol=ATOL,
    )
    # Tensors are not validated (their value may be unknown when traced).
    logits_distillation_loss(z_t, z_s, ops.convert_to_tensor(3.0))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_inputs(dtype):
    z_t, z_s = random_logits(seed=6)
    t_low, s_low = ops.cast(z_t, dtype), ops.cast(z_s, dtype)
    out = logits_distillation_loss(t_low, s_low, 4.0)
    assert dtype_name(out) == "float32"
    reference = logits_distillation_loss(
        ops.cast(t_low, "float32"), ops.cast(s_low, "float32"), 4.0
    )
    np.testing.assert_allclose(float(out), float(reference), rtol=1e-6)
    np.testing.assert_allclose(
        float(out), np_kd_per_example(z_t, z_s, 4.0).mean(), rtol=5e-2
    )


def test_gradients():
    z_t, z_s = random_logits(seed=7)
    temperature = 4.0
    _, (t_grad, s_grad) = value_and_grad(
        lambda a, b: logits_distillation_loss(a, b, temperature), z_t, z_s
    )
    assert np.all(t_grad == 0)  # teacher is a constant (stop_gradient)
    assert np.all(np.isfinite(s_grad)) and np.all(s_grad != 0)
    # d/dz_s [T^2 KL(p_t || p_s)] = T * (p_s - p_t); mean over B examples.
    expected = (
        np.stack(
            [
                temperature
                * (np_softmax(zs / temperature) - np_softmax(zt / temperature))
                for zt, zs in zip(z_t, z_s)
            ]
        )
        / z_t.shape[0]
    )
    np.testing.assert_allclose(s_grad, expected, rtol=1e-3, atol=1e-6)


def test_compiles_with_unknown_batch_and_xla():
    z_t, z_s = random_logits(seed=8)

    def fn(a, b):
        return logits_distillation_loss(a, b, 4.0, reduction="none")

    np.testing.assert_allclose(
        compiled_unknown_batch(fn, z_t, z_s),
        np_kd_per_example(z_t, z_s, 4.0),
        rtol=RTOL,
        atol=ATOL,
    )


@pytest.mark.parametrize("temperature", [0, 0.0, -1.0])
def test_bad_temperature(temperature):
    z_t, z_s = random_logits()
    with pytest.raises(ValueError) as info:
        logits_distillation_loss(z_t, z_s, temperature)
    assert f"temperature={temperature!r}" in str(info.value)
    assert "> 0" in str(info.value)


def test_shape_and_rank_errors():
    with pytest.raises(ValueError, match=r"\(3, 10\).*\(3, 5\)"):
        logits_distillation_loss(np.zeros((3, 10)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match=r"\(3, 2, 10\)"):
        logits_distillation_loss(np.zeros((3, 2, 10)), np.zeros((3, 2, 10)))
    with pytest.raises(ValueError, match=r"received shape \(10,\)"):
        logits_distillation_loss(np.zeros((10,)), np.zeros((10,)))


def test_bad_reduction():
    z_t, z_s = random_logits()
    with pytest.raises(ValueError, match="reduction='batch'"):
        logits_distillation_loss(z_t, z_s, reduction="batch")


# --- temperature range and float32 precision --------------------------------


def decimal_kd_per_example(z_t, z_s, temperature, digits=50):
    """T^2 * KL by the textbook formula in 50-digit decimal arithmetic.

    Independent of the implementation (plain softmax / log, no identity) and
    exact to far below float32 resolution for the float32 inputs, so it is
    the reference where float64 itself is round-off (KL ~ 1e-15 rows).
    """
    import decimal

    with decimal.localcontext() as context:
        context.prec = digits
        T = decimal.Decimal(float(temperature))
        out = []
        for zt, zs in zip(z_t, z_s):
            a = [decimal.Decimal(float(v)) / T for v in zt]
            b = [decimal.Decimal(float(v)) / T for v in zs]
            lse_a = sum((v.exp() for v in a), decimal.Decimal(0)).ln()
            lse_b = sum((v.exp() for v in b), decimal.Decimal(0)).ln()
            kl = sum(
                (
                    (x - lse_a).exp() * ((x - lse_a) - (y - lse_b))
                    for x, y in zip(a, b)
                ),
                decimal.Decimal(0),
            )
            out.append(float(T * T * kl))
    return np.array(out)


def range_logits():
    """Far pairs, near pairs (small differences: the large-T regime), a
    pure shift (KL = 0 up to input rounding) and an identical pair."""
    rng = np.random.default_rng(11)
    z_t = (3.0 * rng.normal(size=(8, 10))).astype("float32")
    z_s = (3.0 * rng.normal(size=(8, 10))).astype("float32")
    z_s[2] = z_t[2]
    z_s[3] = z_t[3] + 0.01
    z_s[4] = 5.0 * z_t[4]
    z_s[5] = z_t[5] + (0.1 * rng.normal(size=10)).astype("float32")
    z_s[6] = z_t[6] + (1e-3 * rng.normal(size=10)).astype("float32")
    return z_t, z_s


# Every temperature the loss accepts, its two ends included.
RANGE_TEMPERATURES = [1e-4, 1e-2, 0.5, 1.0, 4.0, 20.0, 100.0, 1e3, 1e4]


@pytest.mark.parametrize("temperature", RANGE_TEMPERATURES)
def test_matches_decimal_reference_over_the_accepted_range(temperature):
    # Tolerance: rtol=1e-4 (float32 vs 50 digits; measured <= 3e-4 only on
    # the ~1e-15 shift row, covered by atol) and atol=1e-10. The textbook
    # float32 formula fails here from T = 1e3 (negative or ~100% off).
    z_t, z_s = range_logits()
    expected = decimal_kd_per_example(z_t, z_s, temperature)
    got = ops.convert_to_numpy(
        logits_distillation_loss(z_t, z_s, temperature, reduction="none")
    )
    assert np.all(got >= 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-10)


@pytest.mark.parametrize("temperature", [1e3, 1e4, 1e6, 1e9])
def test_never_negative_even_when_a_variable_holds_a_huge_temperature(
    temperature,
):
    # Near-equal logits, where today's float32 cancellation is worst. A plain
    # keras.Variable is not range-checked, so the math must hold beyond 1e4.
    rng = np.random.default_rng(12)
    z_t = (3.0 * rng.normal(size=(64, 100))).astype("float32")
    z_s = z_t + (0.3 * rng.normal(size=(64, 100))).astype("float32")
    t = keras.Variable(temperature, trainable=False, dtype="float32")
    got = ops.convert_to_numpy(
        logits_distillation_loss(z_t, z_s, t, reduction="none")
    )
    assert np.all(np.isfinite(got)) and np.all(got >= 0.0)
    # The T -> infinity limit: 0.5 * Var_k(z_t - z_s) (logit matching).
    limit = 0.5 * np.var((z_t - z_s).astype(np.float64), axis=1)
    np.testing.assert_allclose(
        got, limit, rtol=2e-2 if temperature < 1e4 else 1e-3
    )


@pytest.mark.parametrize("temperature", RANGE_TEMPERATURES)
def test_gradients_over_the_accepted_range(temperature):
    # d/dz_s [T^2 KL] = T * (p_s - p_t) exactly; float64 softmax reference.
    z_t, z_s = range_logits()
    (s_grad,) = grad(
        lambda s_: ops.sum(
            logits_distillation_loss(z_t, s_, temperature, reduction="none")
        ),
        z_s,
    )
    expected = np.stack(
        [
            temperature
            * (np_softmax(zs / temperature) - np_softmax(zt / temperature))
            for zt, zs in zip(z_t.astype(np.float64), z_s.astype(np.float64))
        ]
    )
    assert np.all(np.isfinite(s_grad))
    np.testing.assert_allclose(
        s_grad, expected, rtol=0, atol=1e-5 * np.abs(expected).max()
    )


BAD_TEMPERATURES = [
    (float("nan"), ValueError, "finite"),
    (float("inf"), ValueError, "finite"),
    (-float("inf"), ValueError, "finite"),
    (1e30, ValueError, "<= 10000"),
    (1e6, ValueError, "<= 10000"),
    (1e-5, ValueError, ">= 0.0001"),
    (-2.0, ValueError, "> 0"),
    (True, TypeError, "bool"),
    (np.True_, TypeError, "bool"),
    ("4", TypeError, "real number"),
]


@pytest.mark.parametrize("value,error,pattern", BAD_TEMPERATURES)
def test_bad_temperature_rejected_by_the_function(value, error, pattern):
    z_t, z_s = random_logits()
    with pytest.raises(error, match=pattern) as info:
        logits_distillation_loss(z_t, z_s, value)
    assert f"temperature={value!r}" in str(info.value)


@pytest.mark.parametrize("value,error,pattern", BAD_TEMPERATURES)
def test_bad_temperature_rejected_wherever_it_is_set(value, error, pattern):
    from keras_kd.losses import LogitsDistillation

    with pytest.raises(error, match=pattern):
        LogitsDistillation(temperature=value)
    config = LogitsDistillation(temperature=2.0).get_config()
    config["temperature"] = value
    # Keras's from_config re-raises what the constructor raised as a
    # TypeError that quotes the message.
    with pytest.raises((error, TypeError), match=pattern):
        LogitsDistillation.from_config(config)
    kd = LogitsDistillation(temperature=2.0)
    with pytest.raises(error, match=pattern):
        kd.temperature.assign(value)
    with pytest.raises(error, match=pattern):
        kd.temperature = value
    if not isinstance(value, str):
        with pytest.raises(error, match=pattern):
            kd.temperature.assign(np.asarray(value))  # e.g. loaded weights
    if isinstance(value, float):
        with pytest.raises(error, match=pattern):
            kd.temperature.assign(ops.convert_to_tensor(value))  # eager
    assert float(to_numpy(kd.temperature)) == 2.0  # unchanged


def test_temperature_setter_and_assign_change_the_variable():
    from keras_kd.losses import LogitsDistillation

    kd = LogitsDistillation(temperature=4.0)
    variable = kd.temperature
    kd.temperature = 2.5
    assert kd.temperature is variable  # still the tracked, saved variable
    assert float(to_numpy(variable)) == 2.5
    kd.temperature.assign(np.float32(1.5))
    assert float(to_numpy(variable)) == 1.5
    assert kd.non_trainable_variables == [variable]
    assert variable.path == "logits_distillation/temperature"


def test_temperature_assigned_inside_a_compiled_function():
    # A symbolic value inside a traced function cannot be checked; it works.
    # Stateless, as Keras's JAX trainer (and any backend's
    # `StatelessScope`) assigns; `backend_utils.compiled` traces it on
    # TensorFlow and JAX, so the value is symbolic there (PyTorch: it runs
    # eagerly, so the value is checked, and valid).
    from keras_kd.losses import LogitsDistillation

    variable = LogitsDistillation(temperature=4.0).temperature

    def set_stateless(x):
        with keras.StatelessScope(
            state_mapping=[(variable, variable.value)]
        ) as scope:
            variable.assign(x)
        return scope.get_current_value(variable)

    new_value = compiled(set_stateless)(ops.convert_to_tensor(3.0))
    assert float(to_numpy(new_value)) == 3.0
    assert float(to_numpy(variable)) == 4.0  # stateless: not written back
    variable.assign(new_value)
    assert float(to_numpy(variable)) == 3.0


@pytest.mark.tensorflow_only(
    reason="a stateful assign inside tf.function (a graph-mode variable update)"
)
def test_temperature_assigned_inside_tf_function():
    import tensorflow as tf

    from keras_kd.losses import LogitsDistillation

    kd = LogitsDistillation(temperature=4.0)

    # A symbolic value inside a traced function cannot be checked; it works.
    @tf.function
    def set_in_graph(x):
        kd.temperature.assign(x)

    set_in_graph(tf.constant(3.0))
    assert float(to_numpy(kd.temperature)) == 3.0


def test_huge_kl_rows_are_rescaled_not_overflowed():
    # At T = 0.01 the teacher is one-hot on class 1 and the student puts
    # class 1 at (-2 - 9) / T = -1100 below its best class: KL = 1100 and
    # p_t * exp(-e) = exp(1100) would overflow float32; that row is
    # computed as M + log(exp(-M) + S exp(-M)). T^2 * KL = 0.01 * 11.
    z_t = np.array([[0.0, 5.0, -3.0]], "float32")
    z_s = np.array([[9.0, -2.0, 1.0]], "float32")
    loss, (s_grad,) = value_and_grad(
        lambda s_: logits_distillation_loss(z_t, s_, 0.01), z_s
    )
    np.testing.assert_allclose(float(loss), 0.11, rtol=1e-6)
    np.testing.assert_allclose(
        float(loss), decimal_kd_per_example(z_t, z_s, 0.01)[0], rtol=1e-6
    )
    # d/dz_s = T * (p_s - p_t) = 0.01 * ([1, 0, 0] - [0, 1, 0]).
    np.testing.assert_allclose(s_grad, [[0.01, -0.01, 0.0]], atol=1e-7)


@pytest.mark.parametrize("key", ["teacher_layer_name", "student_layer_name"])
def test_class_reads_logits_and_refuses_layer_names(key):
    # They used to be dropped silently; get_config never writes them.
    with pytest.raises(TypeError, match=f"takes no `{key}`.*FitNetsHint"):
        LogitsDistillation(**{key: "dense"})
