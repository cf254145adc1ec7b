"""argparse value types shared by the ``xfbench`` subcommands (bad values: one line naming what is allowed).

The words (backend names and aliases, devices) are analytics/vocab.py's; the run options of ``xfbench run``
and ``pytest benchmarks`` are parsed by benchmarks/harness/options.py instead.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

from xfbench.analytics import vocab
from xfbench.analytics.costs import FRAMEWORKS, canonical_framework
from xfbench.analytics.spec import ModelSpec

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


def positive_int_list(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers (``--workers 1,2,4``, ``--nodes 1,2,4,8``)."""
    allowed = "allowed: comma-separated positive integers, e.g. 1,2,4"
    try:
        out = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; {allowed}") from None
    if not out or any(v <= 0 for v in out):
        raise argparse.ArgumentTypeError(f"{text!r}; {allowed}")
    return out


def tf32_arg(text: str) -> str:
    """``--tf32``: on or off."""
    from xfbench.benchmarks.cli.usage import tf32_value

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


def shape_arg(text: str) -> tuple[int, ...]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; allowed: e.g. 3x224x224 or 40,60") from None
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"{text!r} has a non-positive size; allowed: positive integers")
    return shape


def framework_arg(text: str) -> str:
    try:
        return canonical_framework(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: {', '.join(FRAMEWORKS)}") from None


def load_model(name: str, args: argparse.Namespace) -> ModelSpec:
    """A catalog model or spec file, with the command's overrides; any failure is a one-line UsageError."""
    from xfbench.benchmarks.cli import usage

    return usage.load_model(
        name,
        input_shape=getattr(args, "input_shape", None),
        num_classes=getattr(args, "num_classes", None),
        vocab=getattr(args, "vocab", None),
    )


def add_model_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=shape_arg, help="per-sample input shape, channels first (e.g. 3x224x224)")
    p.add_argument("--num-classes", type=positive_int, help="override the number of classes")
    p.add_argument("--vocab", type=positive_int, help="override the vocabulary (lstm)")
