"""What one Distiller step hands its losses: `StepContext`.

The Distiller builds one `StepContext` per step (training or evaluation)
after running each network once. A distillation loss reads its features
from the Distiller's arguments and anything else from the context:

- `labels`: the task labels `y` as given to `fit` (`None` without labels);
- `sample_weight`: one weight per example, `(B,)` float32 (`None`: all 1);
- `example_ids`: the data set index of each example, `(B,)` int, when the
  data carry them (`None` otherwise; see `EXAMPLE_ID`);
- `side_inputs`: every reserved entry of the input dict (`example_id`, and
  what a procedure declares), by name;
- `inputs`: the networks' inputs (the input dict without its side inputs);
- `teacher`, `student`: each network's outputs, `[predictions, *taps]`;
- `teacher_logits`, `student_logits`: each network's logits (the
  pre-softmax of a softmax head), when a procedure asks for them
  (`Procedure.needs_logits`; `None` otherwise);
- `training`, `batch_size` (this replica's), `replicas`,
  `global_batch_size`.

Under `tf.distribute` every replica holds a part of the global batch.
Per-example losses need nothing more (the Distiller divides their sum by the
global batch size); a batch-level loss (relations between examples, a memory
bank) needs the whole batch, and `global_view()` gives it: the labels,
weights and ids gathered from every replica (`gather` does the same for any
tensor, differentiably: gradients flow back to the replica that owns each
example). Every replica then computes the same global value, and the
Distiller divides it by the number of replicas before the replicas'
gradients are summed, so N replicas take the one-device step. Under JAX's
`keras.distribution.DataParallel` the step already sees the global batch and
gathering is the identity; PyTorch trains on one device.
"""

import keras

from keras_kd import backend as backend_lib

#: The key of the input dict that holds example ids:
#: `distiller.fit({"image": x, "example_id": ids}, y)`. The Distiller takes
#: it out before the networks see the inputs.
EXAMPLE_ID = "example_id"


class StepContext:
    """The inputs, outputs and batch facts of one Distiller step.

    Built by the Distiller; a loss reads it and never writes it. See the
    module docstring for the attributes.
    """

    def __init__(
        self,
        *,
        inputs,
        labels,
        sample_weight,
        side_inputs,
        teacher,
        student,
        training,
        replicas,
        batch_size=None,
        global_batch_size=None,
        logits=(None, None),
    ):
        self.inputs = inputs
        self.labels = labels
        self.sample_weight = sample_weight
        self.side_inputs = dict(side_inputs)
        self.example_ids = self.side_inputs.get(EXAMPLE_ID)
        self.teacher = teacher
        self.student = student
        self.teacher_logits, self.student_logits = logits
        self.training = training
        self.replicas = int(replicas)
        self.batch_size = (
            keras.ops.shape(student[0])[0] if batch_size is None else batch_size
        )
        self.is_global = self.replicas == 1
        self._global = self if self.is_global else None
        self._global_batch_size = global_batch_size

    @property
    def global_batch_size(self):
        """The number of examples over every replica (float32 tensor).

        Counted, not assumed: a short last batch may be split unevenly
        (8 and 7 examples), and then `batch_size * replicas` would be
        wrong. Computed once per step.
        """
        if self._global_batch_size is None:
            local = keras.ops.cast(self.batch_size, "float32")
            if self.replicas > 1:
                local = keras.ops.sum(
                    self.gather(keras.ops.reshape(local, (1,)))
                )
            self._global_batch_size = local
        return self._global_batch_size

    def gather(self, value):
        """`value` (batch axis first) concatenated over every replica.

        The identity on one device; differentiable under `tf.distribute`.
        `None` stays `None`.
        """
        if value is None or self.replicas == 1:
            return value
        return backend_lib.get().all_gather(value)

    def global_view(self):
        """This context with labels, weights and ids of the global batch.

        Features are gathered by the caller (`gather`), only those a
        batch-level loss reads. Built once per step.
        """
        if self._global is None:
            view = StepContext(
                inputs=self.inputs,
                labels=self.gather(self.labels),
                sample_weight=self.gather(self.sample_weight),
                side_inputs={
                    k: self.gather(v) for k, v in self.side_inputs.items()
                },
                teacher=self.teacher,
                student=self.student,
                training=self.training,
                replicas=1,
            )
            view.batch_size = keras.ops.shape(self.gather(self.student[0]))[0]
            self._global = view
        return self._global


def split_side_inputs(x, keys):
    """`(network_inputs, side_inputs)` of a batch's `x`.

    A dict `x` loses its entries named in `keys` (e.g. `"example_id"`); if a
    single entry is left, the networks receive its value, so
    `{"image": x, "example_id": ids}` feeds `x` to a one-input model whatever
    its input's name. Anything else passes through unchanged.
    """
    if not isinstance(x, dict) or not any(k in x for k in keys):
        return x, {}
    side = {k: v for k, v in x.items() if k in keys}
    rest = {k: v for k, v in x.items() if k not in keys}
    if not rest:
        raise ValueError(
            f"The input dict holds only side inputs {sorted(side)} and no "
            "input for the networks. Pass the images too, e.g. "
            "`{'image': x, 'example_id': ids}`."
        )
    if len(rest) == 1:
        rest = next(iter(rest.values()))
    return rest, side
