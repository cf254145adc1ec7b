"""argparse value types shared by the ``xfbench`` subcommands (bad values: one line naming what is allowed)."""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: a positive integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive; allowed: a positive integer")
    return value


def tf32_arg(text: str) -> str:
    """``--tf32``: on or off."""
    from xfbench.benchmarks.usage import tf32_value

    try:
        return tf32_value(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: on, off") from None
