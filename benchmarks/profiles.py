"""Benchmark profiles: which batch sizes and how many rounds per model.

``quick``: every catalog model at small batches, minutes on a 2-core CPU.
``full``: the textbooks' batch sizes (HOML ch14 ex2: 50 images; D2L AlexNet/VGG/NiN: 128;
the course notebook's LSTM: 128; D2L LeNet/MLP: 256).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Plan:
    batch_sizes: tuple[int, ...]
    rounds: int
    warmup_rounds: int = 1


PROFILES: dict[str, dict[str, Plan]] = {
    "quick": {
        "cnn3": Plan((2,), 5),
        "alexnet": Plan((2,), 5),
        "vgg11": Plan((1,), 3),
        "vgg16": Plan((1,), 3),
        "vgg19": Plan((1,), 3),
        "lstm": Plan((16,), 10),
        "lenet": Plan((32,), 20),
        "nin": Plan((2,), 5),
        "mlp": Plan((64,), 30),
    },
    "full": {
        "cnn3": Plan((50,), 5),
        "alexnet": Plan((128,), 5),
        "vgg11": Plan((128,), 3),
        "vgg16": Plan((32,), 3),
        "vgg19": Plan((32,), 3),
        "lstm": Plan((128,), 20),
        "lenet": Plan((256,), 30),
        "nin": Plan((128,), 5),
        "mlp": Plan((256,), 50),
    },
}
DEFAULT_PLAN = Plan((1,), 5)  # custom spec files
