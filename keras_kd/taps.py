"""Turning layer names into one multi-output model per network.

A *tap* names a tensor inside a functional Keras model: a layer (by name, or by
a `/`-separated path into nested functional models such as
`"backbone/conv3_relu"`) and *where* to read it:

- `"output"`: the layer's output (the default for most losses);
- `"input"`: the layer's input (a layer called on a single tensor);
- `"preactivation"`: the tensor just before the layer's activation. For an
  activation layer (`ReLU`, `Activation`, `LeakyReLU`, `ELU`, `PReLU`,
  `Softmax`) that is the layer's input; for a layer with a fused activation
  (`Conv2D(..., activation="relu")`, `Dense(..., activation="relu")`, ...) the
  layer is re-run with its activation split off, so the pre-activation tensor
  exists in the graph at no extra cost. Activation boundary transfer needs this.

`build_extractor(model, taps)` returns a functional model that shares every
layer (and so every weight) with `model` and returns
`[model_output, *tapped_tensors]` in one forward pass.
"""

import difflib

import keras

WHERE = ("output", "input", "preactivation")

_ACTIVATION_LAYERS = (
    keras.layers.ReLU,
    keras.layers.Activation,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.PReLU,
    keras.layers.Softmax,
)


class Tap:
    """A tensor inside a model: a layer path and where to read it.

    Args:
        layer_name: name of the layer, or a `/`-separated path into nested
            functional models (`"backbone/block3_relu"`).
        where: one of `"output"`, `"input"`, `"preactivation"`.
            Defaults to `"output"`.
    """

    def __init__(self, layer_name, where="output"):
        if not isinstance(layer_name, str) or not layer_name:
            raise TypeError(
                "A layer name must be a non-empty string; received "
                f"{layer_name!r} of type {type(layer_name).__name__}."
            )
        if where not in WHERE:
            raise ValueError(
                f"Unknown tap position where={where!r} for layer "
                f"'{layer_name}'. Expected one of {WHERE}."
            )
        self.layer_name = layer_name
        self.where = where

    @property
    def key(self):
        return (self.layer_name, self.where)

    def __eq__(self, other):
        return isinstance(other, Tap) and self.key == other.key

    def __hash__(self):
        return hash(self.key)

    def __repr__(self):
        return f"Tap({self.layer_name!r}, where={self.where!r})"


def has_graph(model):
    """Whether `model` is a functional/Sequential model with symbolic I/O."""
    if isinstance(model, keras.Sequential):
        return bool(getattr(model, "_functional", None)) or _seq_has_input(
            model
        )
    return isinstance(model, keras.Model) and _is_functional(model)


def _seq_has_input(model):
    try:
        return model.inputs is not None and len(model.inputs) > 0
    except (AttributeError, ValueError):
        return False


def _is_functional(model):
    # Functional models (and subclasses of `keras.Model` built with
    # `keras.Model(inputs, outputs)`) carry `_operations` from their graph.
    from keras.src.models.functional import Functional

    return isinstance(model, Functional)


def layer_paths(model, prefix=""):
    """All tappable layer paths of a model, nested functional models
    included."""
    paths = []
    for layer in _graph_layers(model):
        path = prefix + layer.name
        paths.append(path)
        if isinstance(layer, keras.Model) and has_graph(layer):
            paths.extend(layer_paths(layer, prefix=path + "/"))
    return paths


def _graph_layers(model):
    if isinstance(model, keras.Sequential):
        return list(model.layers)
    return [
        layer
        for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    ]


def _unknown_layer_error(model, path, role):
    candidates = layer_paths(model)
    close = difflib.get_close_matches(path, candidates, n=5, cutoff=0.4)
    hint = (
        f"Closest layer names: {close}."
        if close
        else f"Layer names in the model: {candidates[:30]}"
        + (" ..." if len(candidates) > 30 else "")
        + "."
    )
    return ValueError(
        f"The {role} model '{model.name}' has no layer '{path}'. {hint} "
        "Pass one of these names (`model.summary()` lists them; use "
        "'outer/inner' to reach a layer inside a nested model)."
    )


def resolve_layer(model, path, role="given"):
    """The layer at a `/`-separated path, with a helpful error if absent."""
    current = model
    for part in path.split("/"):
        if not has_graph(current):
            raise _unknown_layer_error(model, path, role)
        matches = [
            layer for layer in _graph_layers(current) if layer.name == part
        ]
        if not matches:
            raise _unknown_layer_error(model, path, role)
        current = matches[0]
    return current


def check_tap(model, tap, role):
    """Validates that `tap` can be read from `model` (before any tracing)."""
    if not has_graph(model):
        raise ValueError(
            f"The {role} model '{model.name}' is a subclassed model "
            f"({type(model).__name__}) with no layer graph, so the layer "
            f"'{tap.layer_name}' cannot be tapped. Feature losses need a "
            "functional or Sequential model: build it with "
            "`keras.Model(inputs, outputs)` (or wrap the subclassed parts "
            "in a functional model), or use only `LogitsDistillation`."
        )
    layer = resolve_layer(model, tap.layer_name, role)
    if tap.where == "preactivation" and not (
        isinstance(layer, _ACTIVATION_LAYERS) or _fused_activation(layer)
    ):
        raise ValueError(
            f"Cannot tap the pre-activation of layer '{tap.layer_name}' "
            f"({type(layer).__name__}) in the {role} model '{model.name}': "
            "it has no activation. Name the activation layer that follows "
            "it (its input is the pre-activation), or, if this layer's "
            "output already is the pre-activation (e.g. a BatchNormalization "
            "or Add before a ReLU), tap it with where='output' "
            f"(`{role}_tap='output'`)."
        )
    return layer


