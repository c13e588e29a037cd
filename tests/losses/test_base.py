"""DistillationLoss: what each layer pair reads, and its deprecated names.

`teacher_tap` / `student_tap` (arguments) say where every layer is read;
`pair_taps` (attribute) holds one `(teacher Tap, student Tap)` per pair. The
old attribute names `teacher_taps` / `student_taps`, one letter away from the
arguments, still answer with a DeprecationWarning.
"""

import os
import warnings

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import pytest  # noqa: E402
from builders import all_losses  # noqa: E402
from builders import data  # noqa: E402
from builders import pair  # noqa: E402
from builders import sparse_ce  # noqa: E402

from keras_kd import Distiller  # noqa: E402
from keras_kd import losses  # noqa: E402
from keras_kd.taps import Tap  # noqa: E402


def test_pair_taps_hold_one_teacher_and_student_tap_per_pair():
    ab = losses.ActivationBoundary(
        ["t1", "t2"], ["s1", "s2"], student_tap="output"
    )
    assert ab.pair_taps == [
        (Tap("t1", "preactivation"), Tap("s1", "output")),
        (Tap("t2", "preactivation"), Tap("s2", "output")),
    ]
    assert ab.num_pairs == 2
    assert losses.LogitsDistillation().pair_taps == [(None, None)]


def test_teacher_taps_and_student_taps_are_deprecated_aliases():
    at = losses.AttentionTransfer(["t1", "t2"], ["s1", "s2"])
    with pytest.warns(DeprecationWarning, match="read `pair_taps`"):
        assert at.teacher_taps == [Tap("t1"), Tap("t2")]
    with pytest.warns(DeprecationWarning, match="`student_tap` argument"):
        assert at.student_taps == [Tap("s1"), Tap("s2")]


def test_unknown_attributes_still_raise_attribute_error():
    kd = losses.LogitsDistillation()
    with pytest.raises(AttributeError, match="'LogitsDistillation'.*'nope'"):
        kd.nope
    assert not hasattr(kd, "nope")


@pytest.mark.tensorflow_only(
    reason="which attributes saving reads is backend-neutral Python"
)
def test_saving_reads_no_deprecated_attribute(tmp_path):
    # Keras's saving reads every attribute `dir()` lists: the deprecated
    # names must not be among them, or every save would warn.
    teacher, student = pair()
    distiller = Distiller(teacher, student, all_losses())
    distiller.compile(optimizer="adam", loss=sparse_ce())
    x, y = data(n=8)
    distiller.fit(x, y, batch_size=8, epochs=1, verbose=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        distiller.save(tmp_path / "d.keras")
    ours = [
        str(w.message)
        for w in caught
        if issubclass(w.category, DeprecationWarning)
        and "is deprecated" in str(w.message)
        and ("pair_taps" in str(w.message) or "connector" in str(w.message))
    ]
    assert ours == []
