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

from xfbench.analytics import layers as L
from xfbench.analytics.spec import Layer, ModelSpec, SpecError, spec_from_dict


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
    return [L.Conv2D(f, 3, 2, "same", activation="relu", name=f"conv{i + 1}") for i, f in enumerate((100, 200, 400))]


def _alexnet(input_shape: Sequence[int], num_classes: int = 10, **_: Any) -> list[Layer]:
    return [
        L.Conv2D(96, 11, 4, 1, activation="relu", name="conv1"),
        L.MaxPool2D(3, 2, name="pool1"),
        L.Conv2D(256, 5, 1, 2, activation="relu", name="conv2"),
        L.MaxPool2D(3, 2, name="pool2"),
        L.Conv2D(384, 3, 1, 1, activation="relu", name="conv3"),
        L.Conv2D(384, 3, 1, 1, activation="relu", name="conv4"),
        L.Conv2D(256, 3, 1, 1, activation="relu", name="conv5"),
        L.MaxPool2D(3, 2, name="pool5"),
        *_classifier(num_classes),
    ]


def _classifier(num_classes: int) -> list[Layer]:
    """AlexNet's and VGG's head: Flatten, two Dense(4096) + ReLU each followed by Dropout(0.5), the classifier."""
    return [
        L.Flatten(name="flatten"),
        L.Dense(4096, activation="relu", name="fc6"),
        L.Dropout(0.5, name="drop6"),
        L.Dense(4096, activation="relu", name="fc7"),
        L.Dropout(0.5, name="drop7"),
        L.Dense(num_classes, name="fc8"),
    ]


def _vgg(blocks: Sequence[tuple[int, int]], num_classes: int) -> list[Layer]:
    layers: list[Layer] = []
    for b, (n_convs, channels) in enumerate(blocks, start=1):
        for c in range(1, n_convs + 1):
            layers.append(L.Conv2D(channels, 3, 1, 1, activation="relu", name=f"conv{b}_{c}"))
        layers.append(L.MaxPool2D(2, 2, name=f"pool{b}"))
    return layers + _classifier(num_classes)


def _vgg11(input_shape: Sequence[int], num_classes: int = 10, **_: Any) -> list[Layer]:
    return _vgg(((1, 64), (1, 128), (2, 256), (2, 512), (2, 512)), num_classes)


def _vgg16(input_shape: Sequence[int], num_classes: int = 1000, **_: Any) -> list[Layer]:
    return _vgg(((2, 64), (2, 128), (3, 256), (3, 512), (3, 512)), num_classes)


def _vgg19(input_shape: Sequence[int], num_classes: int = 1000, **_: Any) -> list[Layer]:
    return _vgg(((2, 64), (2, 128), (4, 256), (4, 512), (4, 512)), num_classes)


def _lstm(input_shape: Sequence[int], vocab: int = 60, **_: Any) -> list[Layer]:
    return [L.LSTM(128, return_sequences=True, name="lstm"), L.Dense(vocab, activation="softmax", name="dense")]


def _lenet(input_shape: Sequence[int], num_classes: int = 10, **_: Any) -> list[Layer]:
    return [
        L.Conv2D(6, 5, 1, 2, activation="sigmoid", name="conv1"),
        L.AvgPool2D(2, 2, name="pool1"),
        L.Conv2D(16, 5, 1, 0, activation="sigmoid", name="conv2"),
        L.AvgPool2D(2, 2, name="pool2"),
        L.Flatten(name="flatten"),
        L.Dense(120, activation="sigmoid", name="fc1"),
        L.Dense(84, activation="sigmoid", name="fc2"),
        L.Dense(num_classes, name="fc3"),
    ]


def _nin_block(i: int, channels: int, kernel: int, stride: int, padding: int) -> list[Layer]:
    return [
        L.Conv2D(channels, kernel, stride, padding, activation="relu", name=f"nin{i}_conv"),
        L.Conv2D(channels, 1, activation="relu", name=f"nin{i}_1x1a"),
        L.Conv2D(channels, 1, activation="relu", name=f"nin{i}_1x1b"),
    ]


def _nin(input_shape: Sequence[int], num_classes: int = 10, **_: Any) -> list[Layer]:
    return [
        *_nin_block(1, 96, 11, 4, 0),
        L.MaxPool2D(3, 2, name="pool1"),
        *_nin_block(2, 256, 5, 1, 2),
        L.MaxPool2D(3, 2, name="pool2"),
        *_nin_block(3, 384, 3, 1, 1),
        L.MaxPool2D(3, 2, name="pool3"),
        L.Dropout(0.5, name="drop"),
        *_nin_block(4, num_classes, 3, 1, 1),
        L.GlobalAvgPool2D(name="gap"),
    ]


