"""Argument types shared by the `keras-kd` commands (`type=` of argparse).

`integer(minimum)` and `real(low, high)` parse a command-line value and
reject what is out of range with a message naming the range; both the main
job (`keras_kd.cli`) and `keras-kd export` (`keras_kd.export.command`) use
them, and neither imports the other for them.
"""

import argparse
import math


def integer(minimum):
    """An argparse `type`: an integer >= `minimum`.

    >>> integer(1)("3")
    3
    >>> integer(1)("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be an integer >= 1; received 0
    """

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer >= {minimum}; received {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(
                f"must be an integer >= {minimum}; received {value}"
            )
        return value

    return parse


def real(low, high=None, *, low_inclusive=False):
    """An argparse `type`: a finite number in `(low, high]`.

    Without `high`, any finite number > `low`; `low_inclusive=True` lets
    `low` itself pass.

    >>> real(0.0, 1.0)("0.25")
    0.25
    >>> real(0.0)("nan")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: must be a finite number > 0.0; received nan
    """
    bounds = (
        f"in {'[' if low_inclusive else '('}{low}, {high}]"
        if high is not None
        else f"a finite number > {low}"
    )

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected {bounds}; received {text!r}"
            ) from None
        below = value < low if low_inclusive else value <= low
        if (
            not math.isfinite(value)
            or below
            or (high is not None and value > high)
        ):
            raise argparse.ArgumentTypeError(
                f"must be {bounds}; received {text}"
            )
        return value

    return parse
