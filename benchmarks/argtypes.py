"""argparse value types shared by the ``xfbench`` subcommands (bad values: one line naming what is allowed).

The words (backend names and aliases, devices) are analytics/vocab.py's; the run options of ``xfbench run``
and ``pytest benchmarks`` are parsed by benchmarks/options.py instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from xfbench.analytics import vocab

T = TypeVar("T")


def _argtype(parse: Callable[[str], T]) -> Callable[[str], T]:
    """``parse`` as an argparse type: its ``ValueError`` becomes argparse's one-line error."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


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


# ``--device``: one device (``gpu`` -> ``gpu:0``); a comma-separated list, where ``all`` means every device the
# backend sees (the caller expands it with ``vocab.expand_devices``).
device_arg = _argtype(vocab.normalize_device)
device_list = _argtype(vocab.parse_devices)
_backend = _argtype(vocab.canonical_backend)


def backend_list(text: str) -> list[str]:
    """``--backend``: comma-separated backend names or aliases, canonical."""
    return [_backend(part) for part in text.split(",") if part.strip()]


def one_backend(text: str) -> str:
    """``--backend`` of a command that runs one backend."""
    names = backend_list(text)
    if len(names) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give one backend ({', '.join(vocab.BACKENDS)})")
    return names[0]
