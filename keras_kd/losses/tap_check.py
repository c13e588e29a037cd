"""What kind of tensor a tap reads: for warnings about taps that are valid
but make a method meaningless (e.g. activation boundaries of a sigmoid).

`describe_boundary_problem(model, tap)` looks at the layer a tap names (an
`outer/inner` path is followed into nested functional models), its
activation and the layers that consume its output inside the model graph,
and says why the tensor cannot hold a ReLU on/off boundary at zero, or
returns `None` when it can: a pre-activation (a linear layer, BN or Add
output) that feeds a ReLU-like activation, or a ReLU-like output.

The graph is walked through the Keras history of the model's output tensors
(the same `_keras_history` that `keras_kd.taps` reads), so a layer shared
with another model (e.g. a Distiller's extractor) is judged by its use in
this model only. Where the graph cannot be read, nothing is reported.
"""

import keras

from keras_kd import taps as taps_lib

#: Activations with a ReLU-like on/off boundary at zero (sign kept).
RELU_LIKE = frozenset(
    {
        "relu",
        "relu6",
        "leaky_relu",
        "elu",
        "selu",
        "celu",
        "gelu",
        "silu",
        "swish",
        "hard_silu",
        "hard_swish",
        "mish",
    }
)
#: Activations whose output has one sign only: no boundary at zero at all.
ONE_SIGNED = {
    "sigmoid": "> 0",
    "hard_sigmoid": ">= 0",
    "sparse_sigmoid": ">= 0",
    "softmax": "> 0",
    "sparsemax": ">= 0",
    "softplus": "> 0",
    "exponential": "> 0",
    "squareplus": "> 0",
    "sparse_plus": ">= 0",
    "log_softmax": "< 0",
    "log_sigmoid": "< 0",
}
#: Layers that pass a tensor through unchanged at inference.
_TRANSPARENT = (keras.layers.Dropout, keras.layers.Identity)

_POOLING = tuple(
    getattr(keras.layers, name)
    for name in (
        "MaxPooling1D",
        "MaxPooling2D",
        "MaxPooling3D",
        "AveragePooling1D",
        "AveragePooling2D",
        "AveragePooling3D",
        "GlobalMaxPooling1D",
        "GlobalMaxPooling2D",
        "GlobalMaxPooling3D",
        "GlobalAveragePooling1D",
        "GlobalAveragePooling2D",
        "GlobalAveragePooling3D",
    )
    if hasattr(keras.layers, name)
)


def activation_name(layer):
    """The name of the activation a layer applies, or `None` if linear."""
    if isinstance(layer, (keras.layers.ReLU, keras.layers.PReLU)):
        return "relu"
    if isinstance(layer, keras.layers.LeakyReLU):
        return "leaky_relu"
    if isinstance(layer, keras.layers.ELU):
        return "elu"
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    if activation is None or not callable(activation):
        return None
    name = getattr(activation, "__name__", type(activation).__name__)
    return None if name == "linear" else name


def _is_pooling(layer):
    return isinstance(layer, _POOLING) or "Pooling" in type(layer).__name__


def _graph_nodes(model):
    """The nodes on the paths to `model`'s outputs, or `None` if unknown."""
    try:
        outputs = keras.tree.flatten(model.outputs)
    except (AttributeError, ValueError, TypeError):
        return None
    nodes, seen, stack = [], set(), list(outputs)
    while stack:
        history = getattr(stack.pop(), "_keras_history", None)
        if history is None or history.operation is None:
            continue
        try:
            node = history.operation._inbound_nodes[history.node_index]
        except (AttributeError, IndexError):
            return None
        if id(node) in seen:
            continue
        seen.add(id(node))
        nodes.append(node)
        stack.extend(node.input_tensors)
    return nodes


def _producer(tensor):
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def _consumers(model, layer):
    """Layers of `model`'s graph that read `layer`'s output; `None` if the
    graph is unknown. Transparent layers (Dropout) are looked through."""
    nodes = _graph_nodes(model)
    if nodes is None:
        return None
    found = []
    for node in nodes:
        if any(_producer(t) is layer for t in node.input_tensors):
            if isinstance(node.operation, _TRANSPARENT):
                found.extend(_consumers(model, node.operation) or [])
            else:
                found.append(node.operation)
    return found


def _is_output(model, layer):
    try:
        outputs = keras.tree.flatten(model.outputs)
    except (AttributeError, ValueError, TypeError):
        return False
    return any(_producer(t) is layer for t in outputs)


def _chain(model, path):
    """`[(container, layer), ...]` from the top model down the path."""
    chain, container = [], model
    for part in path.split("/"):
        if not taps_lib.has_graph(container):
            return None
        matches = [
            layer
            for layer in taps_lib._graph_layers(container)
            if layer.name == part
        ]
        if not matches:
            return None
        chain.append((container, matches[0]))
        container = matches[0]
    return chain


