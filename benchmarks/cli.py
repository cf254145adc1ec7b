"""The ``xfbench`` command line.

Bad input (unknown model, unreadable spec file, bad batch size, dtype, ...) prints one line
``xfbench: error: ...`` and exits with code 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from collections.abc import Sequence
from typing import NoReturn

from analytics.catalog import CATALOG, resolve_model
from analytics.costs import FRAMEWORKS, canonical_framework
from analytics.memory import DTYPE_BYTES, OPTIMIZER_SLOTS
from analytics.predict import Prediction, predict
from analytics.spec import ModelSpec, SpecError
from analytics.units import fmt_bytes, fmt_count, fmt_flops
from reports.table import render_table


class UsageError(Exception):
    """Bad user input: reported as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer; allowed: a positive integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{value} is not positive; allowed: a positive integer")
    return value


def _shape(text: str) -> tuple[int, ...]:
    parts = text.lower().replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; allowed: e.g. 3x224x224 or 40,60") from None
    if not shape or any(v <= 0 for v in shape):
        raise argparse.ArgumentTypeError(f"{text!r} has a non-positive size; allowed: positive integers")
    return shape


def _framework(text: str) -> str:
    try:
        return canonical_framework(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: {', '.join(FRAMEWORKS)}") from None


def load_model(name: str, args: argparse.Namespace) -> ModelSpec:
    """A catalog model or spec file, with the command's overrides; SpecError becomes a UsageError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return resolve_model(
                name,
                input_shape=getattr(args, "input_shape", None),
                num_classes=getattr(args, "num_classes", None),
                vocab=getattr(args, "vocab", None),
            )
    except SpecError as exc:
        raise UsageError(str(exc)) from None


def _add_model_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input-shape", type=_shape, help="per-sample input shape, channels first (e.g. 3x224x224)")
    p.add_argument("--num-classes", type=_positive_int, help="override the number of classes")
    p.add_argument("--vocab", type=_positive_int, help="override the vocabulary (lstm)")


def cmd_models(args: argparse.Namespace) -> int:
    rows = []
    for name, entry in CATALOG.items():
        spec = load_model(name, args)
        pred = predict(spec)
        rows.append([name, "x".join(map(str, entry.default_input)), fmt_count(pred.params), entry.source])
    print(render_table(["model", "input", "params (tf)", "source"], rows))
    return 0


def _prediction_text(pred: Prediction, binary: bool) -> str:
    rows = [
        [
            lp.index,
            lp.name,
            lp.type,
            "x".join(map(str, lp.output_shape)),
            fmt_count(lp.params),
            fmt_flops(lp.forward_flops),
            fmt_flops(lp.backward_flops),
            fmt_bytes(lp.activation_bytes, binary=binary),
        ]
        for lp in pred.layers
    ]
    out = [
        f"model {pred.model}  batch {pred.batch_size}  dtype {pred.dtype}  optimizer {pred.optimizer}  "
        f"parameter convention {pred.framework}",
        render_table(
            ["#", "layer", "type", "output", "params", "fwd FLOPs", "bwd FLOPs", "output bytes"],
            rows,
        ),
        "",
        f"parameters              {fmt_count(pred.params)}",
        f"forward FLOPs           {fmt_flops(pred.forward_flops)}  (conv/dense/LSTM, 2 per MAC)",
        f"  + bias adds           {fmt_flops(pred.forward_flops_with_bias)}",
        f"  activation / pool     {fmt_flops(pred.total('activation_flops'))} / {fmt_flops(pred.total('pool_flops'))}",
        f"backward FLOPs          {fmt_flops(pred.backward_flops)}",
        "",
    ]
    for ledger, textbook in (
        (pred.inference, pred.textbook_inference_bytes),
        (pred.training, pred.textbook_training_bytes),
    ):
        out.append(f"memory ledger: {ledger.phase}")
        for name, value in ledger.terms:
            out.append(f"  {name:<24}{fmt_bytes(value, binary=binary):>16}")
        out.append(f"  {'peak (predicted)':<24}{fmt_bytes(ledger.peak_bytes, binary=binary):>16}")
        out.append(f"  {'textbook lower bound':<24}{fmt_bytes(textbook, binary=binary):>16}")
    for note in pred.notes:
        out.append(f"note: {note}")
    return "\n".join(out)


def cmd_predict(args: argparse.Namespace) -> int:
    spec = load_model(args.model, args)
    try:
        pred = predict(spec, args.batch, args.dtype, args.optimizer, args.framework)
    except (SpecError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(pred.as_dict(), indent=2))
    else:
        print(_prediction_text(pred, args.mib))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xfbench", description="Deep-learning benchmarks beside analytic predictions.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("models", help="list the model catalog")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("predict", help="per-layer shapes, params, FLOPs and the memory ledger")
    p.add_argument("model", help=f"catalog name ({', '.join(CATALOG)}) or a .json/.yaml spec file")
    p.add_argument("--batch", type=_positive_int, default=1)
    p.add_argument("--dtype", choices=list(DTYPE_BYTES), default="float32")
    p.add_argument("--optimizer", choices=list(OPTIMIZER_SLOTS), default="sgd")
    p.add_argument("--framework", type=_framework, default="tensorflow", help="parameter convention (LSTM biases)")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--mib", action="store_true", help="binary units (MiB) instead of decimal MB")
    _add_model_overrides(p)
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return int(args.func(args))
    except UsageError as exc:
        print(f"xfbench: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xfbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
