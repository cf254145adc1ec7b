"""pytest options and parametrization for the benchmark modules.

``pytest benchmarks --benchmark-only [--backend torch,mxnet] [--device cpu,gpu:0|all]
[--models cnn3,lstm] [--batch 8,32] [--phase inference,training] [--profile quick|full]
[--report-dir reports/runs]``
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from xfbench.analytics.catalog import CATALOG
from xfbench.backends import BACKENDS, canonical_name
from xfbench.benchmarks.profiles import DEFAULT_PLAN, PROFILES
from xfbench.benchmarks.workload import PHASES, Config, parse_list

SUITES = ("models", "harness", "matmul", "scaling", "exercises")
DEFAULT_SUITES = ("models", "harness", "matmul", "scaling")


def _suites(config: pytest.Config) -> set[str]:
    chosen = parse_list(config.getoption("--suite"))
    if chosen == ["all"]:
        return set(SUITES)
    for name in chosen:
        if name not in SUITES:
            raise pytest.UsageError(f"--suite {name!r}: allowed: {', '.join(SUITES)} or all")
    return set(chosen)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    name = collection_path.name
    if name.startswith("bench_") and name.endswith(".py"):
        return name[len("bench_") : -len(".py")] not in _suites(config)
    return None


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("xfbench")
    g.addoption("--backend", default=None, help="comma-separated backends (default: all; absent ones skip)")
    g.addoption("--device", default="cpu", help="comma-separated devices: cpu, gpu, gpu:N, or 'all'")
    g.addoption("--models", default=None, help="comma-separated catalog names or spec files (default: catalog)")
    g.addoption("--batch", default=None, help="comma-separated batch sizes (default: the profile's)")
    g.addoption("--phase", default="inference,training", help="inference, training or both")
    g.addoption("--profile", default="quick", choices=sorted(PROFILES), help="batch sizes and rounds")
    g.addoption("--optimizer", default="sgd", choices=["sgd", "momentum", "adam"])
    g.addoption("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.addoption("--rounds", type=int, default=None, help="timed rounds per benchmark (default: the profile's)")
    g.addoption("--no-memory", action="store_true", help="skip the per-configuration memory process")
    g.addoption(
        "--memory-limit",
        default=None,
        help="cap each memory process's address space (RLIMIT_AS), e.g. 4GB: over-budget steps become oom rows",
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


def _bad(message: str) -> pytest.UsageError:
    return pytest.UsageError(message)


def _batches(text: str | None) -> list[int] | None:
    if text is None:
        return None
    out = []
    for item in parse_list(text):
        if not item.isdigit() or int(item) <= 0:
            raise _bad(f"--batch {item!r}: allowed: positive integers, comma-separated")
        out.append(int(item))
    return out


def _devices(text: str) -> list[str]:
    items = parse_list(text)
    if items == ["all"]:
        return ["all"]
    for d in items:
        if d not in ("cpu", "gpu") and not (d.startswith("gpu:") and d[4:].isdigit()):
            raise _bad(f"--device {d!r}: allowed: cpu, gpu, gpu:N or all")
    return items


def configs_from_options(config: pytest.Config) -> list[tuple[Config, Any]]:
    """Every (Config, Plan) the options select, in a stable order."""
    try:
        backends = [canonical_name(b) for b in parse_list(config.getoption("--backend"))] or list(BACKENDS)
    except ValueError as exc:
        raise _bad(f"--backend: {exc}") from None
    models = parse_list(config.getoption("--models")) or list(CATALOG)
    for m in models:
        if m not in CATALOG and not Path(m).exists():
            raise _bad(f"--models {m!r}: allowed: {', '.join(CATALOG)} or an existing .json/.yaml file")
    phases = parse_list(config.getoption("--phase"))
    for ph in phases:
        if ph not in PHASES:
            raise _bad(f"--phase {ph!r}: allowed: {', '.join(PHASES)}")
    batches = _batches(config.getoption("--batch"))
    profile = PROFILES[config.getoption("--profile")]
    devices = _devices(config.getoption("--device"))
    out = []
    for backend in backends:
        for model in models:
            plan = profile.get(model, DEFAULT_PLAN)
            for phase in phases:
                for batch in batches or plan.batch_sizes:
                    for device in devices:
                        cfg = Config(
                            backend,
                            model,
                            phase,
                            batch,
                            device,
                            config.getoption("--dtype"),
                            config.getoption("--optimizer"),
                        )
                        out.append((cfg, plan))
    return out


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "bench_config" in metafunc.fixturenames:
        pairs = configs_from_options(metafunc.config)
        metafunc.parametrize("bench_config", pairs, ids=[c.id for c, _ in pairs])


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if not hasattr(config.option, "report_dir"):
        return
    # Bad options fail here, as one usage line, not as a collection error per module.
    _suites(config)
    configs_from_options(config)
    from xfbench.reports.writer import RunWriter

    report_dir = config.getoption("--report-dir")
    writer = RunWriter(Path(report_dir) if report_dir else None)
    config._xfbench_writer = writer  # type: ignore[attr-defined]
    config._xfbench_rows = []  # type: ignore[attr-defined]
    # Keep pytest-benchmark's own JSON beside the CSV (usable by `pytest-benchmark compare`).
    if getattr(config.option, "benchmark_json", None) is None and hasattr(config.option, "benchmark_json"):
        config.option.benchmark_json = str(writer.json_path)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = getattr(config, "_xfbench_rows", None)
    writer = getattr(config, "_xfbench_writer", None)
    if writer is None or not rows:
        return
    from xfbench.benchmarks.summary import summary_table

    terminalreporter.write_sep("=", "xfbench summary")
    terminalreporter.write_line(summary_table(rows))
    terminalreporter.write_line(f"report: {writer.path}")
    json_path = getattr(writer, "json_path", None)
    if json_path and os.path.exists(json_path):
        terminalreporter.write_line(f"pytest-benchmark JSON: {json_path}")


@pytest.fixture
def xfbench_writer(request: pytest.FixtureRequest) -> Any:
    return request.config._xfbench_writer  # type: ignore[attr-defined]


@pytest.fixture
def xfbench_rows(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return request.config._xfbench_rows  # type: ignore[attr-defined]


@pytest.fixture
def rounds_override(request: pytest.FixtureRequest) -> int | None:
    return request.config.getoption("--rounds")


@pytest.fixture
def measure_memory(request: pytest.FixtureRequest) -> bool:
    return not request.config.getoption("--no-memory")


@pytest.fixture
def memory_limit(request: pytest.FixtureRequest) -> str | None:
    value = request.config.getoption("--memory-limit")
    if value is not None:
        from xfbench.benchmarks.worker import parse_size

        try:
            parse_size(value)
        except ValueError as exc:
            raise pytest.UsageError(f"--memory-limit: {exc}") from None
    return value


__all__ = ["sys"]
