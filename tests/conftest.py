"""Fixtures the test modules share."""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterator
from types import ModuleType

import pytest
from xfbench.analytics.layers.base import Layer, Shape
from xfbench.analytics.spec import ModelSpec

#: tox.ini sets this in each framework's own env (``torch``, ``tensorflow``, ``mxnet``; several: comma-separated):
#: there a framework that does not import is a failure, not a skip, so a broken install cannot pass as all-skipped.
REQUIRE_ENV = "XFBENCH_REQUIRE"


def required_frameworks() -> set[str]:
    """The frameworks ``XFBENCH_REQUIRE`` names (empty where it is unset, as in the core env)."""
    return {name.strip() for name in os.environ.get(REQUIRE_ENV, "").split(",") if name.strip()}


def require_or_skip(module: str, framework: str, reason: str) -> ModuleType:
    """``pytest.importorskip(module)``, except where ``XFBENCH_REQUIRE`` names ``framework``: there a module that
    does not import fails the test (or the collection, at module level) with the import error."""
    __tracebackhide__ = True  # the skip or failure is reported at the caller's line
    if framework not in required_frameworks():
        return pytest.importorskip(module, reason=reason)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        error = f"{type(exc).__name__}: {exc}"
    required = f"{REQUIRE_ENV}={os.environ[REQUIRE_ENV]}"
    pytest.fail(f"{required}: {module} must import here ({error}; {reason})", pytrace=False)


def require_backend_or_skip(backend: str) -> None:
    """Skips the test where ``backend``'s framework is not installed, fails it where ``XFBENCH_REQUIRE`` names
    ``backend`` (``xfbench.backends.is_available`` is the test of installed)."""
    __tracebackhide__ = True
    from xfbench.backends import is_available

    if is_available(backend):
        return
    if backend in required_frameworks():
        pytest.fail(f"{REQUIRE_ENV}={os.environ[REQUIRE_ENV]}: {backend} is not installed here", pytrace=False)
    pytest.skip(f"{backend} is not installed in this environment (run: tox -e {backend})")


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """One PyTorch intra-op thread for a module: reproducible float32 summation order and no fight for the shared
    cores (imports torch only when a module asks for it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@dataclasses.dataclass(frozen=True)
class Mystery(Layer):
    """A layer type no backend builds (its shape rule is the identity, so a spec gets as far as the builders)."""

    name: str = ""

    def output_shape(self, index: int, in_shapes: list[Shape], notes: list[str]) -> Shape:
        return tuple(in_shapes[0])


@pytest.fixture
def unbuildable_spec() -> ModelSpec:
    """A one-layer spec whose type has no builder in any backend."""
    return ModelSpec("m", (3,), (Mystery(),))
