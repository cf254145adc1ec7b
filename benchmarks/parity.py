"""Numerical parity: every backend against the float64 numpy reference, on the same weights and input.

For a model and a backend: load random weights in the neutral format (:mod:`analytics.weights`), run
the same random input through the framework (float32, CPU by default) and through
:func:`analytics.reference.reference_forward` (float64), and compare. The error of a sample is
``||out - ref|| / ||ref||`` (Frobenius norm over the sample's output); a result reports the largest
over the batch. The check also compares output shapes and the framework's own parameter count with
the analytic prediction under that framework's convention.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from xfbench.analytics.predict import count_params as predicted_params
from xfbench.analytics.reference import reference_forward
from xfbench.analytics.shapes import infer_shapes
from xfbench.analytics.spec import ModelSpec
from xfbench.analytics.weights import make_batch, random_weights
from xfbench.backends import get_backend

TOLERANCE = 1e-5


@dataclass(frozen=True)
class ParityResult:
    model: str
    backend: str
    params_predicted: int
    params_counted: int | None
    output_shape: tuple[int, ...] | None
    expected_shape: tuple[int, ...]
    max_rel_error: float | None
    error: str = ""

    @property
    def passed(self) -> bool:
        return (
            not self.error
            and self.params_counted == self.params_predicted
            and self.output_shape == self.expected_shape
            and self.max_rel_error is not None
            and self.max_rel_error < TOLERANCE
        )


def relative_errors(out: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Per-sample ``||out - ref|| / ||ref||``."""
    diff = (out.astype(np.float64) - ref).reshape(len(ref), -1)
    norm = np.linalg.norm(ref.reshape(len(ref), -1), axis=1)
    return np.linalg.norm(diff, axis=1) / np.maximum(norm, np.finfo(np.float64).tiny)


def _full_precision(backend: str) -> None:
    """TF32 (on by default for cuDNN convolutions on Ampere+ GPUs) cannot meet 1e-5: parity turns it off."""
    import importlib

    # Each backend's one TF32 switch (MXNet: NVIDIA_TF32_OVERRIDE=0, effective before its first GPU operation).
    importlib.import_module(f"xfbench.backends.{backend}.device").apply_tf32_policy("off")


def check_parity(
    backend: str, spec: ModelSpec, *, batch_size: int = 2, seed: int = 0, device: str = "cpu"
) -> ParityResult:
    """Runs one parity check; a framework exception becomes ``error`` (the run goes on)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = (batch_size, *infer_shapes(spec)[-1])
    predicted = predicted_params(spec, backend)
    try:
        b = get_backend(backend)
        if device != "cpu":
            _full_precision(backend)
        weights = random_weights(spec, seed)
        x, _ = make_batch(spec, batch_size, seed + 1)
        model = b.build_model(spec, device=device, seed=seed)
        b.set_weights(model, weights)
        counted = int(b.count_params(model))
        out = b.to_numpy(b.infer(model, b.to_device(x, device)))
        ref = np.asarray(reference_forward(spec, weights, x))
    except Exception as exc:
        return ParityResult(spec.name, backend, predicted, None, None, expected, None, f"{type(exc).__name__}: {exc}")
    shape = tuple(out.shape)
    err = float(relative_errors(out, ref).max()) if shape == expected else None
    return ParityResult(spec.name, backend, predicted, counted, shape, expected, err)
