"""``xfbench time`` (predicted vs measured step time per layer and phase) and ``xfbench predict --from``.

``xfbench time MODEL --backend B [--batch N] [--phase inference,training] [--device cpu] [--optimizer sgd]
[--steps 3] [--json]``: measures this machine's peaks with the framework (:mod:`benchmarks.harness.peaks`), predicts
each layer and phase (:mod:`analytics.steptime`), measures the same with the framework's own profiler
(``backends.<fw>.profile.profile_layers``) and the whole step with a wall clock, and prints both side by side
with the largest gaps.

``xfbench predict MODEL --from REPORT.csv [--to REPORT.csv | --device h100]``: predicts this machine's step
times from another machine's measured ones, scaled by the ratio of the two machines' roofline predictions
(Habitat's idea): the source's peaks are its report's ``calibration`` rows; this machine's are measured now
with the same framework (or read from ``--to``, a report of this machine; or ``--device``, a datasheet,
labelled ``datasheet-based``). Every row it used is named.
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path
from typing import Any

from xfbench.analytics.roofline import get_device
from xfbench.analytics.spec import ModelSpec
from xfbench.analytics.steptime import (
    CROSS_MACHINE_BASIS,
    MachinePeaks,
    StepPrediction,
    cross_machine,
    datasheet_peaks,
    median_abs,
    peaks_from_rows,
    predict_step,
)
from xfbench.analytics.vocab import DEFAULT_DTYPE, DEFAULT_OPTIMIZER, DTYPES, OPTIMIZERS, PHASES
from xfbench.benchmarks.cli import usage
from xfbench.benchmarks.cli.argtypes import device_arg, one_backend, positive_int
from xfbench.benchmarks.cli.usage import UsageError
from xfbench.reports.table import render_table

PROFILED_PHASES = ("forward", "backward", "update")
# MXNet runs the ops of a hybridized graph and of autograd's backward in bulk segments its profiler names only
# ``ImperativeBulk``; ``xfbench time`` turns bulking off (the wall-clock step it reports is then unbulked too).
PROFILE_ENV: dict[str, dict[str, str]] = {
    "mxnet": {"MXNET_EXEC_BULK_EXEC_TRAIN": "0", "MXNET_EXEC_BULK_EXEC_INFERENCE": "0"}
}


# --------------------------------------------------------------------------------------------------------------
# xfbench time
# --------------------------------------------------------------------------------------------------------------


def compare_layers(pred: StepPrediction, measured: dict[tuple[int, str], float]) -> list[dict[str, Any]]:
    """Predicted beside measured per (layer, phase). The prediction's ``input_grad`` + ``weight_grad`` is set
    against the profiler's ``backward`` (the frameworks run both in one op for a convolution); the optimizer
    update is one measured range for all layers, so the per-layer predicted updates are summed into the
    ``(step)`` row (layer -1), like the loss. Rows are in layer order; ``gap_s`` = predicted - measured."""
    predicted: dict[tuple[int, str], dict[str, float]] = {}
    for t in pred.items:
        layer, phase = t.work.layer, t.work.phase
        if phase == "update":
            layer = -1
        merged = "backward" if phase in ("input_grad", "weight_grad") else phase
        slot = predicted.setdefault((layer, merged), {"total": 0.0, "input_grad": 0.0, "weight_grad": 0.0})
        slot["total"] += t.seconds
        if phase in ("input_grad", "weight_grad"):
            slot[phase] += t.seconds
    keys = sorted(set(predicted) | set(measured), key=lambda k: (k[0] < 0, k[0], PROFILED_PHASES.index(k[1])))
    names = pred.layer_names
    rows = []
    for layer, phase in keys:
        p = predicted.get((layer, phase), {"total": 0.0, "input_grad": 0.0, "weight_grad": 0.0})
        m = measured.get((layer, phase))
        rows.append(
            {
                "layer": layer,
                "name": names[layer] if layer >= 0 else "(step: loss, optimizer, rest)",
                "phase": phase,
                "predicted_s": p["total"],
                "predicted_input_grad_s": p["input_grad"],
                "predicted_weight_grad_s": p["weight_grad"],
                "measured_s": m,
                "gap_s": None if m is None else p["total"] - m,
            }
        )
    return rows


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v * 1e3:.3f}"


def time_report(
    spec: ModelSpec, pred: StepPrediction, rows: list[dict[str, Any]], measured_step_s: float, profiled_sum_s: float
) -> str:
    """The table of one phase, the totals and the largest gaps."""
    body = []
    for r in rows:
        split = ""
        if r["phase"] == "backward" and (r["predicted_input_grad_s"] or r["predicted_weight_grad_s"]):
            split = f"{r['predicted_input_grad_s'] * 1e3:.3f} + {r['predicted_weight_grad_s'] * 1e3:.3f}"
        rel = "-" if not r["measured_s"] else f"{r['gap_s'] / r['measured_s']:+.0%}"
        body.append(
            [
                "" if r["layer"] < 0 else r["layer"],
                r["name"],
                r["phase"],
                _ms(r["predicted_s"]),
                split,
                _ms(r["measured_s"]),
                _ms(r["gap_s"]),
                rel,
            ]
        )
    lines = [
        f"{spec.name} {pred.framework} {pred.phase} batch {pred.batch_size} {pred.dtype}"
        + (f" {pred.optimizer}" if pred.optimizer else ""),
        render_table(
            ["#", "layer", "phase", "pred ms", "dX + dW ms", "measured ms", "gap ms", "gap"],
            body,
        ),
    ]
    total = pred.total_s
    lines.append(
        f"step: predicted {total * 1e3:.3f} ms ({pred.basis}; step overhead {pred.step_overhead_s * 1e3:.3f} ms), "
        f"measured {measured_step_s * 1e3:.3f} ms (wall-clock median, no profiler), "
        f"error {(total - measured_step_s) / measured_step_s:+.1%}; profiled layers sum {profiled_sum_s * 1e3:.3f} ms"
    )
    gaps = sorted((r for r in rows if r["gap_s"] is not None), key=lambda r: -abs(r["gap_s"]))[:3]
    if gaps:
        total_gap = sum(abs(r["gap_s"]) for r in rows if r["gap_s"] is not None) or 1.0
        parts = [
            f"{r['name']} {r['phase']} {r['gap_s'] * 1e3:+.3f} ms "
            f"({abs(r['gap_s']) / total_gap:.0%} of the summed |gap|)"
            for r in gaps
        ]
        lines.append("largest gaps: " + "; ".join(parts))
    bounds = ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in pred.by_bound().items() if v)
    lines.append(f"predicted by bound: {bounds}")
    return "\n".join(lines)


def cmd_time(args: argparse.Namespace) -> int:
    from xfbench.benchmarks.cli.argtypes import load_model

    usage.check_tf32_env()
    backend = args.backend
    spec = load_model(args.model, args)
    phases = _phases(args.phase)
    for ph in phases:
        usage.require_feasible(
            spec,
            args.batch,
            ph,
            dtype=args.dtype,
            optimizer=args.optimizer,
            framework=backend,
            device=args.device,
            what=f"{args.model} {ph} at batch {args.batch}",
        )
    for key, value in PROFILE_ENV.get(backend, {}).items():  # before the framework is imported
        os.environ.setdefault(key, value)
    usage.require_backends([backend], in_process=True)

    import importlib

    from xfbench.backends import get_backend
    from xfbench.benchmarks.harness.peaks import measured_peaks, with_exact_probes
    from xfbench.benchmarks.harness.workload import Config, prepare
    from xfbench.benchmarks.matmul import time_callable

    devices = get_backend(backend).list_devices()
    if args.device not in devices:
        raise UsageError(f"--device {args.device!r}: not visible to {backend}; allowed: {', '.join(devices)}")
    profiler = importlib.import_module(f"xfbench.backends.{backend}.profile")
    peaks = measured_peaks(backend, args.device)
    results = []
    for ph in phases:
        cfg = Config(backend, args.model, ph, args.batch, args.device, args.dtype, args.optimizer, args.input_shape)
        work = prepare(cfg)
        step_s = time_callable(work.step, min_time_s=0.3, min_rounds=3, max_rounds=50).median
        measured = profiler.profile_layers(work, args.steps)
        ph_peaks = with_exact_probes(peaks, backend, args.device, spec, args.batch, ph, args.dtype, args.optimizer)
        pred = predict_step(
            spec, args.batch, ph, ph_peaks, framework=backend, dtype=args.dtype, optimizer=args.optimizer
        )
        rows = compare_layers(pred, measured)
        results.append(
            {
                "phase": ph,
                "prediction": pred.as_dict(),
                "measured_step_s": step_s,
                "profiled_sum_s": sum(measured.values()),
                "layers": rows,
                "time_rel_error": (pred.total_s - step_s) / step_s,
            }
        )
        if not args.json:
            print(time_report(spec, pred, rows, step_s, sum(measured.values())))
            print()
    if args.json:
        print(
            json.dumps({"model": spec.name, "backend": backend, "peaks": peaks.summary(), "phases": results}, indent=2)
        )
    else:
        print(f"peaks: {peaks.summary()}")
    return 0


def _phases(text: str) -> list[str]:
    items = [p.strip() for p in text.split(",") if p.strip()]
    items = [ph for p in items for ph in (PHASES if p == "both" else (p,))]
    if not items or any(p not in PHASES for p in items):
        raise UsageError(f"--phase {text!r}: allowed: {', '.join(PHASES)} or both (comma-separated)")
    return list(dict.fromkeys(items))


def register(sub: Any, usage_error: type[Exception] = UsageError) -> None:
    """Adds ``xfbench time`` to the CLI's subparsers."""
    from xfbench.benchmarks.cli.argtypes import add_model_overrides

    p = sub.add_parser("time", help="predicted vs measured step time per layer and phase (framework profilers)")
    p.add_argument("model", help="catalog name or a .json/.yaml spec file")
    p.add_argument("--backend", type=one_backend, required=True, help="torch, tensorflow or mxnet")
    p.add_argument("--batch", type=positive_int, default=1)
    p.add_argument("--phase", default=",".join(PHASES), help=f"{', '.join(PHASES)} or both (default: both)")
    p.add_argument("--device", type=device_arg, default="cpu", help="cpu, gpu or gpu:N")
    p.add_argument("--dtype", choices=DTYPES, default=DEFAULT_DTYPE)
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=DEFAULT_OPTIMIZER)
    p.add_argument("--steps", type=positive_int, default=3, help="profiled steps (after one warm-up)")
    p.add_argument("--json", action="store_true")
    add_model_overrides(p)
    p.set_defaults(func=cmd_time)


