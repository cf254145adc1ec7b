"""The model catalog: each entry is a function building a :class:`ModelSpec`, with its source.

Every builder takes the same overrides: ``input_shape`` (per sample, channels-first),
``num_classes`` and ``vocab`` (where they apply).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xfbench.analytics.spec import (
    LSTM,
    AvgPool2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool2D,
    Layer,
    MaxPool2D,
    ModelSpec,
    SpecError,
    spec_from_dict,
)


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    source: str
    description: str
    default_input: tuple[int, ...]
    builder: Callable[..., list[Layer]]
    num_classes: int | None = None
    vocab: int | None = None


def _cnn3(input_shape: Sequence[int], **_: Any) -> list[Layer]:
    return [Conv2D(f, 3, 2, "same", activation="relu", name=f"conv{i + 1}") for i, f in enumerate((100, 200, 400))]


def _alexnet(input_shape: Sequence[int], num_classes: int = 10, **_: Any) -> list[Layer]:
    return [
        Conv2D(96, 11, 4, 1, activation="relu", name="conv1"),
        MaxPool2D(3, 2, name="pool1"),
        Conv2D(256, 5, 1, 2, activation="relu", name="conv2"),
        MaxPool2D(3, 2, name="pool2"),
        Conv2D(384, 3, 1, 1, activation="relu", name="conv3"),
        Conv2D(384, 3, 1, 1, activation="relu", name="conv4"),
        Conv2D(256, 3, 1, 1, activation="relu", name="conv5"),
        MaxPool2D(3, 2, name="pool5"),
        Flatten(name="flatten"),
        Dense(4096, activation="relu", name="fc6"),
        Dropout(0.5, name="drop6"),
        Dense(4096, activation="relu", name="fc7"),
        Dropout(0.5, name="drop7"),
        Dense(num_classes, name="fc8"),
    ]


def _vgg(blocks: Sequence[tuple[int, int]], num_classes: int) -> list[Layer]:
    layers: list[Layer] = []
    for b, (n_convs, channels) in enumerate(blocks, start=1):
        for c in range(1, n_convs + 1):
            layers.append(Conv2D(channels, 3, 1, 1, activation="relu", name=f"conv{b}_{c}"))
        layers.append(MaxPool2D(2, 2, name=f"pool{b}"))
    layers += [
        Flatten(name="flatten"),
        Dense(4096, activation="relu", name="fc6"),
        Dropout(0.5, name="drop6"),
        Dense(4096, activation="relu", name="fc7"),
        Dropout(0.5, name="drop7"),
        Dense(num_classes, name="fc8"),
    ]
    return layers


def _vgg11(input_shape: Sequence[int], num_classes: int = 10, **_: Any) -> list[Layer]:
    return _vgg(((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)), num_classes)


def _vgg16(input_shape: Sequence[int], num_classes: int = 1000, **_: Any) -> list[Layer]:
    return _vgg(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), num_classes)


def _vgg19(input_shape: Sequence[int], num_classes: int = 1000, **_: Any) -> list[Layer]:
    return _vgg(((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)), num_classes)


def _lstm(input_shape: Sequence[int], vocab: int = 60, **_: Any) -> list[Layer]:
    return [LSTM(128, return_sequences=True, name="lstm"), Dense(vocab, activation="softmax", name="dense")]


def _lenet(input_shape: Sequence[int], num_classes: int = 10, **_: Any) -> list[Layer]:
    return [
        Conv2D(6, 5, 1, 2, activation="sigmoid", name="conv1"),
        AvgPool2D(2, 2, name="pool1"),
        Conv2D(16, 5, 1, 0, activation="sigmoid", name="conv2"),
        AvgPool2D(2, 2, name="pool2"),
        Flatten(name="flatten"),
        Dense(120, activation="sigmoid", name="fc1"),
        Dense(84, activation="sigmoid", name="fc2"),
        Dense(num_classes, name="fc3"),
    ]


def _nin_block(i: int, channels: int, kernel: int, stride: int, padding: int) -> list[Layer]:
    return [
        Conv2D(channels, kernel, stride, padding, activation="relu", name=f"nin{i}_conv"),
        Conv2D(channels, 1, activation="relu", name=f"nin{i}_1x1a"),
        Conv2D(channels, 1, activation="relu", name=f"nin{i}_1x1b"),
    ]


def _nin(input_shape: Sequence[int], num_classes: int = 10, **_: Any) -> list[Layer]:
    return [
        *_nin_block(1, 96, 11, 4, 0),
        MaxPool2D(3, 2, name="pool1"),
        *_nin_block(2, 256, 5, 1, 2),
        MaxPool2D(3, 2, name="pool2"),
        *_nin_block(3, 384, 3, 1, 1),
        MaxPool2D(3, 2, name="pool3"),
        Dropout(0.5, name="drop"),
        *_nin_block(4, num_classes, 3, 1, 1),
        GlobalAvgPool2D(name="gap"),
    ]


def _mlp(input_shape: Sequence[int], num_classes: int = 10, **_: Any) -> list[Layer]:
    return [
        Flatten(name="flatten"),
        Dense(256, activation="relu", name="hidden"),
        Dense(num_classes, name="out"),
    ]


CATALOG: dict[str, CatalogEntry] = {
    e.name: e
    for e in (
        CatalogEntry(
            "cnn3",
            "HOML ch14 ex2 (seeds 000/002): 3 conv layers, 3x3 kernels, stride 2, same padding, 100/200/400 maps",
            "three-layer strided CNN, no classifier head, ReLU after each conv",
            (3, 200, 300),
            _cnn3,
        ),
        CatalogEntry(
            "alexnet",
            "D2L 7.1 (Dive into Deep Learning, AlexNet, Fashion-MNIST variant)",
            "AlexNet, 5 conv + 3 dense, no LRN",
            (1, 224, 224),
            _alexnet,
            num_classes=10,
        ),
        CatalogEntry(
            "vgg11",
            "D2L 7.2 (VGG-11: conv_arch ((1,64),(1,128),(2,256),(2,512),(2,512)))",
            "VGG-11 at full width",
            (1, 224, 224),
            _vgg11,
            num_classes=10,
        ),
        CatalogEntry(
            "vgg16",
            "Simonyan & Zisserman 2015, Table 1 configuration D",
            "VGG-16",
            (3, 224, 224),
            _vgg16,
            num_classes=1000,
        ),
        CatalogEntry(
            "vgg19",
            "Simonyan & Zisserman 2015, Table 1 configuration E",
            "VGG-19",
            (3, 224, 224),
            _vgg19,
            num_classes=1000,
        ),
        CatalogEntry(
            "lstm",
            "course notebook (seed 003): char-level text model, 40 one-hot steps, LSTM(128), Dense softmax",
            "LSTM(128) returning sequences + Dense softmax over the vocabulary",
            (40, 60),
            _lstm,
            vocab=60,
        ),
        CatalogEntry(
            "lenet",
            "D2L 7.6 (LeNet-5 with sigmoid and average pooling)",
            "LeNet",
            (1, 28, 28),
            _lenet,
            num_classes=10,
        ),
        CatalogEntry(
            "nin",
            "D2L 8.3 (Network in Network)",
            "NiN, four NiN blocks, global average pooling",
            (1, 224, 224),
            _nin,
            num_classes=10,
        ),
        CatalogEntry(
            "mlp",
            "D2L 5.1 (MLP, concise: 784-256-10 with ReLU)",
            "one-hidden-layer MLP",
            (1, 28, 28),
            _mlp,
            num_classes=10,
        ),
    )
}


def catalog_model(
    name: str,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    vocab: int | None = None,
) -> ModelSpec:
    """Builds a catalog model, with optional overrides. Raises :class:`SpecError` on bad values."""
    entry = CATALOG.get(name)
    if entry is None:
        raise SpecError(
            f"unknown model; allowed: {', '.join(CATALOG)} or a .json/.yaml spec file", field="model", value=name
        )
    kwargs: dict[str, Any] = {}
    for key, value in (("num_classes", num_classes), ("vocab", vocab)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SpecError("must be a positive integer", field=key, value=value)
        if getattr(entry, key) is None:
            raise SpecError(f"model {name} has no {key} to override", field=key, value=value)
        kwargs[key] = value
    shape = tuple(entry.default_input if input_shape is None else input_shape)
    if name == "lstm" and vocab is not None and input_shape is None:
        shape = (shape[0], vocab)  # one-hot input width follows the vocabulary
    for v in shape:
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise SpecError("sizes must be positive integers", field="input_shape", value=shape)
    layers = tuple(entry.builder(shape, **kwargs))
    return ModelSpec(name=name, input_shape=shape, layers=layers, source=entry.source)


def load_spec_file(path: str | Path) -> ModelSpec:
    """Reads a custom model from a JSON or YAML file (format: README, "Custom models")."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise SpecError(f"cannot read spec file: {exc.strerror}", field="model", value=str(path)) from None
    except UnicodeDecodeError:
        raise SpecError(
            "not a text spec file (binary content); allowed: JSON or YAML text", field="model", value=str(path)
        ) from None
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"malformed spec file: {msg}", field="model", value=str(path)) from None
    return spec_from_dict(data, default_name=p.stem)


def resolve_model(name_or_path: str, **overrides: Any) -> ModelSpec:
    """A catalog name, or a path to a ``.json``/``.yaml``/``.yml`` spec file."""
    if name_or_path in CATALOG:
        return catalog_model(name_or_path, **overrides)
    if name_or_path.lower().endswith((".json", ".yaml", ".yml")) or Path(name_or_path).exists():
        spec = load_spec_file(name_or_path)
        if overrides.get("input_shape") is not None:
            spec = ModelSpec(spec.name, tuple(overrides["input_shape"]), spec.layers, spec.source, spec.input_dtype)
        return spec
    return catalog_model(name_or_path, **overrides)  # raises the unknown-model error
