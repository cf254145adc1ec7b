"""The ``xfbench`` command line.

Bad input (unknown model, unreadable or binary spec file, a report CSV that is malformed, bad batch size,
dtype, a backend named but not installed, a configuration whose memory ledger exceeds this machine's RAM,
...) prints one line ``xfbench: error: ...`` naming the bad value and what is allowed, and exits with code
2; no traceback (``benchmarks/cli/usage.py``). ``xfbench run`` exits with code 5 when it measured nothing.

One module per subcommand in this package (each has ``register(sub, usage_error)``), in the order of
``SUBCOMMANDS``; the shared argparse types are in ``argtypes``, the one-line errors and exit codes in ``usage``.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Sequence
from typing import NoReturn

from xfbench.benchmarks.cli import usage
from xfbench.benchmarks.cli.usage import UsageError

#: The subcommands, in the order ``xfbench --help`` lists them; each is the module of the same name here.
SUBCOMMANDS = (
    "models",
    "predict",
    "parity",
    "run",
    "compare",
    "time",
    "matmul",
    "scale",
    "exercises",
    "memory",
    "merge",
    "report",
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xfbench", description="Deep-learning benchmarks beside analytic predictions.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"xfbench.benchmarks.cli.{name}").register(sub, UsageError)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    def command() -> int:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if getattr(args, "passthrough", False):
            return int(args.func(args, extra))
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}")
        return int(args.func(args))

    return usage.run_main(command)
