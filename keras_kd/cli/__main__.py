"""`python -m keras_kd.cli`: the `keras-kd` command."""

import sys

from keras_kd.cli import main

if __name__ == "__main__":
    sys.exit(main())
