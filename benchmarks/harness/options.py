"""The run options of the benchmark suite, declared once: ``pytest benchmarks --benchmark-only`` and
``xfbench run`` are both built from :data:`OPTIONS`.

One :class:`Option` per command-line option: its flag, help, default (as typed on the command line) and the
parser that turns the text into a typed value. From the table come the pytest options
(:func:`add_options` with the conftest's ``addoption``), the ``xfbench run`` arguments (:func:`add_options`
with argparse's ``add_argument``) and the arguments ``xfbench run`` forwards to its pytest child
(:func:`pytest_args`). Both parsers leave an option that is not given at ``None``, so its one default is
applied here: :func:`parse` turns the values into the frozen :class:`RunOptions` the bench modules read
(:func:`from_pytest_config`: parsed once per pytest session) and :func:`select_configs` turns those into
the model configurations.

Bad values raise ``usage.UsageError``: one line naming the option, the value and what is allowed.

The words (dtypes, phases, optimizers, backend names and aliases, devices) are those of analytics/vocab.py.
``--device all`` means one thing in every bench module: every device the backend sees
(:meth:`RunOptions.devices_for`: ``vocab.expand_devices`` over the backend's ``list_devices()``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Any

from xfbench.analytics import vocab
from xfbench.benchmarks.cli.usage import TF32_VALUES, UsageError, tf32_value
from xfbench.benchmarks.harness.profiles import DEFAULT_PLAN, PROFILES, Plan
from xfbench.benchmarks.harness.workload import Config, parse_list

DEFAULT_PROFILE = "quick"
SUITES = ("models", "harness", "matmul", "scaling", "exercises")
DEFAULT_SUITES = ("models", "harness", "matmul", "scaling")

# --- parsers: option text (the default already applied; None where there is none) -> typed value -----------


def _one_of(flag: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        if text not in allowed:
            raise UsageError(f"{flag} {text!r}: allowed: {', '.join(allowed)}")
        return text

    return parse


def _phases(text: str) -> tuple[str, ...]:
    items = parse_list(text)
    if not items:
        raise UsageError(f"--phase {text!r}: allowed: {', '.join(vocab.PHASES)}")
    return tuple(dict.fromkeys(_one_of("--phase", vocab.PHASES)(item) for item in items))


def _suites(text: str) -> tuple[str, ...]:
    """Benchmark modules from SUITES, comma-separated, or 'all'; in SUITES order."""
    chosen = parse_list(text)
    if chosen == ["all"]:
        return SUITES
    for name in chosen or [text]:
        if name not in SUITES:
            raise UsageError(f"--suite {name!r}: allowed: {', '.join(SUITES)} or all")
    return tuple(s for s in SUITES if s in chosen)


def _backends(text: str | None) -> tuple[str, ...]:
    try:
        return tuple(dict.fromkeys(vocab.canonical_backend(b) for b in parse_list(text)))
    except ValueError as exc:
        raise UsageError(f"--backend: {exc}") from None


def _devices(text: str) -> tuple[str, ...]:
    try:
        return tuple(vocab.parse_devices(text))
    except ValueError as exc:
        raise UsageError(f"--device: {exc}") from None


def _batches(text: str | None) -> tuple[int, ...]:
    if text is None:
        return ()
    items = parse_list(text)
    for item in items or [text]:
        if not item.isdigit() or int(item) <= 0:
            raise UsageError(f"--batch {item!r}: allowed: positive integers, comma-separated")
    return tuple(int(item) for item in items)


def _positive(flag: str) -> Callable[[str | None], int | None]:
    def parse(text: str | None) -> int | None:
        if text is None:
            return None
        if not str(text).isdigit() or int(text) <= 0:
            raise UsageError(f"{flag} {text!r}: allowed: a positive integer")
        return int(text)

    return parse


def _memory_limit(text: str | None) -> str | None:
    if text is not None:
        from xfbench.benchmarks.harness.worker import parse_size

        try:
            parse_size(text)
        except ValueError as exc:
            raise UsageError(f"--memory-limit: {exc}") from None
    return text


def _tf32(text: str | None) -> str | None:
    try:
        return None if text is None else tf32_value(text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _models(text: str | None) -> tuple[str, ...]:
    return tuple(parse_list(text))  # loaded (and checked) by select_configs


def _text(text: str | None) -> str | None:
    return text


def _switch(given: bool | None) -> bool:
    return bool(given)


# --- the table ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Option:
    """One run option: ``flag`` on the command line, ``field`` of :class:`RunOptions` it fills."""

    flag: str
    field: str
    help: str
    parse: Callable[[Any], Any]
    default: str | None = None  # as typed; ``None``: the help says what not giving it means
    switch: bool = False  # a flag without a value

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def help_text(self) -> str:
        return self.help if self.default is None else f"{self.help} (default: {self.default})"

    def text(self, value: Any) -> str:
        """A parsed value as the command-line text that parses back to it."""
        return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


OPTIONS: tuple[Option, ...] = (
    Option(
        "--backend",
        "named_backends",
        f"comma-separated backends: {', '.join(vocab.BACKENDS)} (default: all; absent ones skip)",
        _backends,
    ),
    Option(
        "--device",
        "devices",
        f"comma-separated devices: {vocab.DEVICE_HELP}; 'all' means every device the backend sees",
        _devices,
        default="cpu",
    ),
    Option(
        "--models",
        "models",
        "comma-separated catalog names or spec files (default: the profile's; quick leaves out vgg16, vgg19)",
        _models,
    ),
    Option("--batch", "batches", "comma-separated batch sizes (default: the profile's)", _batches),
    Option("--phase", "phases", f"{', '.join(vocab.PHASES)} or both, comma-separated", _phases, ",".join(vocab.PHASES)),
    Option(
        "--profile",
        "profile",
        f"batch sizes and rounds: {', '.join(PROFILES)}",
        _one_of("--profile", tuple(PROFILES)),
        DEFAULT_PROFILE,
    ),
    Option(
        "--optimizer",
        "optimizer",
        ", ".join(vocab.OPTIMIZERS),
        _one_of("--optimizer", tuple(vocab.OPTIMIZERS)),
        vocab.DEFAULT_OPTIMIZER,
    ),
    Option("--dtype", "dtype", ", ".join(vocab.DTYPES), _one_of("--dtype", vocab.DTYPES), vocab.DEFAULT_DTYPE),
    Option("--rounds", "rounds", "timed rounds per benchmark (default: the profile's)", _positive("--rounds")),
    Option("--no-memory", "no_memory", "skip the per-configuration memory process", _switch, switch=True),
    Option(
        "--memory-limit",
        "memory_limit",
        "cap each memory process's address space (RLIMIT_AS), e.g. 4GB: over-budget steps become oom rows",
        _memory_limit,
    ),
    Option(
        "--memory-repeats",
        "memory_repeats",
        "fresh processes per memory figure (the median is reported, the spread beside it; default 3; sets "
        "XFBENCH_MEMORY_REPEATS for this run's workers)",
        _positive("--memory-repeats"),
    ),
    Option(
        "--tf32",
        "tf32",
        f"TF32 matmuls on GPUs: {' or '.join(TF32_VALUES)} (sets XFBENCH_TF32 for this run and its subprocesses; "
        "default: the backends' own)",
        _tf32,
    ),
    Option(
        "--suite",
        "suites",
        f"benchmark modules to run, comma-separated from {', '.join(SUITES)} or 'all' (the exercise checker "
        "also runs as `xfbench exercises`)",
        _suites,
        ",".join(DEFAULT_SUITES),
    ),
    Option(
        "--report-dir",
        "report_dir",
        "where the CSV run file goes (default: ./reports/runs of the working directory)",
        _text,
    ),
)


@dataclass(frozen=True)
class RunOptions:
    """The run options, parsed (:func:`parse`). Empty ``named_backends``, ``models``, ``batches``: not named
    (every backend, the catalog, the profile's batches). ``given``: the options given on the command line."""

    named_backends: tuple[str, ...]
    devices: tuple[str, ...]
    models: tuple[str, ...]
    batches: tuple[int, ...]
    phases: tuple[str, ...]
    profile: str
    optimizer: str
    dtype: str
    rounds: int | None
    no_memory: bool
    memory_limit: str | None
    memory_repeats: int | None
    tf32: str | None
    suites: tuple[str, ...]
    report_dir: str | None
    given: frozenset[str]

    @property
    def backends(self) -> tuple[str, ...]:
        """The backends to run: those named, else every backend (absent ones skip)."""
        return self.named_backends or vocab.BACKENDS

    def devices_for(self, backend: str) -> list[str]:
        """The devices to run ``backend`` on: those named, or for ``all`` every device it sees."""
        if self.devices != ("all",):
            return list(self.devices)
        return vocab.expand_devices(["all"], list(visible_devices(backend)))


@cache
def visible_devices(backend: str) -> tuple[str, ...]:
    """Every device ``backend`` sees, the CPU first (its ``list_devices()``; imports the framework). ``numpy``
    (the matmul baseline) sees the CPU; so is taken a backend that is absent or fails to import, whose rows then
    say why it was skipped."""
    from xfbench.backends import get_backend, is_available

    if backend == "numpy" or not is_available(backend):
        return ("cpu",)
    try:
        return tuple(get_backend(backend).list_devices())
    except Exception:  # BackendUnavailable, a driver error: the benchmark reports it where it uses the backend
        return ("cpu",)


def parse(raw: Mapping[str, Any]) -> RunOptions:
    """``raw``: option dest (``memory_limit``) -> the text given, ``None`` (or ``False``, or absent) where not
    given. Applies the defaults; ``UsageError`` (one line) for the first bad value."""
    given = frozenset(opt.dest for opt in OPTIONS if raw.get(opt.dest) not in (None, False))
    values = {opt.field: opt.parse(raw[opt.dest] if opt.dest in given else opt.default) for opt in OPTIONS}
    return RunOptions(**values, given=given)


def add_options(add: Callable[..., Any]) -> None:
    """Declares every option with ``add``: a pytest group's ``addoption`` or argparse's ``add_argument``."""
    for opt in OPTIONS:
        if opt.switch:
            add(opt.flag, action="store_true", default=False, help=opt.help_text)
        else:
            add(opt.flag, default=None, help=opt.help_text)


def pytest_args(options: RunOptions) -> list[str]:
    """The options given, as arguments of ``pytest benchmarks`` (what ``xfbench run`` forwards)."""
    out: list[str] = []
    for opt in OPTIONS:
        if opt.dest in options.given:
            value = getattr(options, opt.field)
            out += [opt.flag] if opt.switch else [opt.flag, opt.text(value)]
    return out


def from_pytest_config(config: Any) -> RunOptions:
    """The session's options (parsed once per pytest config); ``pytest.UsageError`` for a bad value."""
    cached: RunOptions | None = getattr(config, "_xfbench_options", None)
    if cached is None:
        try:
            cached = parse({opt.dest: config.getoption(opt.flag) for opt in OPTIONS})
        except UsageError as exc:
            import pytest

            raise pytest.UsageError(str(exc)) from None
        config._xfbench_options = cached
    return cached


# --- what the options select ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What the run options select: every (Config, Plan) that can run, and those refused beforehand
    (``infeasible``: config, why) because their memory ledger exceeds this machine's RAM."""

    configs: list[tuple[Config, Plan]]
    infeasible: list[tuple[Config, str]]


def select_configs(options: RunOptions, *, expand: bool = True) -> Selection:
    """Every configuration the options select, in a stable order; ``usage.UsageError`` (one line) for a model
    that is neither a catalog name nor a readable spec file, or - where the user named the model or the batch -
    a configuration whose memory ledger exceeds this machine's RAM (refused before anything is allocated, with
    the bytes it needs). A profile's own configuration that exceeds RAM is in ``infeasible`` instead: the rest
    of the run goes on.

    ``expand``: ``--device all`` becomes each backend's devices (imports the frameworks); without it (``xfbench
    run``'s check, which stays framework-free) ``all`` stays and is checked as the CPU, which every backend sees.
    """
    from xfbench.analytics.catalog import CATALOG
    from xfbench.benchmarks.cli.usage import load_model, require_feasible

    plans = PROFILES[options.profile]
    names = list(options.models) or [m for m in CATALOG if plans.get(m, DEFAULT_PLAN).by_default]
    specs = {m: load_model(m, option="--models") for m in names}
    explicit = "models" in options.given or "batch" in options.given
    configs: list[tuple[Config, Plan]] = []
    infeasible: list[tuple[Config, str]] = []
    checked: dict[tuple[str, str, int, str, str], str | None] = {}
    for b in options.backends:
        devices = options.devices_for(b) if expand else list(options.devices)
        for model in names:
            plan = plans.get(model, DEFAULT_PLAN)
            for ph in options.phases:
                for size in options.batches or plan.batch_sizes:
                    for dev in devices:
                        cfg = Config(b, model, ph, size, dev, options.dtype, options.optimizer)
                        key = (model, ph, size, b, "cpu" if dev == "all" else vocab.device_kind(dev))
                        if key not in checked:
                            try:
                                require_feasible(
                                    specs[model],
                                    size,
                                    ph,
                                    dtype=options.dtype,
                                    optimizer=options.optimizer,
                                    framework=b,
                                    device=key[-1],
                                    what=f"--models {model} {ph} at batch {size}",
                                )
                                checked[key] = None
                            except UsageError as exc:
                                if explicit:
                                    raise
                                checked[key] = str(exc)
                        why = checked[key]
                        if why is None:
                            configs.append((cfg, plan))
                        else:
                            infeasible.append((cfg, why))
    return Selection(configs, infeasible)