def _fused_activation(layer):
    activation = getattr(layer, "activation", None)
    if activation is None or isinstance(layer, _ACTIVATION_LAYERS):
        return None
    if activation is keras.activations.linear:
        return None
    return activation


class PreActivation(keras.layers.Layer):
    """Calls a layer with its fused activation split off.

    Shares all weights with `layer`; returns the tensor the layer would feed
    to its activation.
    """

    def __init__(self, layer, **kwargs):
        super().__init__(
            name=f"{layer.name}_preactivation",
            dtype=layer.dtype_policy,
            **kwargs,
        )
        self.wrapped = layer
        self.built = True

    def call(self, *args, **kwargs):
        activation = self.wrapped.activation
        self.wrapped.activation = keras.activations.linear
        try:
            return self.wrapped.call(*args, **kwargs)
        finally:
            self.wrapped.activation = activation

    def compute_output_spec(self, *args, **kwargs):
        return self.wrapped.compute_output_spec(*args, **kwargs)


def _first_tensor(args, tap, model, role):
    tensors = keras.tree.flatten(args)
    if len(tensors) != 1:
        raise ValueError(
            f"Cannot tap the input of layer '{tap.layer_name}' in the {role} "
            f"model '{model.name}': it is called on {len(tensors)} tensors, "
            "not one. Tap the output of the layer that produces the tensor "
            "you want instead."
        )
    return tensors[0]


def build_extractor(model, taps, role="given", name=None):
    """One functional model returning `[model_output, *tapped]` in one pass.

    Args:
        model: a functional or Sequential `keras.Model` with one output.
        taps: list of `Tap`s (no duplicates).
        role: `"teacher"` or `"student"`, used in error messages.
        name: name of the extractor model.

    Returns:
        A `keras.Model` sharing all layers with `model`.
    """
    for tap in taps:
        check_tap(model, tap, role)
    if not taps:
        return model
    captured = {}
    direct = {}
    nested = {}
    for tap in taps:
        head, _, rest = tap.layer_name.partition("/")
        if rest:
            nested.setdefault(head, []).append(Tap(rest, tap.where))
        else:
            direct.setdefault(head, []).append(tap)

    def call_fn(layer, *args, **kwargs):
        if layer.name in nested:
            inner_taps = nested[layer.name]
            inner = build_extractor(layer, inner_taps, role=role)
            outputs = inner(*args, **kwargs)
            for tap, value in zip(inner_taps, outputs[1:]):
                _store(
                    captured,
                    Tap(f"{layer.name}/{tap.layer_name}", tap.where),
                    value,
                    model,
                    role,
                )
            return outputs[0]
        wanted = direct.get(layer.name, [])
        pre = None
        if any(t.where == "preactivation" for t in wanted) and (
            _fused_activation(layer) is not None
        ):
            pre = PreActivation(layer)(*args, **kwargs)
            output = keras.layers.Activation(
                layer.activation,
                dtype=layer.dtype_policy,
                name=f"{layer.name}_activation",
            )(pre)
        else:
            output = layer(*args, **kwargs)
        for tap in wanted:
            if tap.where == "output":
                value = output
            elif tap.where == "input" or pre is None:
                value = _first_tensor(args, tap, model, role)
            else:
                value = pre
            _store(captured, tap, value, model, role)
        return output

    if isinstance(model, keras.Sequential):
        inputs = keras.Input(
            batch_shape=model.inputs[0].shape, dtype=model.inputs[0].dtype
        )
        x = inputs
        for layer in model.layers:
            x = call_fn(layer, x)
        outputs = [x]
    else:
        clone = keras.models.clone_model(
            model, clone_function=lambda layer: layer, call_function=call_fn
        )
        # `clone.input` keeps the model's input structure (tensor, list, dict).
        inputs, outputs = clone.input, clone.outputs
    if len(outputs) != 1:
        raise ValueError(
            f"The {role} model '{model.name}' has {len(outputs)} outputs; "
            "keras_kd expects one (the predictions). Build a model that "
            "returns only the predictions to distil."
        )
    missing = [tap for tap in taps if tap not in captured]
    if missing:
        raise ValueError(
            f"The {role} model '{model.name}' never calls the layers of "
            f"{missing} on the path from its inputs to its output, so they "
            "cannot be tapped. Choose layers that the model's output "
            "depends on."
        )
    return keras.Model(
        inputs,
        [outputs[0]] + [captured[tap] for tap in taps],
        name=name or f"{model.name}_extractor",
    )


def _store(captured, tap, value, model, role):
    if tap in captured:
        raise ValueError(
            f"Layer '{tap.layer_name}' of the {role} model '{model.name}' is "
            "called more than once (a shared layer), so the tensor to tap is "
            "ambiguous. Tap a layer that is called once."
        )
    captured[tap] = value


def logits_tap(model):
    """The tap that reads a model's logits, or `None` if its output is them.

    A model whose last layer applies a softmax (`Dense(..., activation=
    "softmax")`, `Activation("softmax")` or `Softmax()`) outputs
    probabilities; distillation on logits then reads that layer's
    pre-activation instead.
    """
    if not has_graph(model):
        return None
    history = getattr(model.outputs[0], "_keras_history", None)
    if history is None:
        return None
    layer = history.operation
    activation = getattr(layer, "activation", None)
    if isinstance(layer, keras.layers.Softmax) or getattr(
        activation, "__name__", ""
    ) in ("softmax", "log_softmax"):
        return Tap(layer.name, "preactivation")
    return None
