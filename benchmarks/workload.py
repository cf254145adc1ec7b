"""One benchmark configuration and the callable that runs one step of it.

The timed callable completes the device work: it synchronizes the device after the step
(``torch.cuda.synchronize``, ``mx.nd.waitall``, TensorFlow's device sync), so asynchronous frameworks
are timed for the work, not the launch.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from xfbench.analytics.catalog import resolve_model
from xfbench.analytics.spec import ModelSpec
from xfbench.analytics.weights import make_batch, random_weights
from xfbench.backends import get_backend

PHASES = ("inference", "training")


@dataclass(frozen=True)
class Config:
    backend: str
    model: str
    phase: str
    batch_size: int
    device: str = "cpu"
    dtype: str = "float32"
    optimizer: str = "sgd"
    input_shape: tuple[int, ...] | None = None

    @property
    def id(self) -> str:
        return f"{self.backend}-{self.model}-{self.phase}-b{self.batch_size}-{self.device}-{self.dtype}"

    def spec(self) -> ModelSpec:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return resolve_model(self.model, input_shape=self.input_shape)

    def worker_args(self) -> list[str]:
        args = [
            "--backend",
            self.backend,
            "--model",
            self.model,
            "--phase",
            self.phase,
            "--batch",
            str(self.batch_size),
            "--device",
            self.device,
            "--dtype",
            self.dtype,
            "--optimizer",
            self.optimizer,
        ]
        if self.input_shape:
            args += ["--input-shape", "x".join(map(str, self.input_shape))]
        return args


@dataclass
class Workload:
    config: Config
    spec: ModelSpec
    backend: ModuleType
    model: Any
    step: Callable[[], Any]


def prepare(config: Config, seed: int = 0) -> Workload:
    """Builds the model, puts a random batch on the device and returns the one-step callable."""
    b = get_backend(config.backend)
    spec = config.spec()
    model = b.build_model(spec, device=config.device, dtype=config.dtype, seed=seed)
    b.set_weights(model, random_weights(spec, seed))
    x_np, y_np = make_batch(spec, config.batch_size, seed + 1)
    x = b.to_device(x_np, config.device, config.dtype)
    device = config.device
    if config.phase == "inference":

        def step() -> Any:
            out = b.infer(model, x)
            b.synchronize(device)
            return out

    elif config.phase == "training":
        y = b.to_device(y_np, config.device, config.dtype)  # integer labels keep their type
        train = b.make_train_step(model, spec, config.optimizer)

        def step() -> Any:
            loss = train(x, y)
            b.synchronize(device)
            return loss

    else:
        raise ValueError(f"unknown phase {config.phase!r}; allowed: {', '.join(PHASES)}")
    return Workload(config, spec, b, model, step)


# Defaults of the run options (``pytest benchmarks`` and ``xfbench run`` share them).
DEFAULT_DEVICE = "cpu"
DEFAULT_PHASES = "inference,training"
DEFAULT_PROFILE = "quick"
DEFAULT_DTYPE = "float32"
DEFAULT_OPTIMIZER = "sgd"


SUITES = ("models", "harness", "matmul", "scaling", "exercises")
DEFAULT_SUITES = ("models", "harness", "matmul", "scaling")


def parse_suites(text: str | None) -> set[str]:
    """``--suite``: benchmark modules from SUITES, comma-separated, or 'all'; ``usage.UsageError`` otherwise."""
    from xfbench.benchmarks.usage import UsageError

    chosen = parse_list(text)
    if chosen == ["all"]:
        return set(SUITES)
    if not chosen:
        raise UsageError(f"--suite {text!r}: allowed: {', '.join(SUITES)} or all")
    for name in chosen:
        if name not in SUITES:
            raise UsageError(f"--suite {name!r}: allowed: {', '.join(SUITES)} or all")
    return set(chosen)


@dataclass(frozen=True)
class Selection:
    """What the run options select: every (Config, Plan) that can run, and those refused beforehand
    (``infeasible``: config, why) because their memory ledger exceeds this machine's RAM."""

    configs: list[tuple[Config, Any]]
    infeasible: list[tuple[Config, str]]


def _batches(text: str | None) -> list[int] | None:
    from xfbench.benchmarks.usage import UsageError

    if text is None:
        return None
    out = []
    for item in parse_list(text):
        if not item.isdigit() or int(item) <= 0:
            raise UsageError(f"--batch {item!r}: allowed: positive integers, comma-separated")
        out.append(int(item))
    if not out:
        raise UsageError(f"--batch {text!r}: allowed: positive integers, comma-separated")
    return out


