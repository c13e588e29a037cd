"""Small real data sets bundled with keras_kd (see README.md in this folder)."""