# --------------------------------------------------------------------------------------------------------------
# xfbench predict --from
# --------------------------------------------------------------------------------------------------------------


def add_predict_options(p: argparse.ArgumentParser) -> None:
    """``--from`` and ``--to`` on ``xfbench predict``."""
    p.add_argument(
        "--from",
        dest="from_report",
        metavar="REPORT.csv",
        help="predict this machine's step times from another machine's report (its model rows and calibration)",
    )
    p.add_argument(
        "--to",
        dest="to_report",
        metavar="REPORT.csv",
        help="with --from: this machine's peaks from its own report instead of measuring them now",
    )


def _records(path: str, option: str) -> list[dict[str, Any]]:
    from xfbench.reports.writer import read_report

    try:
        df = read_report(path)
    except ValueError as exc:
        raise UsageError(f"{option}: {usage.one_line(exc)}") from None
    df = df.astype(object).where(df.notna(), None)
    return [{str(k): v for k, v in r.items()} for r in df.to_dict(orient="records")]


def _model_matches(cell: Any, name: str, spec: ModelSpec) -> bool:
    text = str(cell or "")
    return text in (name, spec.name) or Path(text).name == Path(name).name or Path(text).stem == spec.name


def source_rows(
    records: list[dict[str, Any]], name: str, spec: ModelSpec, batch: int | None, dtype: str, optimizer: str
) -> list[dict[str, Any]]:
    """The report's ok model rows of this model (and batch, dtype; training rows of this optimizer)."""
    out = []
    for r in records:
        if r.get("kind") != "model" or r.get("status") != "ok" or not r.get("time_median_s"):
            continue
        if not _model_matches(r.get("model"), name, spec):
            continue
        if batch is not None and int(r.get("batch_size") or 0) != batch:
            continue
        if (r.get("dtype") or DEFAULT_DTYPE) != dtype:
            continue
        if r.get("phase") == "training" and (r.get("optimizer") or DEFAULT_OPTIMIZER) != optimizer:
            continue
        out.append(r)
    return out


