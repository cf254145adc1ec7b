"""The run options (benchmarks/harness/options.py): ``pytest benchmarks`` and ``xfbench run`` declare the same options
with the same defaults and parse them to the same typed selection; ``xfbench run`` forwards what was given so
that pytest parses it back to the same; ``--device all`` means every device the backend sees in every bench
module. Framework-free: the devices each backend sees are faked; expected values are written out by hand.
"""

from __future__ import annotations

import argparse
import os
import re
from pathlib import Path
from typing import Any

import pytest
from xfbench.benchmarks.cli.usage import UsageError
from xfbench.benchmarks.harness import options
from xfbench.benchmarks.harness.options import RunOptions

FLAGS = {
    "--backend",
    "--device",
    "--models",
    "--batch",
    "--phase",
    "--profile",
    "--optimizer",
    "--dtype",
    "--rounds",
    "--no-memory",
    "--memory-limit",
    "--memory-repeats",
    "--tf32",
    "--suite",
    "--report-dir",
}


def _pytest_side() -> argparse.ArgumentParser:
    """The options as the benchmark conftest declares them to pytest (whose ``addoption`` takes argparse's
    ``add_argument`` arguments and builds an argparse parser from them)."""
    from xfbench.benchmarks import conftest

    parser = argparse.ArgumentParser(add_help=False)

    class Group:
        addoption = staticmethod(parser.add_argument)

    class Parser:
        def getgroup(self, name: str) -> Group:
            return Group()

    conftest.pytest_addoption(Parser())  # type: ignore[arg-type]
    return parser


def _run_side() -> argparse.ArgumentParser:
    """The ``xfbench run`` subcommand's parser."""
    from xfbench.benchmarks.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = sub.choices["run"]
    return parser


def _declared(parser: argparse.ArgumentParser) -> dict[str, Any]:
    return {a.option_strings[0]: a.default for a in parser._actions if a.option_strings and a.dest != "help"}