def _consumers_in_chain(chain):
    """Consumers of the last layer of `chain`, looking through the end of
    nested models into the model that calls them. Returns
    `(consumers, is_top_level_output)`; consumers is `None` if unknown."""
    for depth in range(len(chain) - 1, -1, -1):
        container, layer = chain[depth]
        consumers = _consumers(container, layer)
        if consumers is None:
            return None, False
        if consumers or not _is_output(container, layer):
            return consumers, False
        if depth == 0:
            return [], True
        # `layer` is the output of the nested model chain[depth - 1][1]:
        # look at who consumes that model in its own container.
    return [], False


def _relu_like_consumer(consumers):
    return [
        c
        for c in consumers
        if activation_name(c) in RELU_LIKE
        and (isinstance(c, taps_lib._ACTIVATION_LAYERS))
    ]


def describe_boundary_problem(model, tap):
    """Why `tap` of `model` cannot hold a ReLU boundary at zero, or `None`.

    Args:
        model: a functional or Sequential `keras.Model`.
        tap: a `keras_kd.taps.Tap`.

    Returns:
        A sentence describing the tensor and the problem, or `None` when the
        tensor is a pre-activation feeding a ReLU-like activation or a
        ReLU-like output (or the graph cannot be read).
    """
    if not taps_lib.has_graph(model):
        return None
    chain = _chain(model, tap.layer_name)
    if chain is None:
        return None  # Unknown layer: the Distiller reports it.
    container, layer = chain[-1]
    what = (
        f"layer '{tap.layer_name}' ({type(layer).__name__}, "
        f"where='{tap.where}')"
    )
    activation = activation_name(layer)

    if tap.where == "preactivation" or (
        tap.where == "input" and isinstance(layer, taps_lib._ACTIVATION_LAYERS)
    ):
        return _judge_activation_input(what, activation)
    if tap.where == "input":
        producer = _input_producer(container, layer)
        if producer is None:
            return None  # Unknown graph, or a model input: nothing to say.
        return _judge_output(
            chain[:-1] + [(container, producer)],
            f"{what} reads the output of '{producer.name}' "
            f"({type(producer).__name__}), which",
        )
    return _judge_output(chain, what)


def _input_producer(container, layer):
    """The layer whose output `layer` is called on in `container`."""
    for node in _graph_nodes(container) or []:
        if node.operation is layer and len(node.input_tensors) == 1:
            producer = _producer(node.input_tensors[0])
            if producer is None or isinstance(
                producer, keras.layers.InputLayer
            ):
                return None
            return producer
    return None


def _judge_output(chain, what):
    """Why the output of the last layer of `chain` has no ReLU boundary."""
    layer = chain[-1][1]
    activation = activation_name(layer)
    if activation in RELU_LIKE:
        return None
    if activation in ONE_SIGNED:
        return (
            f"{what} outputs a {activation} activation, whose values are "
            f"always {ONE_SIGNED[activation]}: every teacher neuron is "
            f"always {'off' if '<' in ONE_SIGNED[activation] else 'on'}"
        )
    if activation is not None:
        return (
            f"{what} outputs a {activation} activation, not a ReLU-like one "
            "(AB transfers ReLU on/off boundaries)"
        )
    if _is_pooling(layer):
        return (
            f"{what} is a pooling layer: its output mixes neurons (and after "
            "a ReLU it is >= 0 everywhere), so its sign is no neuron's "
            "on/off state"
        )
    consumers, is_final = _consumers_in_chain(chain)
    if consumers is None:
        return None
    if is_final:
        return (
            f"{what} is the model's final layer with no activation, i.e. "
            "its logits: they have no ReLU boundary (use "
            "LogitsDistillation for them)"
        )
    if _relu_like_consumer(consumers):
        return None
    names = (
        ", ".join(f"'{c.name}' ({type(c).__name__})" for c in consumers)
        or "nothing"
    )
    return (
        f"{what} is a linear output that feeds {names}, not a ReLU-like "
        "activation, so its sign is not the on/off state of a neuron"
    )


def _judge_activation_input(what, activation):
    if activation is None or activation in RELU_LIKE:
        # None: no activation to read before; the Distiller's tap check
        # reports that.
        return None
    if activation in ("softmax", "log_softmax"):
        return (
            f"{what} reads the input of a {activation}, i.e. the model's "
            "logits: they have no ReLU boundary (use LogitsDistillation for "
            "them)"
        )
    return (
        f"{what} reads the input of a {activation} activation, not of a "
        "ReLU-like one (AB transfers ReLU on/off boundaries)"
    )
