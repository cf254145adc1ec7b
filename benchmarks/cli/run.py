"""``xfbench run``: the benchmark suite, the same pytest run as ``pytest benchmarks --benchmark-only``."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from xfbench.benchmarks.cli import usage
from xfbench.benchmarks.cli.usage import UsageError
from xfbench.benchmarks.harness import options
from xfbench.benchmarks.harness.options import RunOptions
from xfbench.reports.paths import subprocess_env


def _check_run_options(args: argparse.Namespace) -> RunOptions:
    """What the benchmark conftest checks at configure time, checked here first so that a bad value is one
    ``xfbench: error:`` line (exit 2) before pytest starts: values, spec files, the memory each configuration
    the user named needs, and that every backend named with ``--backend`` imports (in a probe process)."""
    opts = options.parse(vars(args))
    usage.apply_tf32(opts.tf32)  # XFBENCH_TF32 for this process and every subprocess (pytest, its workers)
    usage.check_tf32_env()
    options.select_configs(opts, expand=False)  # this process stays framework-free: `all` is expanded by pytest
    if opts.report_dir is not None:
        usage.check_output_dir(opts.report_dir, "--report-dir")
    usage.require_backends(opts.named_backends)
    return opts


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    """Drives the same pytest run as ``pytest benchmarks --benchmark-only`` (one implementation), with the
    options given forwarded (:func:`options.pytest_args`)."""
    from pathlib import Path

    opts = _check_run_options(args)
    # The benchmark modules of this installation (a checkout's benchmarks/ or site-packages/xfbench/benchmarks);
    # the working directory stays the user's, so reports go to ./reports/runs unless --report-dir says otherwise.
    bench_dir = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "pytest", str(bench_dir), "--benchmark-only", "-p", "no:cacheprovider"]
    cmd += [
        "-o",
        "python_files=bench_*.py",
        "-o",
        "filterwarnings=ignore::xfbench.analytics.shapes.FlooredPaddingWarning",
    ]
    cmd += options.pytest_args(opts)
    cmd += extra
    print("running: " + " ".join(cmd), flush=True)
    return _run_pytest(cmd)


def _run_pytest(cmd: list[str]) -> int:
    """Runs the pytest child with its stderr relayed as it comes, except a usage error (pytest's ``ERROR:``
    lines, exit 4: e.g. an unknown argument passed through), which becomes one ``xfbench: error:`` line."""
    import subprocess
    import threading

    proc = subprocess.Popen(cmd, env=subprocess_env(), stderr=subprocess.PIPE, text=True, errors="replace")
    held: list[str] = []

    def relay() -> None:
        assert proc.stderr is not None
        hold = False
        for line in proc.stderr:
            hold = hold or line.startswith("ERROR: ")
            if hold:
                held.append(line)
            else:
                sys.stderr.write(line)
                sys.stderr.flush()

    pump = threading.Thread(target=relay, daemon=True)
    pump.start()
    try:
        code = proc.wait()
    except KeyboardInterrupt:
        proc.wait()  # the child got the same Ctrl-C: it stops after writing what it finished
        pump.join()
        sys.stderr.writelines(held)
        raise
    pump.join()
    if code == 4 and held:
        # pytest's usage error is xfbench's bad input: exit 2, one line (the argparse "error:" line if any).
        lines = [ln.strip() for ln in held if ln.strip()]
        detail = next((ln.split(": error: ", 1)[1] for ln in lines if ": error: " in ln), lines[0][len("ERROR: ") :])
        raise UsageError(f"pytest: {detail}")
    sys.stderr.writelines(held)
    return usage.EXIT_USAGE if code == 4 else code


def register(sub: Any, usage_error: type[Exception]) -> None:
    p = sub.add_parser(
        "run", help="the benchmark suite (same as: pytest benchmarks --benchmark-only ...); extra args go to pytest"
    )
    options.add_options(p.add_argument)
    p.set_defaults(func=cmd_run, passthrough=True)