def _peaks_in(records: list[dict[str, Any]], backend: str, device: str, run_id: Any, label: str) -> MachinePeaks:
    same_run = [r for r in records if r.get("run_id") == run_id]
    try:
        return peaks_from_rows(same_run, backend, device, label)
    except ValueError:
        return peaks_from_rows(records, backend, device, label)


def predict_from(args: argparse.Namespace, spec: ModelSpec) -> int:
    """``xfbench predict MODEL --from REPORT.csv``: module docstring."""
    src_records = _records(args.from_report, "--from")
    dst_records = _records(args.to_report, "--to") if args.to_report else None
    rows = source_rows(src_records, args.model, spec, args.batch, args.dtype, args.optimizer)
    if not rows:
        raise UsageError(
            f"--from {args.from_report!r}: no ok model rows of {args.model!r}"
            + (f" at batch {args.batch}" if args.batch else "")
            + f" ({args.dtype}, training with {args.optimizer}); allowed: a report that measured this model"
        )
    target_datasheet = None
    if args.device:
        try:
            target_datasheet = datasheet_peaks(get_device(args.device))
        except ValueError as exc:
            raise UsageError(f"--device: {exc}") from None
    results: list[dict[str, Any]] = []
    live: dict[tuple[str, str], MachinePeaks | str] = {}
    for r in rows:
        backend, device = str(r["backend"]), str(r.get("device") or "cpu")
        batch, phase = int(r["batch_size"]), str(r["phase"])
        used = (
            f"{args.from_report}: run {r.get('run_id')} at {r.get('timestamp')} ({backend} {device} {phase} b{batch})"
        )
        out: dict[str, Any] = {
            "backend": backend,
            "device": device,
            "phase": phase,
            "batch_size": batch,
            "source_machine": r.get("machine"),
            "source_measured_s": float(r["time_median_s"]),
            "source_row": used,
        }
        try:
            src = _peaks_in(src_records, backend, device, r.get("run_id"), f"{r.get('machine')} ({backend} {device})")
        except ValueError as exc:
            results.append({**out, "status": "skipped", "message": f"source: {exc}"})
            continue
        if target_datasheet is not None:
            dst: MachinePeaks | str = target_datasheet
        elif dst_records is not None:
            try:
                dst = peaks_from_rows(dst_records, backend, device, f"{args.to_report} ({backend} {device})")
            except ValueError as exc:
                dst = f"--to: {exc}"
        else:
            key = (backend, device)
            if key not in live:
                live[key] = _measure_here(backend, device)
            dst = live[key]
        if isinstance(dst, str):
            results.append({**out, "status": "skipped", "message": dst})
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_src = predict_step(spec, batch, phase, src, framework=backend, dtype=args.dtype, optimizer=args.optimizer)
            p_dst = predict_step(spec, batch, phase, dst, framework=backend, dtype=args.dtype, optimizer=args.optimizer)
        predicted = cross_machine(out["source_measured_s"], p_src, p_dst)
        out.update(
            {
                "status": "ok",
                "source_predicted_s": p_src.total_s,
                "target_roofline_s": p_dst.total_s,
                "time_predicted_s": predicted,
                "prediction_basis": f"{CROSS_MACHINE_BASIS}: measured x roofline({dst.basis}) / roofline({src.basis})",
                "target_peaks": dst.summary(),
                "source_peaks": src.summary(),
            }
        )
        if dst_records is not None:
            match = _same_config(dst_records, r)
            if match is not None:
                out["target_measured_s"] = float(match["time_median_s"])
                out["time_rel_error"] = (predicted - out["target_measured_s"]) / out["target_measured_s"]
                out["target_row"] = f"{args.to_report}: run {match.get('run_id')} at {match.get('timestamp')}"
        results.append(out)
    if args.json:
        print(json.dumps({"model": spec.name, "from": args.from_report, "rows": results}, indent=2))
    else:
        print(cross_machine_text(results))
    return 0