def _mlp(input_shape: Sequence[int], num_classes: int = 10, **_: Any) -> list[Layer]:
    return [
        L.Flatten(name="flatten"),
        L.Dense(256, activation="relu", name="hidden"),
        L.Dense(num_classes, name="out"),
    ]


def _resnet(stages: Sequence[int], bottleneck: bool, num_classes: int) -> list[Layer]:
    """torchvision's ResNet (``torchvision/models/resnet.py``): a 7x7/2 stem (pad 3, no bias) + BatchNorm + ReLU, a
    3x3/2 max pool (pad 1), four stages of 64/128/256/512 channels, global average pool, a biased Dense. Basic
    blocks: 3x3 (stride) -> BN -> ReLU -> 3x3 -> BN; bottlenecks ("V1.5"): 1x1 -> BN -> ReLU -> 3x3 (stride)
    -> BN -> ReLU -> 1x1 (4x) -> BN. The shortcut is the block's input, or a 1x1 (stride) conv + BN where the
    stride or the width changes; Add, then ReLU. Convolutions have no bias."""
    layers: list[Layer] = [
        L.Conv2D(64, 7, 2, 3, use_bias=False, name="conv1"),
        L.BatchNorm(name="bn1"),
        L.Activation("relu", name="relu1"),
        L.MaxPool2D(3, 2, 1, name="pool1"),
    ]
    prev, in_c = "pool1", 64
    for s, blocks in enumerate(stages):
        width = 64 * 2**s
        out_c = 4 * width if bottleneck else width
        for b in range(blocks):
            stride = 2 if s > 0 and b == 0 else 1
            p = f"s{s + 1}b{b + 1}"
            if bottleneck:
                layers += [
                    L.Conv2D(width, 1, 1, 0, use_bias=False, name=f"{p}_conv1", inputs=(prev,)),
                    L.BatchNorm(name=f"{p}_bn1"),
                    L.Activation("relu", name=f"{p}_relu1"),
                    L.Conv2D(width, 3, stride, 1, use_bias=False, name=f"{p}_conv2"),
                    L.BatchNorm(name=f"{p}_bn2"),
                    L.Activation("relu", name=f"{p}_relu2"),
                    L.Conv2D(out_c, 1, 1, 0, use_bias=False, name=f"{p}_conv3"),
                    L.BatchNorm(name=f"{p}_bn3"),
                ]
            else:
                layers += [
                    L.Conv2D(width, 3, stride, 1, use_bias=False, name=f"{p}_conv1", inputs=(prev,)),
                    L.BatchNorm(name=f"{p}_bn1"),
                    L.Activation("relu", name=f"{p}_relu1"),
                    L.Conv2D(width, 3, 1, 1, use_bias=False, name=f"{p}_conv2"),
                    L.BatchNorm(name=f"{p}_bn2"),
                ]
            branch, shortcut = layers[-1].label, prev
            if stride != 1 or in_c != out_c:
                layers += [
                    L.Conv2D(out_c, 1, stride, 0, use_bias=False, name=f"{p}_down", inputs=(prev,)),
                    L.BatchNorm(name=f"{p}_downbn"),
                ]
                shortcut = f"{p}_downbn"
            layers += [L.Add(name=f"{p}_add", inputs=(branch, shortcut)), L.Activation("relu", name=f"{p}_out")]
            prev, in_c = f"{p}_out", out_c
    layers += [L.GlobalAvgPool2D(name="avgpool"), L.Dense(num_classes, name="fc")]
    return layers


def _resnet18(input_shape: Sequence[int], num_classes: int = 1000, **_: Any) -> list[Layer]:
    return _resnet((2, 2, 2, 2), False, num_classes)


def _resnet34(input_shape: Sequence[int], num_classes: int = 1000, **_: Any) -> list[Layer]:
    return _resnet((3, 4, 6, 3), False, num_classes)


def _resnet50(input_shape: Sequence[int], num_classes: int = 1000, **_: Any) -> list[Layer]:
    return _resnet((3, 4, 6, 3), True, num_classes)


# GoogLeNet's inception modules (Szegedy et al. 2014, Table 1): #1x1, #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj
_INCEPTION_MODULES = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
}


def _inception_module(tag: str, prev: str) -> list[Layer]:
    n1, r3, n3, r5, n5, pp = _INCEPTION_MODULES[tag]
    p = f"inc{tag}"

    def conv(filters: int, kernel: int, name: str, inputs: tuple[str, ...] | None = None) -> L.Conv2D:
        return L.Conv2D(filters, kernel, 1, "same", activation="relu", name=f"{p}_{name}", inputs=inputs)

    return [
        conv(n1, 1, "1x1", (prev,)),
        conv(r3, 1, "3x3r", (prev,)),
        conv(n3, 3, "3x3"),
        conv(r5, 1, "5x5r", (prev,)),
        conv(n5, 5, "5x5"),
        L.MaxPool2D(3, 1, "same", name=f"{p}_pool", inputs=(prev,)),
        conv(pp, 1, "poolproj"),
        L.Concatenate(name=f"{p}_out", inputs=(f"{p}_1x1", f"{p}_3x3", f"{p}_5x5", f"{p}_poolproj")),
    ]


