"""Fixtures the test modules share."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import pytest
from xfbench.analytics.layers.base import Layer, Shape
from xfbench.analytics.spec import ModelSpec


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
