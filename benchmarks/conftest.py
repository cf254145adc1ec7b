"""pytest options and parametrization for the benchmark modules.

``pytest benchmarks --benchmark-only [--backend torch,mxnet] [--device cpu,gpu:0|all]
[--models cnn3,lstm] [--batch 8,32] [--phase inference,training] [--profile quick|full]
[--tf32 on|off] [--memory-repeats N] [--report-dir reports/runs]``

Every option is checked at configure time: a bad value is one ``ERROR:`` line (``pytest.UsageError``),
before anything is built. A backend named with ``--backend`` that is not installed, or fails to import,
is such an error (it names the install command); without ``--backend`` an absent framework is skipped
with a reason. A configuration whose memory ledger exceeds this machine's RAM is refused when the user
named its model or batch, and skipped (a ``skipped`` row saying the bytes it needs) when a profile chose
it. A run in which every configuration was skipped says "measured nothing" and exits with code 5.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from xfbench.benchmarks.profiles import PROFILES
from xfbench.benchmarks.usage import EXIT_NOTHING_MEASURED, TF32_VALUES, UsageError
from xfbench.benchmarks.workload import (
    DEFAULT_DEVICE,
    DEFAULT_DTYPE,
    DEFAULT_OPTIMIZER,
    DEFAULT_PHASES,
    DEFAULT_PROFILE,
    DEFAULT_SUITES,
    SUITES,
    Config,
    Selection,
    base_row,
    parse_list,
    parse_suites,
    select_configs,
)

# Tests that passed in this session (each measured something), counted for "measured nothing".
_PASSED: list[str] = []


def _suites(config: pytest.Config) -> set[str]:
    try:
        return parse_suites(config.getoption("--suite"))
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    name = collection_path.name
    if name.startswith("bench_") and name.endswith(".py"):
        return name[len("bench_") : -len(".py")] not in _suites(config)
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("xfbench")
    g.addoption("--backend", default=None, help="comma-separated backends (default: all; absent ones skip)")
    g.addoption("--device", default=DEFAULT_DEVICE, help="comma-separated devices: cpu, gpu, gpu:N, or 'all'")
    g.addoption("--models", default=None, help="comma-separated catalog names or spec files (default: catalog)")
    g.addoption("--batch", default=None, help="comma-separated batch sizes (default: the profile's)")
    g.addoption("--phase", default=DEFAULT_PHASES, help="inference, training or both")
    g.addoption("--profile", default=DEFAULT_PROFILE, help=f"batch sizes and rounds: {', '.join(sorted(PROFILES))}")
    g.addoption("--optimizer", default=DEFAULT_OPTIMIZER, help="sgd, momentum or adam")
    g.addoption("--dtype", default=DEFAULT_DTYPE, help="float32, float16 or bfloat16")
    g.addoption("--rounds", default=None, help="timed rounds per benchmark (default: the profile's)")
    g.addoption("--no-memory", action="store_true", help="skip the per-configuration memory process")
    g.addoption(
        "--memory-limit",
        default=None,
        help="cap each memory process's address space (RLIMIT_AS), e.g. 4GB: over-budget steps become oom rows",
    )
    g.addoption(
        "--memory-repeats",
        default=None,
        help="fresh processes per memory figure (the median is reported, the spread beside it; default 3; sets "
        "XFBENCH_MEMORY_REPEATS for this run's workers)",
    )
    g.addoption(
        "--tf32",
        default=None,
        help=f"TF32 matmuls on GPUs: {' or '.join(TF32_VALUES)} (sets XFBENCH_TF32 for this run and its "
        "subprocesses; default: the backends' own)",
    )
    g.addoption(
        "--suite",
        default=",".join(DEFAULT_SUITES),
        help=f"benchmark modules to run, comma-separated from {', '.join(SUITES)} or 'all' "
        f"(default: {','.join(DEFAULT_SUITES)}; the exercise checker also runs as `xfbench exercises`)",
    )
    g.addoption(
        "--report-dir",
        default=None,
        help="where the CSV run file goes (default: ./reports/runs of the working directory)",
    )


def selection_from_options(config: pytest.Config) -> Selection:
    """What the options select (computed once per session); ``pytest.UsageError`` for a bad value."""
    cached = getattr(config, "_xfbench_selection", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    try:
        selection = select_configs(
            backend=config.getoption("--backend"),
            models=config.getoption("--models"),
            phase=config.getoption("--phase"),
            batch=config.getoption("--batch"),
            profile=config.getoption("--profile"),
            device=config.getoption("--device"),
            dtype=config.getoption("--dtype"),
            optimizer=config.getoption("--optimizer"),
        )
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    config._xfbench_selection = selection  # type: ignore[attr-defined]
    return selection


def configs_from_options(config: pytest.Config) -> list[tuple[Config, Any]]:
    """Every (Config, Plan) the options select that can run, in a stable order."""
    return selection_from_options(config).configs


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_config" in metafunc.fixturenames:
        selection = selection_from_options(metafunc.config)
        params = [pytest.param(pair, id=pair[0].id) for pair in selection.configs]
        params += [
            pytest.param((cfg, None), id=cfg.id, marks=pytest.mark.skip(reason=why))
            for cfg, why in selection.infeasible
        ]
        metafunc.parametrize("bench_config", params)


def _check_options(config: pytest.Config) -> None:
    """Every option value, at configure time: one ``UsageError`` line for the first bad one."""
    from xfbench.backends import canonical_name
    from xfbench.benchmarks.usage import require_backends, tf32_value
    from xfbench.benchmarks.worker import parse_size

    parse_suites(config.getoption("--suite"))
    rounds = config.getoption("--rounds")
    if rounds is not None and (not str(rounds).isdigit() or int(rounds) <= 0):
        raise UsageError(f"--rounds {rounds!r}: allowed: a positive integer")
    limit = config.getoption("--memory-limit")
    if limit is not None:
        try:
            parse_size(limit)
        except ValueError as exc:
            raise UsageError(f"--memory-limit: {exc}") from None
    repeats = config.getoption("--memory-repeats")
    if repeats is not None:
        if not str(repeats).isdigit() or int(repeats) <= 0:
            raise UsageError(f"--memory-repeats {repeats!r}: allowed: a positive integer")
        from xfbench.benchmarks.measure import MEMORY_REPEATS_ENV

        os.environ[MEMORY_REPEATS_ENV] = str(int(repeats))
    from xfbench.benchmarks.measure import memory_repeats

    try:
        memory_repeats()  # a bad XFBENCH_MEMORY_REPEATS in the environment is bad input too
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    tf32 = config.getoption("--tf32")
    if tf32 is not None:
        try:
            os.environ["XFBENCH_TF32"] = tf32_value(tf32)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    try:
        named = [canonical_name(b) for b in parse_list(config.getoption("--backend"))]
    except ValueError as exc:
        raise UsageError(f"--backend: {exc}") from None
    # Named backends must import; the default set skips absent frameworks with a reason.
    require_backends(named, in_process=True)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config.option, "report_dir"):
        return
    _PASSED.clear()
    from xfbench.reports.writer import ReportError, RunWriter

    # Bad options fail here, as one usage line, not as a collection error per module.
    try:
        _check_options(config)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    selection = selection_from_options(config)
    report_dir = config.getoption("--report-dir")
    try:
        writer = RunWriter(Path(report_dir) if report_dir else None)
    except ReportError as exc:
        raise pytest.UsageError(f"--report-dir: {exc}") from None
    config._xfbench_writer = writer  # type: ignore[attr-defined]
    config._xfbench_rows = []  # type: ignore[attr-defined]
    # A configuration refused for its memory is a finished row too (nothing was allocated for it).
    for cfg, why in selection.infeasible:
        row = {**base_row(cfg), "status": "skipped", "message": f"not attempted: {why}"}
        writer.write_row(row)
        config._xfbench_rows.append(row)  # type: ignore[attr-defined]
    # Keep pytest-benchmark's own JSON beside the CSV (usable by `pytest-benchmark compare`).
    if getattr(config.option, "benchmark_json", None) is None and hasattr(config.option, "benchmark_json"):
        config.option.benchmark_json = str(writer.json_path)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.when == "call" and report.passed:
        _PASSED.append(report.nodeid)


def _measured_nothing(config: pytest.Config) -> bool:
    writer = getattr(config, "_xfbench_writer", None)
    if writer is None:
        return False
    counts = writer.status_counts
    return not _PASSED and not counts.get("ok") and not counts.get("oom")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # Every configuration skipped (absent framework or device, refused for memory): not a success.
    if exitstatus == 0 and _measured_nothing(session.config):
        session.exitstatus = EXIT_NOTHING_MEASURED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = getattr(config, "_xfbench_rows", None)
    writer = getattr(config, "_xfbench_writer", None)
    if writer is None:
        return
    if rows:
        from xfbench.benchmarks.summary import summary_table

        terminalreporter.write_sep("=", "xfbench summary")
        terminalreporter.write_line(summary_table(rows))
    terminalreporter.write_line(f"report: {writer.path}")
    json_path = getattr(writer, "json_path", None)
    if json_path and os.path.exists(json_path):
        terminalreporter.write_line(f"pytest-benchmark JSON: {json_path}")
    if exitstatus == 0 and _measured_nothing(config):
        terminalreporter.write_line(
            f"xfbench: measured nothing: every selected configuration was skipped (reasons above); "
            f"exit code {EXIT_NOTHING_MEASURED}",
            red=True,
        )


def pytest_unconfigure(config: pytest.Config) -> None:
    writer = getattr(config, "_xfbench_writer", None)
    if writer is not None:
        writer.close()


@pytest.fixture
def xfbench_writer(request: pytest.FixtureRequest) -> Any:
    return request.config._xfbench_writer  # type: ignore[attr-defined]


@pytest.fixture
def xfbench_rows(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return request.config._xfbench_rows  # type: ignore[attr-defined]


@pytest.fixture
def rounds_override(request: pytest.FixtureRequest) -> int | None:
    value = request.config.getoption("--rounds")
    return None if value is None else int(value)


@pytest.fixture
def measure_memory(request: pytest.FixtureRequest) -> bool:
    return not request.config.getoption("--no-memory")


@pytest.fixture
def memory_limit(request: pytest.FixtureRequest) -> str | None:
    value: str | None = request.config.getoption("--memory-limit")
    return value  # checked at configure time


__all__ = ["sys"]
