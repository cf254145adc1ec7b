"""``xfbench predict``: per-layer shapes, parameters, FLOPs, the memory ledger and the simulated step;
``--from``/``--to``: step times from another machine's report."""

from __future__ import annotations

import argparse
import json
from typing import Any

from xfbench.analytics.catalog import CATALOG
from xfbench.analytics.predict import Prediction, predict
from xfbench.analytics.spec import SpecError
from xfbench.analytics.units import fmt_bytes, fmt_count, fmt_flops
from xfbench.analytics.vocab import DEFAULT_DTYPE, DEFAULT_OPTIMIZER, DTYPES, OPTIMIZERS
from xfbench.benchmarks.cli.argtypes import (
    add_model_overrides,
    framework_arg,
    load_model,
    positive_int,
)
from xfbench.benchmarks.cli.usage import UsageError
from xfbench.reports.table import render_table


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
        f"parameter convention {pred.framework}  threads {pred.threads}",
        render_table(
            ["#", "layer", "type", "output", "params", "fwd FLOPs", "bwd FLOPs", "output bytes"],
            rows,
        ),
        "",
        f"parameters              {fmt_count(pred.params)}",
        f"forward FLOPs           {fmt_flops(pred.forward_flops)}  (conv/dense/LSTM, 2 per MAC)",
        f"  + bias adds           {fmt_flops(pred.forward_flops_with_bias)}",
        f"  activation / pool     {fmt_flops(pred.total('activation_flops'))} / {fmt_flops(pred.total('pool_flops'))}",
        *(
            [f"  norm / add            {fmt_flops(pred.total('norm_flops'))} / {fmt_flops(pred.total('add_flops'))}"]
            if pred.total("norm_flops") or pred.total("add_flops")
            else []
        ),
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
    if args.from_report:
        from xfbench.benchmarks.cli.time import predict_from

        return predict_from(args, spec)
    if args.to_report:
        raise UsageError("--to REPORT.csv needs --from REPORT.csv (the other machine's report)")
    try:
        pred = predict(spec, args.batch or 1, args.dtype, args.optimizer, args.framework, args.threads)
    except (SpecError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    data = pred.as_dict()
    if args.device:
        from xfbench.analytics.roofline import model_time_estimate

        try:
            data["time_estimate"] = model_time_estimate(data, args.device)
        except ValueError as exc:
            raise UsageError(f"--device: {exc}") from None
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(_prediction_text(pred, args.mib))
        from xfbench.analytics.predict import simulated_text

        print(simulated_text(pred, args.mib))
        if args.device:
            est = data["time_estimate"]
            print(
                f"time estimate on {args.device} ({est['label']}, roofline from the device's datasheet peak): "
                f"forward {est['forward_s'] * 1e3:.3f} ms ({est.get('forward_bound', '')}-bound), "
                f"training step {est['training_s'] * 1e3:.3f} ms ({est.get('training_bound', '')}-bound)"
            )
    return 0


def register(sub: Any, usage_error: type[Exception]) -> None:
    p = sub.add_parser("predict", help="per-layer shapes, params, FLOPs and the memory ledger")
    p.add_argument("model", help=f"catalog name ({', '.join(CATALOG)}) or a .json/.yaml spec file")
    p.add_argument("--batch", type=positive_int, default=None, help="default 1 (with --from: every batch measured)")
    p.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE)
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=DEFAULT_OPTIMIZER)
    p.add_argument("--framework", type=framework_arg, default="tensorflow", help="parameter convention (LSTM biases)")
    p.add_argument(
        "--threads",
        type=positive_int,
        default=1,
        help="the framework's intra-op threads the simulated step assumes (TensorFlow's conv-gradient scratch "
        "depends on them; default 1: the prediction never reads this machine)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    p.add_argument("--mib", action="store_true", help="binary units (MiB) instead of decimal MB")
    p.add_argument("--device", help="estimate step times on a catalog device (h100, a100-80gb, t4, ...)")
    add_model_overrides(p)
    from xfbench.benchmarks.cli import time as time_cmd

    time_cmd.add_predict_options(p)
    p.set_defaults(func=cmd_predict)
