"""`xfbench matmul` (placeholder until the matmul module lands: registers nothing)."""

from __future__ import annotations

from typing import Any


def register(sub: Any, usage_error: type[Exception]) -> None:
    """Adds the subcommand to the `xfbench` parser (sub: argparse subparsers; usage_error: exit-2 error)."""
