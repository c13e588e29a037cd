"""Backend-neutral test helpers: gradients, compilation, dtypes, subprocesses.

Tests that must hold on TensorFlow, JAX and PyTorch use these instead of
`tf.GradientTape` / `tf.function`; each helper picks the active backend's
own mechanism (`keras.backend.backend()`):

- `value_and_grad(fn, *args)`: `tf.GradientTape`, `jax.value_and_grad` or
  `torch.autograd.grad`;
- `compiled(fn)`: `tf.function(jit_compile=True)`, `jax.jit`, or (PyTorch)
  the function itself: `torch.compile` needs a C++ toolchain and minutes of
  CPU time, so PyTorch's compiled path is exercised by `Distiller.compile(
  jit_compile=True)` in the behaviour tests instead.
"""

import os

import keras
import numpy as np

BACKEND = keras.backend.backend()
BACKENDS = ("tensorflow", "jax", "torch")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)


def to_numpy(x):
    """A NumPy copy of a tensor or variable, on any backend.

    A variable is read through `.value`: `np.array(variable)` goes through
    Keras's `Variable.__array__`, which lacks NumPy 2's `copy` argument and
    warns on every call.
    """
    if isinstance(x, keras.Variable):
        x = x.value
    return np.array(keras.ops.convert_to_numpy(x))


def dtype_name(x):
    """`'float32'`, `'bfloat16'`, ... for a tensor of any backend."""
    return keras.backend.standardize_dtype(x.dtype)


def value_and_grad(fn, *args):
    """`(fn(*args), [d fn / d arg for arg in args])` as NumPy arrays.

    `fn` must return a scalar tensor. A gradient that does not depend on its
    argument is returned as zeros.
    """
    args = [np.asarray(a, "float32") for a in args]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            for t in tensors:
                tape.watch(t)
            value = fn(*tensors)
        grads = tape.gradient(value, tensors,
                              unconnected_gradients=tf.UnconnectedGradients.ZERO)
    elif BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(
            *[jnp.asarray(a) for a in args])
    elif BACKEND == "torch":
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in args]
        value = fn(*tensors)
        grads = torch.autograd.grad(value, tensors, allow_unused=True)
        grads = [torch.zeros_like(t) if g is None else g
                 for g, t in zip(grads, tensors)]
        grads = [g.detach() for g in grads]
        value = value.detach()
    else:  # pragma: no cover - numpy / openvino cannot train
        raise NotImplementedError(f"no gradients on the {BACKEND} backend")
    return to_numpy(value), [to_numpy(g) for g in grads]


def grad(fn, *args):
    """The gradients of `value_and_grad`, alone."""
    return value_and_grad(fn, *args)[1]


def compiled(fn):
    """`fn` compiled by the backend's compiler (see the module docstring)."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True)
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn
