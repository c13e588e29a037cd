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
import ml_dtypes
import numpy as np

BACKEND = keras.backend.backend()
BACKENDS = ("tensorflow", "jax", "torch")
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(TESTS_DIR)


def without_graph_optimizer():
    """Turns TensorFlow's graph optimiser (Grappler) off in this process.

    The tests' `fit`s run a handful of steps on tiny models, and Grappler
    rewrites each traced function before its first run. Measured on 2 CPU
    cores: with it off, 45 in-process tests (distiller, XLA, mixed
    precision) took 109-115 s of CPU time instead of 127-129, and the
    tf.distribute script's `registry` run 88 s instead of 103, its
    2-replica differences still below 3e-6. Users, the examples, the
    README's snippets, the notebooks and the `keras-kd` command run with it
    on. The suite and the test scripts that run TensorFlow call this;
    outside TensorFlow it does nothing. `KERAS_KD_TEST_GRAPPLER=1` keeps it
    on.
    """
    if (
        BACKEND != "tensorflow"
        or os.environ.get("KERAS_KD_TEST_GRAPPLER") == "1"
    ):
        return
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": True}
    )


def to_numpy(x):
    """A NumPy copy of a tensor or variable, on any backend.

    Never through `np.array(variable)` or `np.array(tensor)`: Keras's
    `Variable.__array__`, TensorFlow's variables and PyTorch's tensors lack
    NumPy 2's `copy` argument and warn on every call (and so does
    `keras.ops.convert_to_numpy`, which calls `np.array` on them). Each
    backend's own `.numpy()` is used instead.
    """
    if isinstance(x, keras.Variable):
        x = x.value
    if BACKEND == "torch" and hasattr(x, "detach"):
        x = x.detach().cpu()
        if keras.backend.standardize_dtype(x.dtype) == "bfloat16":
            return x.float().numpy().astype(ml_dtypes.bfloat16)
        return x.numpy().copy()
    if BACKEND == "tensorflow" and hasattr(x, "numpy"):
        return np.array(x.numpy())
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
        grads = tape.gradient(
            value, tensors, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
    elif BACKEND == "jax":
        import jax
        import jax.numpy as jnp

        value, grads = jax.value_and_grad(fn, argnums=tuple(range(len(args))))(
            *[jnp.asarray(a) for a in args]
        )
    elif BACKEND == "torch":
        import torch

        tensors = [torch.tensor(a, requires_grad=True) for a in args]
        value = fn(*tensors)
        grads = torch.autograd.grad(value, tensors, allow_unused=True)
        grads = [
            torch.zeros_like(t) if g is None else g
            for g, t in zip(grads, tensors)
        ]
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


def compiled_unknown_batch(fn, *args):
    """`fn(*args)` as NumPy, traced with the batch dimension unknown.

    Every argument's first dimension is one symbolic batch size, so `fn`
    must not specialise on it: `tf.function` with `None` in the input
    signature and `jit_compile=True`; `jax.export` with a symbolic batch
    dimension (XLA); `torch.export` with a dynamic `Dim` (a graph capture,
    no C++ compiler needed), run through the exported module.
    """
    args = [np.asarray(a) for a in args]
    if BACKEND == "tensorflow":
        import tensorflow as tf

        specs = [tf.TensorSpec((None,) + a.shape[1:], a.dtype) for a in args]
        out = tf.function(fn, input_signature=specs, jit_compile=True)(
            *[tf.constant(a) for a in args]
        )
    elif BACKEND == "jax":
        import jax
        from jax import export

        batch = export.symbolic_shape("batch")[0]
        specs = [
            jax.ShapeDtypeStruct((batch,) + a.shape[1:], a.dtype) for a in args
        ]
        out = export.export(jax.jit(fn))(*specs).call(*args)
    elif BACKEND == "torch":
        import torch

        class _Fn(torch.nn.Module):
            def forward(self, *tensors):
                return fn(*tensors)

        tensors = tuple(torch.tensor(a) for a in args)
        batch = torch.export.Dim("batch")
        exported = torch.export.export(
            _Fn(),
            tensors,
            # One entry for `*tensors`: a tuple with one spec per tensor.
            dynamic_shapes=(tuple({0: batch} for _ in args),),
        )
        out = exported.module()(*tensors)
    else:  # pragma: no cover
        raise NotImplementedError(f"no compiler on the {BACKEND} backend")
    return to_numpy(out)


def intermediate_shapes(fn, *args):
    """The shape of every intermediate tensor `fn(*args)` computes.

    TensorFlow: every op output of the traced `tf.function` graph; JAX:
    every equation output of the jaxpr, nested jaxprs included; PyTorch:
    every ATen op output, recorded by a `TorchDispatchMode` while `fn` runs.
    """
    args = [np.asarray(a, "float32") for a in args]
    shapes = []
    if BACKEND == "tensorflow":
        import tensorflow as tf

        graph = (
            tf.function(fn)
            .get_concrete_function(
                *[tf.TensorSpec(a.shape, a.dtype) for a in args]
            )
            .graph
        )
        for op in graph.get_operations():
            for output in op.outputs:
                if output.shape.rank is not None:
                    shapes.append(tuple(output.shape.as_list()))
    elif BACKEND == "jax":
        import jax

        def visit(jaxpr):
            for eqn in jaxpr.eqns:
                for var in eqn.outvars:
                    shapes.append(tuple(var.aval.shape))
                for param in eqn.params.values():
                    for sub in (
                        param if isinstance(param, (list, tuple)) else [param]
                    ):
                        # Nested (closed) jaxprs: pjit, custom_jvp, cond...
                        sub = getattr(sub, "jaxpr", sub)
                        if hasattr(sub, "eqns"):
                            visit(sub)

        visit(jax.make_jaxpr(fn)(*args).jaxpr)
    elif BACKEND == "torch":
        import torch
        from torch.utils._python_dispatch import TorchDispatchMode

        class _Record(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                for t in out if isinstance(out, (list, tuple)) else [out]:
                    if isinstance(t, torch.Tensor):
                        shapes.append(tuple(t.shape))
                return out

        tensors = [torch.tensor(a) for a in args]
        with _Record():
            fn(*tensors)
    else:  # pragma: no cover
        raise NotImplementedError(f"no tracing on the {BACKEND} backend")
    return shapes