class Config:
    """What the bench modules use of a pytest config: ``getoption`` (and attributes, for the cache)."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace

    def getoption(self, flag: str) -> Any:
        return getattr(self.namespace, flag[2:].replace("-", "_"))


def _pytest_options(argv: list[str]) -> RunOptions:
    return options.from_pytest_config(Config(_pytest_side().parse_args(argv)))


def _run_options(argv: list[str]) -> RunOptions:
    return options.parse(vars(_run_side().parse_args(argv)))


DEFAULTS = RunOptions(
    named_backends=(),
    devices=("cpu",),
    models=(),
    batches=(),
    phases=("inference", "training"),
    profile="quick",
    optimizer="sgd",
    dtype="float32",
    rounds=None,
    no_memory=False,
    memory_limit=None,
    memory_repeats=None,
    tf32=None,
    suites=("models", "harness", "matmul", "scaling"),
    report_dir=None,
    given=frozenset(),
)

ARGV = [
    "--backend", "PyTorch,tf", "--device", "gpu,cpu", "--models", "mlp,lenet", "--batch", "4,8",
    "--phase", "training", "--profile", "full", "--optimizer", "adam", "--dtype", "float16", "--rounds", "7",
    "--no-memory", "--memory-limit", "4GB", "--memory-repeats", "2", "--tf32", "OFF", "--suite", "matmul,models",
]  # fmt: skip
GIVEN = RunOptions(
    named_backends=("torch", "tensorflow"),
    devices=("gpu:0", "cpu"),
    models=("mlp", "lenet"),
    batches=(4, 8),
    phases=("training",),
    profile="full",
    optimizer="adam",
    dtype="float16",
    rounds=7,
    no_memory=True,
    memory_limit="4GB",
    memory_repeats=2,
    tf32="off",
    suites=("models", "matmul"),  # in the suites' own order
    report_dir=None,
    given=frozenset(f[2:].replace("-", "_") for f in FLAGS if f != "--report-dir"),
)
FORWARDED = [
    "--backend", "torch,tensorflow", "--device", "gpu:0,cpu", "--models", "mlp,lenet", "--batch", "4,8",
    "--phase", "training", "--profile", "full", "--optimizer", "adam", "--dtype", "float16", "--rounds", "7",
    "--no-memory", "--memory-limit", "4GB", "--memory-repeats", "2", "--tf32", "off", "--suite", "models,matmul",
]  # fmt: skip


def test_pytest_and_run_declare_the_same_options_with_the_same_defaults() -> None:
    on_pytest, on_run = _declared(_pytest_side()), _declared(_run_side())
    assert set(on_pytest) == FLAGS
    assert set(on_run) == FLAGS
    assert on_pytest == on_run  # None (not given: options.parse applies the one default) or False (a switch)


def test_no_options_select_the_same_run_both_ways() -> None:
    assert _pytest_options([]) == _run_options([]) == DEFAULTS
    assert DEFAULTS.backends == ("torch", "tensorflow", "mxnet")


def test_given_options_parse_the_same_both_ways_and_forward_unchanged() -> None:
    assert _pytest_options(ARGV) == _run_options(ARGV) == GIVEN
    assert options.pytest_args(GIVEN) == FORWARDED
    assert _pytest_options(FORWARDED) == GIVEN  # what xfbench run forwards, pytest parses back to the same


def _unset_tf32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XFBENCH_TF32", "on")  # recorded first: undo ends with the variable as it was
    monkeypatch.delenv("XFBENCH_TF32")


def test_xfbench_run_forwards_the_given_options_to_pytest(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from xfbench.benchmarks import cli
    from xfbench.benchmarks.cli import run as run_cmd
    from xfbench.benchmarks.cli import usage

    seen: list[list[str]] = []
    monkeypatch.setattr(run_cmd, "_run_pytest", lambda cmd: seen.append(cmd) or 0)
    monkeypatch.setattr(usage, "require_backends", lambda names, **kw: None)  # no framework here to probe
    monkeypatch.chdir(tmp_path)
    _unset_tf32(monkeypatch)
    assert cli.main(["run", *ARGV, "--report-dir", str(tmp_path / "runs"), "-k", "mlp"]) == 0
    (cmd,) = seen
    assert cmd[cmd.index("--backend") :] == [*FORWARDED, "--report-dir", str(tmp_path / "runs"), "-k", "mlp"]
    assert os.environ["XFBENCH_TF32"] == "off"
    assert cli.main(["run"]) == 0
    assert "--backend" not in seen[-1] and "--device" not in seen[-1]  # nothing given, nothing forwarded


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"backend": "caffe"}, "--backend: unknown backend 'caffe'; allowed: torch, tensorflow, mxnet"),
        ({"device": "tpu"}, "--device: unknown device 'tpu'; allowed: cpu, gpu, gpu:N or all"),
        ({"device": "all,cpu"}, "'all' cannot be combined with other devices"),
        ({"batch": "8,0"}, "--batch '0': allowed: positive integers, comma-separated"),
        ({"batch": ""}, "--batch '': allowed: positive integers, comma-separated"),
        ({"phase": "testing"}, "--phase 'testing': allowed: inference, training"),
        ({"phase": " , "}, "--phase ' , ': allowed: inference, training"),
        ({"profile": "slow"}, "--profile 'slow': allowed: quick, full"),
        ({"optimizer": "rmsprop"}, "--optimizer 'rmsprop': allowed: sgd, momentum, adam"),
        ({"dtype": "int8"}, "--dtype 'int8': allowed: float32, float16, bfloat16"),
        ({"rounds": "0"}, "--rounds '0': allowed: a positive integer"),
        ({"memory_repeats": "x"}, "--memory-repeats 'x': allowed: a positive integer"),
        ({"memory_limit": "lots"}, "--memory-limit: memory size 'lots' is not a size; allowed: e.g. 4GB"),
        ({"tf32": "maybe"}, "--tf32 'maybe'; allowed: on, off"),
        ({"suite": "everything"}, "--suite 'everything': allowed: models, harness, matmul, scaling, exercises or all"),
        ({"suite": ""}, "--suite '': allowed: models, harness, matmul, scaling, exercises or all"),
    ],
)
def test_bad_values_are_one_line_on_both_sides(raw: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError) as exc:
        options.parse(raw)
    assert message in str(exc.value) and "\n" not in str(exc.value)
    argv = [f"--{raw_key.replace('_', '-')}={value}" for raw_key, value in raw.items()]
    with pytest.raises(pytest.UsageError, match=f"^{re.escape(str(exc.value))}$"):
        _pytest_options(argv)  # pytest's usage error: the same line


def test_suite_all_and_parse_once_per_session() -> None:
    assert options.parse({"suite": "all"}).suites == ("models", "harness", "matmul", "scaling", "exercises")
    config = Config(_pytest_side().parse_args(["--rounds", "3"]))
    first = options.from_pytest_config(config)
    config.namespace.rounds = "not parsed again"
    assert options.from_pytest_config(config) is first and first.rounds == 3


# --- --device all, in every bench module ------------------------------------------------------------------

VISIBLE = {"torch": ("cpu", "gpu:0", "gpu:1"), "tensorflow": ("cpu",), "mxnet": ("cpu", "gpu:0")}


class Metafunc:
    def __init__(self, config: Config, fixture: str) -> None:
        self.config = config
        self.fixturenames = [fixture]
        self.calls: list[list[Any]] = []

    def parametrize(self, argnames: Any, argvalues: Any, ids: Any = None) -> None:
        self.calls.append(list(argvalues))


def _generated(module: Any, fixture: str, argv: list[str]) -> list[Any]:
    meta = Metafunc(Config(_pytest_side().parse_args(argv)), fixture)
    module.pytest_generate_tests(meta)
    (values,) = meta.calls
    return values


def _per_module(argv: list[str]) -> dict[str, set[tuple[str, str]]]:
    """(backend, device) of every case each bench module generates (bench_scaling: device kinds)."""
    from xfbench.benchmarks import bench_exercises, bench_matmul, bench_scaling, conftest

    argv = [*argv, "--models", "mlp", "--phase", "inference", "--batch", "1"]
    return {
        "models": {(p.values[0][0].backend, p.values[0][0].device) for p in _generated(conftest, "bench_config", argv)},
        "matmul": {(b, d) for b, d, _ in _generated(bench_matmul, "matmul_case", argv)},
        "exercises": {(b, d) for _, b, d in _generated(bench_exercises, "exercise_case", argv)},
        "scaling": set(_generated(bench_scaling, "scaling_backend", argv)),
    }


def test_device_all_is_every_device_the_backend_sees_in_every_bench_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "visible_devices", lambda backend: VISIBLE.get(backend, ("cpu",)))
    got = _per_module(["--device", "all"])
    every = {
        ("torch", "cpu"),
        ("torch", "gpu:0"),
        ("torch", "gpu:1"),
        ("tensorflow", "cpu"),
        ("mxnet", "cpu"),
        ("mxnet", "gpu:0"),
    }
    assert got["models"] == every
    assert got["matmul"] == every | {("numpy", "cpu")}  # the baseline sees the CPU
    assert got["exercises"] == every
    kinds = {("torch", "cpu"), ("torch", "gpu"), ("tensorflow", "cpu"), ("mxnet", "cpu"), ("mxnet", "gpu")}
    assert got["scaling"] == kinds


def test_named_devices_are_the_same_in_every_bench_module_and_ask_no_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_import(backend: str) -> tuple[str, ...]:
        raise AssertionError(f"named devices need no list of {backend}'s devices")

    monkeypatch.setattr(options, "visible_devices", no_import)
    got = _per_module(["--device", "gpu", "--backend", "torch"])
    assert got["models"] == got["exercises"] == {("torch", "gpu:0")}
    assert got["matmul"] == {("torch", "gpu:0")}  # numpy runs on the CPU only, which was not named
    assert got["scaling"] == {("torch", "gpu")}


def test_visible_devices_of_the_baseline_and_of_an_absent_backend() -> None:
    import importlib.util

    assert options.visible_devices("numpy") == ("cpu",)
    absent = next((b for b in ("mxnet", "tensorflow", "torch") if importlib.util.find_spec(b) is None), None)
    if absent is None:
        pytest.skip("every framework is installed here: none is absent")
    assert options.visible_devices(absent) == ("cpu",)  # its rows are skipped as not installed


def test_the_quick_profile_leaves_vgg16_and_vgg19_to_be_named() -> None:
    """The quick profile's default run is every catalog model but VGG-16, VGG-19, the deeper ResNets, GPT-2 and
    BERT-base (the time budget);
    named, they run at the profile's batch 1 with 3 rounds; the full profile runs every catalog model."""
    from xfbench.analytics.catalog import CATALOG

    def models(argv: list[str]) -> list[str]:
        sel = options.select_configs(_run_options(["--backend", "torch", "--phase", "training", *argv]), expand=False)
        return [cfg.model for cfg, _ in sel.configs]

    expected_quick = [
        *("cnn3", "alexnet", "vgg11", "lstm", "lenet", "nin", "mlp", "resnet18", "inception"),
        *("gpt2_tiny", "bert_tiny"),  # issue 21: gpt2 and bert_base only when named
    ]
    assert models([]) == [m for m in CATALOG if m in expected_quick] and set(expected_quick) <= set(CATALOG)
    named = options.select_configs(_run_options(["--backend", "torch", "--models", "vgg16"]), expand=False)
    assert [(c.model, c.phase, c.batch_size, p.rounds) for c, p in named.configs] == [
        ("vgg16", "inference", 1, 3),
        ("vgg16", "training", 1, 3),
    ]
    assert models(["--profile", "full"]) == list(CATALOG)
