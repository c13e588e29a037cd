"""The base class of training procedures: what they may read and write."""

import keras


class Procedure(keras.layers.Layer):
    """Base class: a procedure's hooks into the Distiller's step.

    The Distiller calls, in this order:

    1. `configure(distiller)`, once, when the Distiller is built and before
       any tracing: build variables (as a Keras layer, a procedure's
       variables are tracked by the Distiller: trainable ones train with
       the student through the Distiller's optimizer, all are saved with
       it), sub-models, and check the teacher and student.
    2. `terms(context)`, in every step (training and evaluation), after
       each network ran once: reads the `keras_kd.step.StepContext`
       (features, labels, sample weights, example ids, the side inputs it
       names in `side_inputs`) and returns `{term name: value}` for the
       names in `term_names`, each value this replica's share of the term
       (a per-example sum divided by `context.global_batch_size`, or a
       global value divided by `context.replicas`). The Distiller weights
       each term by a loss weight (`default_term_weights`, changeable with
       `set_loss_weights`), adds it to the total and logs it as
       `<name>_loss`.
    3. `callbacks()`, which `keras_kd.callbacks.for_distiller` adds to the
       callbacks of `fit`: what the procedure does between steps, e.g. step
       a model of its own with an optimizer of its own. Such a model (or
       any layer the procedure trains itself) is listed by
       `separately_trained()`: the Distiller's optimizer and training state
       leave its variables alone, and it is still saved with the distiller.

    A procedure never writes the context, the networks' outputs or the
    Distiller's optimizer state. Side inputs are entries of the input dict
    (`fit({"image": x, "target_image": t}, y)`) that the networks never see.

    Args:
        name: the procedure's name. Defaults to the class name in snake
            case.
    """

    #: Input-dict keys this procedure reads (the networks never see them).
    side_inputs = ()
    #: Names of the weighted terms `terms` returns.
    term_names = ()
    #: What the step must carry besides the inputs (`"labels"`,
    #: `"example_ids"`); a step without it fails before any update.
    requires = ()
    #: Whether `terms` reads `context.teacher_logits` and
    #: `context.student_logits` (taken from each network's single pass).
    needs_logits = False

    def configure(self, distiller):
        """Builds what the procedure needs; called once by the Distiller."""
        return None

    def default_term_weights(self):
        """`{term name: weight}` when the Distiller is built. Ones."""
        return {name: 1.0 for name in self.term_names}

    def terms(self, context):
        """`{term name: this replica's share}` for one step."""
        return {}

    def callbacks(self):
        """Keras callbacks the procedure needs in `fit`. None by default."""
        return []

    def separately_trained(self):
        """Layers the procedure trains with an optimizer of its own (the
        Distiller's optimizer never touches them). None by default."""
        return []


def check_int(owner, what, value, minimum=1):
    """`value` if it is an int >= `minimum` (not a bool); else a
    `ValueError` naming `owner`'s argument `what`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(
            f"{owner}: `{what}` must be an int >= {minimum}; received "
            f"{value!r}."
        )
    return value