def _inception(input_shape: Sequence[int], num_classes: int = 1000, **_: Any) -> list[Layer]:
    """GoogLeNet's stem and its first three inception modules (3a, 3b, 4a), as HOML ch14 builds them (``same``
    padding, ReLU after every conv, no LRN), then global average pooling, dropout 0.4 and the classifier."""
    layers: list[Layer] = [
        L.Conv2D(64, 7, 2, "same", activation="relu", name="conv1"),
        L.MaxPool2D(3, 2, "same", name="pool1"),
        L.Conv2D(64, 1, 1, "same", activation="relu", name="conv2r"),
        L.Conv2D(192, 3, 1, "same", activation="relu", name="conv2"),
        L.MaxPool2D(3, 2, "same", name="pool2"),
    ]
    layers += _inception_module("3a", "pool2")
    layers += _inception_module("3b", "inc3a_out")
    layers.append(L.MaxPool2D(3, 2, "same", name="pool3"))
    layers += _inception_module("4a", "pool3")
    layers += [L.GlobalAvgPool2D(name="avgpool"), L.Dropout(0.4, name="drop"), L.Dense(num_classes, name="fc")]
    return layers


def _mha_block(
    tag: str, prev: str, d: int, heads: int, ff: int, act: str, causal: bool, pre_norm: bool, eps: float
) -> list[Layer]:
    """One transformer block reading layer ``prev``; its last layer is named ``{tag}_out``.

    Pre-LayerNorm (GPT-2): ``x + MHA(LN(x))``, then ``h + FF(LN(h))``. Post-LayerNorm (BERT):
    ``LN(x + MHA(x))``, then ``LN(h + FF(h))``. FF: Dense(ff, act), Dense(d)."""
    k = d // heads
    if pre_norm:
        return [
            L.LayerNorm(eps, name=f"{tag}_ln1", inputs=(prev,)),
            L.MultiHeadAttention(heads, k, causal=causal, name=f"{tag}_attn"),
            L.Add(name=f"{tag}_add1", inputs=(prev, f"{tag}_attn")),
            L.LayerNorm(eps, name=f"{tag}_ln2"),
            L.Dense(ff, activation=act, name=f"{tag}_fc"),
            L.Dense(d, name=f"{tag}_proj"),
            L.Add(name=f"{tag}_out", inputs=(f"{tag}_add1", f"{tag}_proj")),
        ]
    return [
        L.MultiHeadAttention(heads, k, causal=causal, name=f"{tag}_attn", inputs=(prev,)),
        L.Add(name=f"{tag}_add1", inputs=(prev, f"{tag}_attn")),
        L.LayerNorm(eps, name=f"{tag}_ln1"),
        L.Dense(ff, activation=act, name=f"{tag}_fc"),
        L.Dense(d, name=f"{tag}_proj"),
        L.Add(name=f"{tag}_add2", inputs=(f"{tag}_ln1", f"{tag}_proj")),
        L.LayerNorm(eps, name=f"{tag}_out"),
    ]


def _gpt(layers_n: int, d: int, heads: int, positions: int, vocab: int) -> list[Layer]:
    """GPT-2 (Radford et al. 2019; Hugging Face's GPT2LMHeadModel without dropout): token embedding, learned
    positions, pre-LayerNorm causal blocks (FF 4d, gelu_tanh), final LayerNorm, head tied to the embedding."""
    layers: list[Layer] = [L.Embedding(vocab, d, name="wte"), L.PositionEmbedding(positions, name="wpe")]
    prev = "wpe"
    for i in range(layers_n):
        layers += _mha_block(f"h{i}", prev, d, heads, 4 * d, "gelu_tanh", True, True, 1e-5)
        prev = f"h{i}_out"
    layers += [L.LayerNorm(1e-5, name="ln_f"), L.Dense(vocab, use_bias=False, tie="wte", name="lm_head")]
    return layers


def _bert(layers_n: int, d: int, heads: int, positions: int, vocab: int, num_classes: int) -> list[Layer]:
    """BERT (Devlin et al. 2019) encoder without token-type embeddings or dropout: token embedding, learned
    positions, embedding LayerNorm, post-LayerNorm blocks (FF 4d, erf GELU, epsilon 1e-12); the stated head:
    mean over tokens (GlobalAvgPool1D; BERT's pooler reads the [CLS] token, which the spec cannot slice), a
    tanh pooler Dense(d) and a Dense(num_classes) classifier (logits)."""
    layers: list[Layer] = [
        L.Embedding(vocab, d, name="word_embeddings"),
        L.PositionEmbedding(positions, name="position_embeddings"),
        L.LayerNorm(1e-12, name="emb_ln"),
    ]
    prev = "emb_ln"
    for i in range(layers_n):
        layers += _mha_block(f"l{i}", prev, d, heads, 4 * d, "gelu", False, False, 1e-12)
        prev = f"l{i}_out"
    layers += [
        L.GlobalAvgPool1D(name="pool"),
        L.Dense(d, activation="tanh", name="pooler"),
        L.Dense(num_classes, name="classifier"),
    ]
    return layers


