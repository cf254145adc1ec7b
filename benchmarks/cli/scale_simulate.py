"""``xfbench scale --simulate``: data-parallel step time, speedup and efficiency past this machine, by simulation.

``xfbench scale --simulate --nodes 1,2,4 --gpus-per-node 8 --network 25Gbit/s,5us (--device-step-time S |
--device-throughput SAMPLES_PER_S --per-device-batch B | --from-report CSV) (--grad-bytes N | --model NAME)
[--intra-network 15.75GB/s,5.7us] [--fusion-mb 64] [--overlap 0.667] [--allreduce hierarchical|ring] [--out FILE]``

The model is analytics/scaling_sim.py's (see its docstring and docs/scaling-simulation.md). Nothing here imports a
deep-learning framework; bad input raises ``UsageError`` (one line, exit 2).
"""

from __future__ import annotations

import argparse
import csv
import math
from pathlib import Path
from typing import Any

from xfbench.benchmarks.cli.argtypes import positive_int, positive_int_list
from xfbench.benchmarks.cli.usage import UsageError, load_model, one_line


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; allowed: a positive number") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: a positive number")
    return value


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number; allowed: a fraction in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r}; allowed: a fraction in [0, 1]")
    return value


def add_simulate_arguments(parser: argparse.ArgumentParser, *, model_options: bool = False) -> None:
    """Adds the ``--simulate`` options to ``parser`` (``xfbench scale``'s). ``model_options``: also add
    ``--model`` and ``--backend`` (``scale`` has its own; a standalone parser needs them)."""
    from xfbench.analytics.scaling_sim import ALGORITHMS, DEFAULT_INTRA_NETWORK

    g = parser.add_argument_group("simulation (--simulate: predict, run nothing)")
    g.add_argument("--simulate", action="store_true", help="predict step time/speedup/efficiency on N nodes")
    g.add_argument(
        "--nodes", type=positive_int_list, default=(1, 2, 4, 8, 16, 32, 64), help="node counts (default 1,2,..,64)"
    )
    g.add_argument("--gpus-per-node", type=positive_int, default=8, help="devices per node (default 8)")
    g.add_argument("--network", default="25Gbit/s,5us", help="inter-node link BANDWIDTH,LATENCY (default 25Gbit/s,5us)")
    g.add_argument(
        "--intra-network",
        default=DEFAULT_INTRA_NETWORK,
        help=f"intra-node link (default {DEFAULT_INTRA_NETWORK}: PCIe 3.0 x16, NCCL's PCI ring-step latency)",
    )
    g.add_argument("--device-step-time", type=_positive_float, help="seconds of one step on ONE device")
    g.add_argument("--device-throughput", type=_positive_float, help="samples/s of ONE device at --per-device-batch")
    g.add_argument("--per-device-batch", type=positive_int, help="samples per device per step")
    g.add_argument("--from-report", metavar="CSV", help="take the device step time from a training row of this CSV")
    g.add_argument("--grad-bytes", type=_positive_float, help="bytes all-reduced per step (default: from --model)")
    g.add_argument("--fusion-mb", type=_positive_float, default=64.0, help="fusion buffer, MiB (Horovod: 64)")
    g.add_argument("--overlap", type=_fraction, default=2.0 / 3.0, help="share of the step comm can hide behind")
    g.add_argument("--allreduce", choices=list(ALGORITHMS), default="hierarchical", help="default hierarchical")
    g.add_argument("--out", metavar="FILE", help="also write the rows to this CSV")
    if model_options:
        g.add_argument("--model", help="catalog name or spec file (gradient bytes; --from-report's model)")
        g.add_argument("--backend", help="--from-report: the backend's rows; parameter convention")


