"""The Distiller's terms: their log names, and each one's share of a step.

`Distiller.compute_loss` adds up the weighted terms (the task loss, one per
distillation loss, then each procedure's) and the regularisation losses;
each term is computed and logged here. A distillation loss's term is this
replica's share of its value on the global batch, so that the replicas'
summed gradients equal a single-device step's (see `_distillation_term`),
and the trackers log the global values.
"""

import keras

from keras_kd import distiller_checks as checks


class TermsMixin:
    """The `Distiller`'s terms, their names and their trackers' updates."""

    def _term_names(self):
        """Log names of the weighted terms: task loss, each loss, then each
        procedure's terms."""
        return (
            ["student_loss"]
            + [f"{loss.name}_loss" for loss in self.distillation_losses]
            + [
                f"{term}_loss"
                for procedure in self.procedures
                for term in procedure.term_names
            ]
        )

    def _guard_names(self):
        """Names of what the guard checks: inputs, weighted terms, total."""
        return list(checks.INPUT_CHECKS) + self._term_names() + ["loss"]

    def _distillation_term(self, loss, pairs, context, log_name):
        """One loss's weighted sum of terms, this replica's share of it.

        Per-example losses: the sum over this replica's examples (weighted
        by `sample_weight`) divided by the global batch size. Batch-level
        losses see the global batch (features gathered across replicas)
        and return the global value; each replica holds `1 / replicas` of
        it, as the replicas' gradients are summed. The trackers (summed
        over replicas) get each replica's own mean, weighted by its
        examples, so they log the global value even when a short batch is
        split unevenly.
        """
        ops = keras.ops
        teacher = [context.teacher[t] for t, _ in pairs]
        student = [context.student[s] for _, s in pairs]
        checks.check_requirements(loss, context)
        replicas = context.replicas
        batch = ops.cast(context.batch_size, "float32")
        batch_level = loss.level == "batch"
        if batch_level:
            view = context.global_view()
            teacher = [context.gather(t) for t in teacher]
            student = [context.gather(s) for s in student]
        else:
            view = context
        term_losses, metrics = loss.compute(
            teacher, student, training=context.training, context=view
        )
        value = 0.0
        for weight, term in zip(loss.pair_weights, term_losses):
            value = value + weight * term
        if batch_level:
            value = ops.cast(value, "float32") / replicas
            logged = value * replicas
        else:
            if context.sample_weight is not None:
                value = value * context.sample_weight
            value = ops.sum(value) / context.global_batch_size
            logged = (
                value * replicas
                if replicas == 1
                else value * context.global_batch_size / batch
            )
        self._trackers[log_name].update_state(logged, sample_weight=batch)
        if loss.num_terms > 1:
            for j, term in enumerate(term_losses):
                self._trackers[loss.term_log_name(j)].update_state(term)
        for name, metric in metrics.items():
            self._trackers[name].update_state(metric)
        return value

    def _procedure_terms(self, procedure, context, term_names):
        """A procedure's terms, in the order it declares them, logged."""
        checks.check_requirements(procedure, context)
        values = procedure.terms(context)
        missing = [t for t in procedure.term_names if t not in values]
        if missing:
            raise ValueError(
                f"{type(procedure).__name__} '{procedure.name}' declares "
                f"the terms {list(procedure.term_names)} but its `terms()` "
                f"returned no {missing}."
            )
        batch = keras.ops.cast(context.batch_size, "float32")
        terms = []
        for term in procedure.term_names:
            value = keras.ops.cast(values[term], "float32")
            self._trackers[f"{term}_loss"].update_state(
                value * context.replicas, sample_weight=batch
            )
            terms.append(value)
        return terms

    def _regularization_losses(self):
        """The student's and connectors' regularisation losses.

        `self.losses` would also hold the activity-regulariser losses the
        frozen teacher's layers add when it runs in `compute_loss` (on
        TensorFlow and PyTorch; Keras's JAX trainer passes on only the
        losses of `call`, the student's). They have no gradient, yet they
        inflated the logged total, differently per backend. Weight
        regularisers count only trainable weights, so the teacher's never
        enter.
        """
        if self._losses_override:  # JAX: the losses of the student's pass
            return list(self._losses_override)
        teacher = self._extractors.teacher_layer_ids
        values = []
        for layer in self._flatten_layers():
            if id(layer) not in teacher:
                values.extend(layer._get_own_losses())
        return values + self._get_regularization_losses()


def example_weights(sample_weight):
    """One float32 weight per example, `(B,)`, from Keras's `sample_weight`
    (averaged over its other axes); `None` without one."""
    if sample_weight is None:
        return None
    ops = keras.ops
    sample_weight = ops.cast(sample_weight, "float32")
    while len(sample_weight.shape) > 1:
        sample_weight = ops.mean(sample_weight, axis=-1)
    return sample_weight
