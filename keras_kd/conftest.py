"""pytest settings for the docstring examples of keras_kd's modules.

The README's test command, `python -m pytest -n 2 --dist loadgroup
--doctest-modules tests keras_kd -q`, imports every module under
`keras_kd/` to run its examples.
`keras_kd/backend/tensorflow.py` and `keras_kd/backend/jax.py` serve one
Keras backend each and import its framework at the top; the one whose
framework is not installed (e.g. JAX in a TensorFlow-only install) is not
collected (neither holds an example). Every other module imports without
side effects: the scripts (`__main__.py`, the `datasets/make_*_small.py`
makers) run only as `__main__`.
"""

import importlib.util

collect_ignore = [
    f"backend/{framework}.py"
    for framework in ("tensorflow", "jax")
    if importlib.util.find_spec(framework) is None
]
