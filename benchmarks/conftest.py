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
from xfbench.benchmarks.cli.usage import EXIT_NOTHING_MEASURED, UsageError, apply_tf32
from xfbench.benchmarks.harness import options
from xfbench.benchmarks.harness.options import Selection, from_pytest_config, select_configs
from xfbench.benchmarks.harness.workload import Config, base_row

# Tests that passed in this session (each measured something), counted for "measured nothing".
_PASSED: list[str] = []


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    name = collection_path.name
    if name.startswith("bench_") and name.endswith(".py"):
        return name[len("bench_") : -len(".py")] not in from_pytest_config(config).suites
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    options.add_options(parser.getgroup("xfbench").addoption)


def selection_from_options(config: pytest.Config) -> Selection:
    """What the options select (computed once per session; ``--device all`` expanded per backend);
    ``pytest.UsageError`` for a bad value."""
    cached = getattr(config, "_xfbench_selection", None)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    try:
        selection = select_configs(from_pytest_config(config))
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
    """Every option value, at configure time: one ``UsageError`` line for the first bad one; then the
    environment this run's subprocesses inherit (``--memory-repeats``, ``--tf32``)."""
    from xfbench.benchmarks.cli.usage import require_backends
    from xfbench.benchmarks.harness.rows import MEMORY_REPEATS_ENV, memory_repeats

    opts = from_pytest_config(config)
    if opts.memory_repeats is not None:
        os.environ[MEMORY_REPEATS_ENV] = str(opts.memory_repeats)
    try:
        memory_repeats()  # a bad XFBENCH_MEMORY_REPEATS in the environment is bad input too
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    apply_tf32(opts.tf32)
    # Named backends must import; the default set skips absent frameworks with a reason.
    require_backends(opts.named_backends, in_process=True)


#: The thread-count variables a run pins, before any framework is imported (each framework reads one at import).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS")


def pin_threads() -> None:
    """Pins the run: its CPU affinity (this process's, set explicitly, inherited by every worker and timing process)
    and the frameworks' intra-op threads (each variable of :data:`THREAD_VARIABLES` the user left unset is set to
    the affinity's CPU count, the frameworks' own default on a machine they have to themselves), so that every
    process of the run, and every run, uses the same threads; rows record them (``threads``, ``cpu_affinity``)."""
    try:
        cpus = os.sched_getaffinity(0)
        os.sched_setaffinity(0, cpus)
    except (AttributeError, OSError):
        cpus = set(range(os.cpu_count() or 1))
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, str(len(cpus)))


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config.option, "report_dir"):
        return
    _PASSED.clear()
    pin_threads()
    from xfbench.reports.writer import ReportError, RunWriter

    # Bad options fail here, as one usage line, not as a collection error per module.
    try:
        _check_options(config)
    except UsageError as exc:
        raise pytest.UsageError(str(exc)) from None
    selection = selection_from_options(config)
    report_dir = from_pytest_config(config).report_dir
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


# --- the noise probe (benchmarks/harness/noise.py): before the first measurement, after half the tests, at the end --


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    from xfbench.benchmarks.harness import noise

    noise.attach(getattr(config, "_xfbench_writer", None), sum(1 for item in items if _is_model_test(item.nodeid)))


def _is_model_test(nodeid: str) -> bool:
    return "bench_models.py::" in nodeid


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    from xfbench.benchmarks.harness import noise

    if _is_model_test(nodeid):
        noise.finished_one()


def _measured_nothing(config: pytest.Config) -> bool:
    writer = getattr(config, "_xfbench_writer", None)
    if writer is None:
        return False
    counts = writer.status_counts
    from xfbench.benchmarks.harness import noise

    measured = counts.get("ok", 0) - len(noise.RUN["rows"])  # the probe's rows measure the machine, not a config
    return not _PASSED and measured <= 0 and not counts.get("oom")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from xfbench.benchmarks.harness import noise

    noise.end()
    # Every configuration skipped (absent framework or device, refused for memory): not a success.
    if exitstatus == 0 and _measured_nothing(session.config):
        session.exitstatus = EXIT_NOTHING_MEASURED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = getattr(config, "_xfbench_rows", None)
    writer = getattr(config, "_xfbench_writer", None)
    if writer is None:
        return
    if rows:
        from xfbench.benchmarks.harness import noise
        from xfbench.benchmarks.harness.summary import summary_table

        terminalreporter.write_sep("=", "xfbench summary")
        terminalreporter.write_line(summary_table(rows, noise.RUN["rows"]))
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
    return from_pytest_config(request.config).rounds


@pytest.fixture
def measure_memory(request: pytest.FixtureRequest) -> bool:
    return not from_pytest_config(request.config).no_memory


@pytest.fixture
def memory_limit(request: pytest.FixtureRequest) -> str | None:
    return from_pytest_config(request.config).memory_limit  # checked at configure time


__all__ = ["sys"]
