import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "slow: takes tens of seconds (subprocesses, several fits); still "
        "runs in CI. Deselect locally with -m 'not slow'.",
    )
