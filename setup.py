"""keras_kd: knowledge distillation for Keras 3 (activation boundaries, NST, KD, hints, AT)."""

import pathlib

from setuptools import find_packages
from setuptools import setup

HERE = pathlib.Path(__file__).parent

setup(
    name="keras-kd",
    version="0.1.0",
    description=(
        "Knowledge distillation for Keras 3: a one-pass Distiller with "
        "activation-boundary, neuron-selectivity, KD, FitNets and attention "
        "transfer."
    ),
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_kd", "keras_kd.*"]),
    package_data={
        "keras_kd": [
            "datasets/*.npz",
            "datasets/*.md",
            "recipes/bundled/*.yaml",
            "recipes/bundled/paper/*.yaml",
        ]
    },
    install_requires=["keras>=3.12", "numpy", "pyyaml>=5.1"],
    # keras_kd itself needs only Keras and one backend; each extra below
    # installs one. TensorFlow is needed only by keras_kd.data (tf.data /
    # tfds pipelines), keras_kd.export (SavedModel / TFLite), tf.distribute
    # and the `keras-kd` command, which import it when used.
    # GPU variants (see the README's "Backends" section):
    #   JAX:        pip install "jax[cuda12]"   (or "jax[cuda13]")
    #   PyTorch:    pip install torch --index-url https://download.pytorch.org/whl/cu126
    #   TensorFlow: the `gpu` extra below (tensorflow[and-cuda]).
    extras_require={
        # TensorFlow backend; pick the wheel for the machine.
        "cpu": ["tensorflow-cpu>=2.18"],
        "tf": ["tensorflow>=2.18"],
        "gpu": ["tensorflow[and-cuda]>=2.18"],
        # JAX backend on CPU (KERAS_BACKEND=jax).
        "jax": ["jax[cpu]>=0.4.30"],
        # PyTorch backend (KERAS_BACKEND=torch). PyPI's Linux torch wheel
        # bundles CUDA (several GB of nvidia-* wheels); for a CPU-only
        # machine install the CPU wheel first, which this requirement then
        # accepts:  pip install torch --index-url https://download.pytorch.org/whl/cpu
        # (.ci/run does so through --extra-index-url).
        "torch": ["torch>=2.4"],
        # tfds input pipelines (keras_kd.data with a tfds name).
        # (tfds 4.9.10 imports importlib_resources without declaring it on
        # Python >= 3.9: tensorflow/datasets#11212.)
        "data": ["tensorflow-datasets>=4.9", "importlib_resources"],
        # LiteRT interpreter for exported .tflite students (falls back to
        # tf.lite.Interpreter without it).
        "litert": ["ai-edge-litert>=2.0"],
        "test": [
            "pytest>=7",
            "pytest-xdist>=3.6",  # `-n 2`: the README's test command
            "tensorflow-datasets>=4.9",
            "importlib_resources",
            "tensorboard",  # TensorFlow 2.21 no longer installs it
            "ai-edge-litert>=2.0",  # the export tests run the LiteRT interpreter
        ],
        # Plots of benchmarks/ (speed.py, accuracy.py).
        "bench": ["matplotlib"],
        # Tutorial notebooks (examples/) and tests/test_notebooks.py. Not
        # keras-hub: it requires tensorflow-text, which requires the full
        # `tensorflow` wheel, and two TensorFlow wheels in one environment
        # print CUDA cuInit errors on every CPU import. Notebook 04 runs its
        # KerasHub part only when keras-hub is installed.
        "examples": [
            "matplotlib",
            "nbformat>=5.10",
            "nbclient>=0.10",
            "ipykernel",
            "tensorboard",
            "tensorflow-datasets>=4.9",
            "importlib_resources",
            "keras-cv>=0.9",
        ],
    },
    entry_points={"console_scripts": ["keras-kd=keras_kd.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