def _single(value: Any, option: str) -> str | None:
    """``--model``/``--backend`` as one name (``scale`` parses them as comma lists)."""
    if value is None:
        return None
    items = [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    if len(items) != 1:
        raise UsageError(f"{option} {','.join(items)!r}: --simulate takes one; allowed: a single name")
    return items[0]


def _report_step_time(path: str, model: str | None, backend: str | None, batch: int | None) -> tuple[float, int]:
    """``(time_median_s, batch_size)`` of the one ok training row of ``model`` (and ``backend``, ``batch``)."""
    if model is None:
        raise UsageError(f"--from-report {path!r} needs --model; allowed: the model whose training row to use")
    p = Path(path)
    try:
        with p.open(newline="", encoding="utf-8") as fh:
            lines = [ln for ln in fh if not ln.startswith("#")]
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise UsageError(f"--from-report {path!r}: cannot read ({why}); allowed: a report CSV") from None
    rows = list(csv.DictReader(lines))
    need = {"kind", "model", "backend", "phase", "batch_size", "time_median_s", "status"}
    if not rows or not need <= set(rows[0]):
        raise UsageError(f"--from-report {path!r}: not a report CSV (needs columns {', '.join(sorted(need))})")
    picked = [
        r
        for r in rows
        if r["kind"] == "model"
        and r["phase"] == "training"
        and r["status"] == "ok"
        and r["model"] == model
        and (backend is None or r["backend"] == backend)
        and (batch is None or r["batch_size"] == str(batch))
        and r["time_median_s"]
    ]
    what = f"model {model}" + (f", backend {backend}" if backend else "") + (f", batch {batch}" if batch else "")
    if not picked:
        raise UsageError(f"--from-report {path!r}: no ok training row for {what}")
    keys = {(r["backend"], r["batch_size"]) for r in picked}
    if len(keys) > 1:
        found = ", ".join(f"{b} batch {s}" for b, s in sorted(keys))
        raise UsageError(
            f"--from-report {path!r}: several training rows for {what} ({found}); name --backend and --per-device-batch"
        )
    row = picked[-1]
    try:
        return float(row["time_median_s"]), int(row["batch_size"])
    except ValueError:
        raise UsageError(f"--from-report {path!r}: unreadable time_median_s/batch_size in the row for {what}") from None


def _device_step_time(args: argparse.Namespace, model: str | None, backend: str | None) -> float:
    given = [
        name
        for name, value in (
            ("--device-step-time", args.device_step_time),
            ("--device-throughput", args.device_throughput),
            ("--from-report", args.from_report),
        )
        if value is not None
    ]
    if len(given) != 1:
        raise UsageError(
            f"--simulate needs exactly one of --device-step-time, --device-throughput, --from-report; got "
            f"{', '.join(given) if given else 'none'}"
        )
    if args.device_step_time is not None:
        return float(args.device_step_time)
    if args.device_throughput is not None:
        if args.per_device_batch is None:
            raise UsageError("--device-throughput needs --per-device-batch; allowed: a positive integer")
        return float(args.per_device_batch) / float(args.device_throughput)
    seconds, _ = _report_step_time(args.from_report, model, backend, args.per_device_batch)
    return seconds


def _grad_bytes(args: argparse.Namespace, model: str | None, backend: str | None) -> float:
    if args.grad_bytes is not None:
        return float(args.grad_bytes)
    if model is None:
        raise UsageError("--simulate needs --grad-bytes or --model; allowed: bytes per step or a catalog name/spec")
    from xfbench.analytics.scaling import gradient_bytes

    spec = load_model(model, option="--model")
    try:
        return float(gradient_bytes(spec, backend or "torch"))
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None


def format_table(rows: list[Any]) -> str:
    """The text table: nodes, devices, step time, speedup, efficiency, comm, exposed comm."""
    head = ("nodes", "devices", "step ms", "speedup", "efficiency", "comm ms", "exposed ms")
    body = [
        (
            str(r.nodes),
            str(r.devices),
            f"{r.step_time_s * 1e3:.2f}",
            f"{r.speedup:.2f}",
            f"{r.efficiency:.1%}",
            f"{r.comm_s * 1e3:.2f}",
            f"{r.exposed_comm_s * 1e3:.2f}",
        )
        for r in rows
    ]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def run_simulate(args: argparse.Namespace) -> int:
    """Runs the simulation for ``args`` (the options of :func:`add_simulate_arguments`); prints the table,
    writes ``--out``; returns 0. Bad input: ``UsageError``."""
    from xfbench.analytics.scaling_sim import parse_network, simulate

    try:
        inter = parse_network(args.network)
    except ValueError as exc:
        raise UsageError(f"--{one_line(exc)}") from None
    try:
        intra = parse_network(args.intra_network)
    except ValueError as exc:
        raise UsageError(f"--intra-{one_line(exc)}") from None
    model = _single(getattr(args, "model", None), "--model")
    backend = _single(getattr(args, "backend", None), "--backend")
    step = _device_step_time(args, model, backend)
    grad = _grad_bytes(args, model, backend)
    try:
        rows = simulate(
            grad,
            step,
            args.nodes,
            args.gpus_per_node,
            inter,
            intra,
            fusion_bytes=float(args.fusion_mb) * 1024 * 1024,
            overlap=float(args.overlap),
            algorithm=args.allreduce,
        )
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None
    print(
        f"simulated data-parallel step: grad {grad / 1e6:.2f} MB, device step {step * 1e3:.2f} ms, "
        f"{args.gpus_per_node} devices/node, network {args.network}, intra {args.intra_network}, "
        f"{args.allreduce} all-reduce, fusion {args.fusion_mb:g} MiB, overlap {args.overlap:.3g}"
    )
    print(format_table(rows))
    if args.out:
        out = Path(args.out)
        try:
            with out.open("w", newline="", encoding="utf-8") as fh:
                writer = csv.DictWriter(fh, fieldnames=list(rows[0].as_dict()))
                writer.writeheader()
                for r in rows:
                    writer.writerow(r.as_dict())
        except OSError as exc:
            raise UsageError(f"--out {args.out!r}: cannot write ({exc.strerror or type(exc).__name__})") from None
        print(f"csv: {out}")
    return 0


__all__ = ["add_simulate_arguments", "format_table", "run_simulate"]
