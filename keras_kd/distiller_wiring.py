"""How a Distiller wires its networks to its losses, once, when it is built.

Each network gets one multi-output model (`keras_kd.taps.build_extractor`)
that returns its predictions and every tensor a loss or procedure reads,
each tapped once however many losses read it, so a step runs each network
once. Each loss learns which of those outputs are its layer pairs, and its
connectors are configured for the tapped shapes (normalising over the global
batch under a multi-replica strategy).
"""

from keras_kd import backend as backend_lib
from keras_kd import distribute as distribute_lib
from keras_kd import step as step_lib
from keras_kd import taps as taps_lib


class Untracked:
    """Holds objects on the Distiller without Keras tracking them."""

    def __init__(self, **kwargs):
        self.__dict__.update(kwargs)


class WiringMixin:
    """The `Distiller`'s construction of its tap models and connectors."""

    def _build_extractors(self):
        teacher_taps, student_taps = [], []
        self._teacher_logits = taps_lib.logits_tap(self.teacher)
        self._student_logits = taps_lib.logits_tap(self.student)

        def index_of(tap, logits_tap, tap_list):
            if tap is None:
                tap = logits_tap
                if tap is None:
                    return 0
            if tap not in tap_list:
                tap_list.append(tap)
            return 1 + tap_list.index(tap)

        self._feature_index = []
        for loss in self.distillation_losses:
            pairs = [
                (
                    index_of(t, self._teacher_logits, teacher_taps),
                    index_of(s, self._student_logits, student_taps),
                )
                for t, s in loss.pair_taps
            ]
            self._feature_index.append(pairs)
        # Procedures that read logits (adversarial samples) get them from
        # the same single pass, after every loss's taps.
        self._logits_index = None
        if any(p.needs_logits for p in self.procedures):
            self._logits_index = (
                index_of(None, self._teacher_logits, teacher_taps),
                index_of(None, self._student_logits, student_taps),
            )
        teacher_extractor = taps_lib.build_extractor(
            self.teacher, teacher_taps, role="teacher"
        )
        student_extractor = taps_lib.build_extractor(
            self.student, student_taps, role="student"
        )
        self._extractors = Untracked(
            teacher=teacher_extractor,
            student=student_extractor,
            teacher_multi=bool(teacher_taps),
            student_multi=bool(student_taps),
            # For `_regularization_losses`, built once: a walk of the
            # teacher's layers on every step costs PyTorch's eager steps.
            teacher_layer_ids=frozenset(
                id(layer) for layer in self.teacher._flatten_layers()
            ),
        )
        t_shapes = output_shapes(teacher_extractor, self.teacher)
        s_shapes = output_shapes(student_extractor, self.student)
        names = (self.teacher.name, self.student.name)
        # Under a multi-replica strategy, connectors normalise over the
        # global batch so a step does not depend on the number of devices.
        synchronize = backend_lib.get().replicas_in_sync() > 1
        for loss, pairs in zip(self.distillation_losses, self._feature_index):
            loss.configure(
                [t_shapes[t] for t, _ in pairs],
                [s_shapes[s] for _, s in pairs],
                self.student.dtype_policy,
                names,
            )
            if synchronize:
                for connector in loss.connectors:
                    distribute_lib.synchronize_batch_norm(connector)


def output_shapes(extractor, model):
    if extractor is model and not taps_lib.has_graph(model):
        return [None]
    return [tuple(t.shape) for t in extractor.outputs]


def side_input_keys(losses):
    """The input-dict keys the networks never see: example ids, and what a
    loss declares in `side_inputs`."""
    keys = {step_lib.EXAMPLE_ID}
    for loss in losses:
        keys.update(getattr(loss, "side_inputs", ()))
    return frozenset(keys)
