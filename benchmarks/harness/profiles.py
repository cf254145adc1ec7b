"""Benchmark profiles: which batch sizes and how many rounds per model.

``quick``: every catalog model but VGG-16 and VGG-19 at small batches, minutes on a 2-core CPU. The batches
are chosen so that the model's own step memory is at least comparable to the framework's fixed first-step
memory, so that the memory rows measure the model, not the runtime: cnn3 and AlexNet at 8 (one torch training
step measured on the project's 2-core CPU: cnn3 2.4 s, AlexNet 0.8 s). VGG-11 stays at 1: one VGG-11 training
step at batch 8 took 7-10 s and VGG-16's 9-12 s (torch, same machine), which the timing, the memory repeats
and MemTracker would each pay several times per framework; at batch 1 its training step already holds over
1 GB of its own (gradients beside the parameters), far above the runtime's. VGG-16 and VGG-19 (the same
layer types as VGG-11, deeper) are in ``full`` only: their four configurations took 97-181 s of each
framework's quick run (torch 110 s, TensorFlow 130 s, MXNet 185 s, of 287-374 s), the largest share of the
suite's 10-minute budget (issue 12); ``--profile full`` or ``--models vgg16`` measures them.
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
    #: ``False``: the model runs in this profile only when named (``--models``).
    by_default: bool = True


PROFILES: dict[str, dict[str, Plan]] = {
    "quick": {
        "cnn3": Plan((8,), 5),
        "alexnet": Plan((8,), 5),
        "vgg11": Plan((1,), 3),
        "vgg16": Plan((1,), 3, by_default=False),
        "vgg19": Plan((1,), 3, by_default=False),
        "lstm": Plan((16,), 10),
        "lenet": Plan((32,), 20),
        "nin": Plan((2,), 5),
        "mlp": Plan((64,), 30),
        # graphs (issue 19): ResNet-18 and the inception stem + modules at the published 224x224, batch 1; the
        # deeper ResNets only when named
        "resnet18": Plan((1,), 3),
        "resnet34": Plan((1,), 3, by_default=False),
        "resnet50": Plan((1,), 3, by_default=False),
        "inception": Plan((1,), 3),
        # transformers (issue 21): the small ones of each family by default, at 64 tokens; GPT-2 and BERT-base
        # (128 tokens) only when named
        "gpt2_tiny": Plan((8,), 5),
        "bert_tiny": Plan((8,), 5),
        "gpt2": Plan((1,), 3, by_default=False),
        "bert_base": Plan((1,), 3, by_default=False),
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
        # MLPerf's ResNet-50 training reference runs 32 per device at 224x224
        "resnet18": Plan((32,), 3),
        "resnet34": Plan((32,), 3),
        "resnet50": Plan((32,), 3),
        "inception": Plan((32,), 3),
        # HOML ch16's fine-tuning batches are 32; at 128 tokens GPT-2 and BERT-base train at 8 on a CPU's memory
        "gpt2_tiny": Plan((32,), 5),
        "bert_tiny": Plan((32,), 5),
        "gpt2": Plan((8,), 3),
        "bert_base": Plan((8,), 3),
    },
}
DEFAULT_PLAN = Plan((1,), 5)  # custom spec files