def _devices(text: str) -> list[str]:
    from xfbench.benchmarks.usage import UsageError

    items = parse_list(text)
    if items == ["all"]:
        return ["all"]
    if not items:
        raise UsageError(f"--device {text!r}: allowed: cpu, gpu, gpu:N or all")
    for d in items:
        if d not in ("cpu", "gpu") and not (d.startswith("gpu:") and d[4:].isdigit()):
            raise UsageError(f"--device {d!r}: allowed: cpu, gpu, gpu:N or all")
    return items


def select_configs(
    *,
    backend: str | None = None,
    models: str | None = None,
    phase: str = DEFAULT_PHASES,
    batch: str | None = None,
    profile: str = DEFAULT_PROFILE,
    device: str = DEFAULT_DEVICE,
    dtype: str = DEFAULT_DTYPE,
    optimizer: str = DEFAULT_OPTIMIZER,
) -> Selection:
    """Every configuration the run options select, in a stable order; ``usage.UsageError`` (one line) for a
    bad value: an unknown backend, phase, device or profile, a bad batch, a model that is neither a catalog
    name nor a readable spec file, or - where the user named the model or the batch - a configuration whose
    memory ledger exceeds this machine's RAM (refused before anything is allocated, with the bytes it needs).
    A profile's own configuration that exceeds RAM is in ``infeasible`` instead: the rest of the run goes on."""
    from xfbench.analytics.catalog import CATALOG
    from xfbench.analytics.memory import DTYPE_BYTES, OPTIMIZER_SLOTS
    from xfbench.backends import BACKENDS, canonical_name
    from xfbench.benchmarks.profiles import DEFAULT_PLAN, PROFILES
    from xfbench.benchmarks.usage import UsageError, load_model, require_feasible

    try:
        backends = [canonical_name(b) for b in parse_list(backend)] or list(BACKENDS)
    except ValueError as exc:
        raise UsageError(f"--backend: {exc}") from None
    if profile not in PROFILES:
        raise UsageError(f"--profile {profile!r}: allowed: {', '.join(PROFILES)}")
    if dtype not in DTYPE_BYTES:
        raise UsageError(f"--dtype {dtype!r}: allowed: {', '.join(DTYPE_BYTES)}")
    if optimizer not in OPTIMIZER_SLOTS:
        raise UsageError(f"--optimizer {optimizer!r}: allowed: {', '.join(OPTIMIZER_SLOTS)}")
    names = parse_list(models) or list(CATALOG)
    specs = {m: load_model(m, option="--models") for m in names}
    phases = parse_list(phase)
    if not phases:
        raise UsageError(f"--phase {phase!r}: allowed: {', '.join(PHASES)}")
    for ph in phases:
        if ph not in PHASES:
            raise UsageError(f"--phase {ph!r}: allowed: {', '.join(PHASES)}")
    batches = _batches(batch)
    devices = _devices(device)
    explicit = models is not None or batch is not None
    plans = PROFILES[profile]
    configs: list[tuple[Config, Any]] = []
    infeasible: list[tuple[Config, str]] = []
    checked: dict[tuple[str, str, int, str, str], str | None] = {}
    for b in backends:
        for model in names:
            plan = plans.get(model, DEFAULT_PLAN)
            for ph in phases:
                for size in batches or plan.batch_sizes:
                    for dev in devices:
                        cfg = Config(b, model, ph, size, dev, dtype, optimizer)
                        key = (model, ph, size, b, "cpu" if dev in ("cpu", "all") else "gpu")
                        if key not in checked:
                            try:
                                require_feasible(
                                    specs[model],
                                    size,
                                    ph,
                                    dtype=dtype,
                                    optimizer=optimizer,
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


def parse_list(text: str | Sequence[str] | None) -> list[str]:
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return [i.strip() for i in items if i.strip()]


def base_row(cfg: Config) -> dict[str, Any]:
    """The configuration columns of a model row (the report's key for this configuration)."""
    from xfbench.backends.common import tf32_row_value

    return {
        "kind": "model",
        "backend": cfg.backend,
        "device": cfg.device,
        "model": cfg.model,
        "phase": cfg.phase,
        "batch_size": cfg.batch_size,
        "dtype": cfg.dtype,
        "optimizer": cfg.optimizer if cfg.phase == "training" else "",
        "tf32": tf32_row_value(cfg.device),
    }