def _same_config(records: list[dict[str, Any]], row: dict[str, Any]) -> dict[str, Any] | None:
    keys = ("backend", "device", "model", "phase", "batch_size", "dtype", "optimizer")
    found = None
    for r in records:
        if r.get("kind") == "model" and r.get("status") == "ok" and r.get("time_median_s"):
            if all((r.get(k) or "") == (row.get(k) or "") for k in keys):
                found = r
    return found


def _measure_here(backend: str, device: str) -> MachinePeaks | str:
    from xfbench.backends import BackendUnavailable, get_backend

    try:
        get_backend(backend)
    except BackendUnavailable as exc:
        return (
            f"{backend} is not usable here ({usage.one_line(exc)}); give --to REPORT.csv of this machine, "
            "or run in that framework's environment"
        )
    from xfbench.benchmarks.harness.peaks import measured_peaks

    try:
        return measured_peaks(backend, device)
    except Exception as exc:
        return f"measuring {backend} on {device} here failed: {type(exc).__name__}: {usage.one_line(exc)[:200]}"


def cross_machine_text(results: list[dict[str, Any]]) -> str:
    body = []
    for r in results:
        head = [r["backend"], r["device"], r["phase"], r["batch_size"], _ms(r["source_measured_s"])]
        if r["status"] != "ok":
            body.append([*head, "-", "-", "-", "-", "-", f"skipped: {r['message']}"])
            continue
        body.append(
            [
                *head,
                _ms(r["source_predicted_s"]),
                _ms(r["target_roofline_s"]),
                _ms(r["time_predicted_s"]),
                _ms(r.get("target_measured_s")),
                "-" if r.get("time_rel_error") is None else f"{r['time_rel_error']:+.1%}",
                "",
            ]
        )
    lines = [
        render_table(
            [
                "backend",
                "device",
                "phase",
                "batch",
                "there ms",
                "roofline there",
                "roofline here",
                "predicted here",
                "measured here",
                "error",
                "note",
            ],
            body,
        ),
        "predicted here = measured there x roofline here / roofline there (Habitat's scaling, per step)",
    ]
    errors = [r["time_rel_error"] for r in results if r.get("time_rel_error") is not None]
    if errors:
        lines.append(
            f"median |error| {median_abs(errors):.1%} over {len(errors)} rows, worst {max(map(abs, errors)):.1%}"
        )
    ok = [r for r in results if r["status"] == "ok"]
    if ok:
        lines.append(f"peaks there: {ok[0]['source_peaks']}")
        lines.append(f"peaks here: {ok[0]['target_peaks']}")
    lines.append("rows used:")
    lines += [f"  {r['source_row']}" + (f" -> {r['target_row']}" if r.get("target_row") else "") for r in results]
    return "\n".join(lines)


__all__ = [
    "add_predict_options",
    "cmd_time",
    "compare_layers",
    "cross_machine_text",
    "predict_from",
    "register",
    "source_rows",
    "time_report",
]
