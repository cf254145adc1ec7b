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
from xfbench.analytics.vocab import DEFAULT_DTYPE, DEFAULT_OPTIMIZER, check_phase
from xfbench.analytics.weights import make_batch, random_weights
from xfbench.backends import get_backend


@dataclass(frozen=True)
class Config:
    backend: str
    model: str
    phase: str
    batch_size: int
    device: str = "cpu"
    dtype: str = DEFAULT_DTYPE
    optimizer: str = DEFAULT_OPTIMIZER
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
    check_phase(config.phase)
    b = get_backend(config.backend)
    spec = config.spec()
    model = b.build_model(spec, device=config.device, dtype=config.dtype, seed=seed, init=False)
    b.set_weights(model, random_weights(spec, seed))
    x_np, y_np = make_batch(spec, config.batch_size, seed + 1)
    x = b.to_device(x_np, config.device, config.dtype)
    device = config.device
    if config.phase == "inference":

        def step() -> Any:
            out = b.infer(model, x)
            b.synchronize(device)
            return out

    else:  # training
        y = b.to_device(y_np, config.device, config.dtype)  # integer labels keep their type
        train = b.make_train_step(model, spec, config.optimizer)

        def step() -> Any:
            loss = train(x, y)
            b.synchronize(device)
            return loss

    return Workload(config, spec, b, model, step)


def parse_list(text: str | Sequence[str] | None) -> list[str]:
    """A comma-separated option value (or a sequence) as its non-blank items, stripped."""
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
