"""Recipes: a distillation experiment in one YAML file.

A recipe names its data, teacher, student, methods (by their registry
names, with their arguments), procedure, optimiser and schedule, seeds and
outputs; it is plain data (read with `yaml.safe_load`), never code. It is
checked whole before anything runs or is written: an unknown key names the
closest valid one, and a wrong type, a missing file or a layer a model
lacks is one clear `RecipeError`.

    keras-kd run recipe.yaml [--seeds 0 1 2] [--set training.epochs=5]
    keras-kd validate recipe.yaml

In Python, `keras_kd.recipes.load(path)` returns the experiment (the
compiled distiller, its data and callbacks) to continue with, and
`keras_kd.recipes.run(path)` runs it as the command line does. The recipes
shipped with keras_kd are in `keras_kd/recipes/bundled/`
(`keras_kd.recipes.bundled("main_job")`).

A minimal recipe:

```yaml
version: 1
data: {source: bundled, batch_size: 64}
teacher: {build: conv_net, widths: [32, 64, 128], epochs: 3}
student: {build: conv_net, widths: [8, 16, 32]}
methods:
  - {name: kd}
  - {name: nst, weight: 1.0}
training: {epochs: 10, optimizer: {name: sgd, learning_rate: 0.05}}
seeds: [0, 1, 2]
```
"""

from keras_kd.recipes.experiment import Experiment
from keras_kd.recipes.experiment import bundled
from keras_kd.recipes.experiment import check
from keras_kd.recipes.experiment import load
from keras_kd.recipes.experiment import resolve
from keras_kd.recipes.run import run
from keras_kd.recipes.schema import VERSION
from keras_kd.recipes.schema import RecipeError

__all__ = [
    "VERSION",
    "Experiment",
    "RecipeError",
    "bundled",
    "check",
    "load",
    "resolve",
    "run",
]