def _gpt2(input_shape: Sequence[int], vocab: int = 50257, **_: Any) -> list[Layer]:
    return _gpt(12, 768, 12, 1024, vocab)


def _gpt2_tiny(input_shape: Sequence[int], vocab: int = 8192, **_: Any) -> list[Layer]:
    return _gpt(2, 128, 2, 256, vocab)


def _bert_base(input_shape: Sequence[int], num_classes: int = 2, vocab: int = 30522, **_: Any) -> list[Layer]:
    return _bert(12, 768, 12, 512, vocab, num_classes)


def _bert_tiny(input_shape: Sequence[int], num_classes: int = 2, vocab: int = 30522, **_: Any) -> list[Layer]:
    return _bert(2, 128, 2, 512, vocab, num_classes)


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
        CatalogEntry(
            "resnet18",
            "He et al. 2016, as torchvision builds it (torchvision/models/resnet.py resnet18: 11,689,512 parameters)",
            "ResNet-18: basic blocks (2, 2, 2, 2), BatchNorm, projection shortcuts where the shape changes",
            (3, 224, 224),
            _resnet18,
            num_classes=1000,
        ),
        CatalogEntry(
            "resnet34",
            "HOML ch14 (ResNet-34); torchvision/models/resnet.py resnet34: 21,797,672 parameters",
            "ResNet-34: basic blocks (3, 4, 6, 3)",
            (3, 224, 224),
            _resnet34,
            num_classes=1000,
        ),
        CatalogEntry(
            "resnet50",
            "torchvision/models/resnet.py resnet50 (ResNet-50 V1.5: stride on the bottleneck's 3x3; 25,557,032 "
            "parameters); MLPerf's ResNet-50",
            "ResNet-50: bottleneck blocks (3, 4, 6, 3)",
            (3, 224, 224),
            _resnet50,
            num_classes=1000,
        ),
        CatalogEntry(
            "inception",
            "Szegedy et al. 2014 (GoogLeNet, Table 1: stem, inception 3a, 3b, 4a); HOML ch14 ex6",
            "GoogLeNet stem + three inception modules (four branches concatenated), global pool, dropout, dense",
            (3, 224, 224),
            _inception,
            num_classes=1000,
        ),
        CatalogEntry(
            "gpt2",
            "Radford et al. 2019 (GPT-2 small); HOML ch16 ex6; Hugging Face GPT2LMHeadModel: 124,439,808 parameters",
            "GPT-2 small: 12 pre-LayerNorm causal blocks, d=768, 12 heads, FF 3072 gelu_tanh, vocab 50,257, "
            "1024 learned positions, final LayerNorm, head tied to the token embedding; no dropout",
            (128,),
            _gpt2,
            vocab=50257,
        ),
        CatalogEntry(
            "gpt2_tiny",
            "GPT-2's architecture at the quick profile's size (stated here: 2 blocks, d=128, 2 heads, FF 512, vocab "
            "8,192, 256 positions: 1,478,144 parameters)",
            "a 2-block GPT-2: the gpt2 family small enough for tox -m bench",
            (64,),
            _gpt2_tiny,
            vocab=8192,
        ),
        CatalogEntry(
            "bert_base",
            "Devlin et al. 2019 (BERT-base); HOML ch16 ex5; without token-type embeddings (1,536 parameters)",
            "BERT-base encoder: 12 post-LayerNorm blocks, d=768, 12 heads, FF 3072 GELU (erf), vocab 30,522, 512 "
            "learned positions; head: mean over tokens, tanh pooler Dense(768), Dense(num_classes) logits",
            (128,),
            _bert_base,
            num_classes=2,
            vocab=30522,
        ),
        CatalogEntry(
            "bert_tiny",
            "Turc et al. 2019 (BERT-Tiny: L=2, H=128, A=2, FF 512; google-research/bert's small models), with "
            "bert_base's head: 4,385,922 parameters",
            "a 2-block BERT: the bert family small enough for tox -m bench",
            (64,),
            _bert_tiny,
            num_classes=2,
            vocab=30522,
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
    dtype = "int64" if isinstance(layers[0], L.Embedding) else "float32"
    return ModelSpec(name=name, input_shape=shape, layers=layers, source=entry.source, input_dtype=dtype)


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
