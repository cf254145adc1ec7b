"""``xfbench models``: the model catalog."""

from __future__ import annotations

import argparse
from typing import Any

from xfbench.analytics.catalog import CATALOG
from xfbench.analytics.predict import predict
from xfbench.analytics.units import fmt_count
from xfbench.benchmarks.cli.argtypes import (
    load_model,
)
from xfbench.reports.table import render_table


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for name, entry in CATALOG.items():
        spec = load_model(name, args)
        pred = predict(spec)
        rows.append([name, "x".join(map(str, entry.default_input)), fmt_count(pred.params), entry.source])
    print(render_table(["model", "input", "params (tf)", "source"], rows))
    return 0


def register(sub: Any, usage_error: type[Exception]) -> None:
    p = sub.add_parser("models", help="list the model catalog")
    p.set_defaults(func=cmd_models)
