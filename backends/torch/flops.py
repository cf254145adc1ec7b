"""FLOPs from PyTorch's own counter, ``torch.utils.flop_counter.FlopCounterMode``.

The counter intercepts aten ops below autograd and has formulas for matmul-like ops only (``mm``, ``addmm``,
``bmm``, ``convolution`` and their backward ops, attention): 2 FLOPs per multiply-accumulate, bias adds,
activations, pooling, normalisation and element-wise ops are not counted. On the CPU ``aten.lstm`` runs as
one fused kernel with no formula, so an LSTM layer counts 0 there; such layers are listed in
``FlopCount.unsupported``. ``MultiHeadAttention`` runs on the math path (``backends/torch/model.py``): its
projections are ``addmm`` (``mm`` without a bias), ``Q K^T`` and ``P V`` are one ``bmm`` each over ``N * heads``
(the full ``T x S`` products, the causal mask is a ``masked_fill`` the counter ignores), and their backward four
more ``bmm``; no ``scaled_dot_product_attention`` is dispatched, so the counter's SDPA formulas (and the CPU
kernels it does not register) do not arise.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode
from xfbench.analytics.spec import LSTM, Conv2D, Dense, ModelSpec, MultiHeadAttention
from xfbench.analytics.vocab import check_phase
from xfbench.analytics.weights import make_batch
from xfbench.backends.base import FlopCount
from xfbench.backends.torch.model import TorchModel, loss_fn, model_placement, to_device

COUNTER = f"torch.utils.flop_counter.FlopCounterMode (torch {torch.__version__})"
CONVENTION = "2 per MAC, bias ignored (FlopCounterMode)"
# Layers whose work is multiply-accumulates the counter is expected to see; 0 for one of them means
# the counter has no formula for its op.
_MAC_LAYERS = (Conv2D, Dense, LSTM, MultiHeadAttention)

# The counter's total is already what the analytic count predicts under its convention.
ALIGNED_OPS: tuple[str, ...] | None = None


def count_flops(model: TorchModel, spec: ModelSpec, batch_size: int, phase: str = "inference") -> FlopCount:
    """FLOPs of one batch of ``batch_size``: the forward pass under ``no_grad`` (``"inference"``) or
    forward + loss + backward (``"training"``; the optimizer update is not run, the model's weights and
    existing gradients are left as they were)."""
    check_phase(phase)
    device, dtype = model_placement(model)
    x_np, y_np = make_batch(spec, batch_size, seed=0)
    x = to_device(x_np, device, dtype)
    counter = FlopCounterMode(display=False)
    was_training = model.training
    params = list(model.parameters())
    saved_grads = [p.grad for p in params]
    try:
        if phase == "inference":
            model.eval()
            with torch.no_grad(), counter:
                model(x)
        else:
            model.train()
            for p in params:
                p.grad = None
            y = to_device(y_np, device)
            with counter:
                loss_fn(spec)(model(x), y).backward()
    finally:
        model.train(was_training)
        for p, g in zip(params, saved_grads):
            p.grad = g

    counts = counter.get_flop_counts()
    by_op = {str(op): int(n) for op, n in counts.get("Global", {}).items()}
    root = type(model).__name__
    unsupported = tuple(
        f"{i}:{layer.type}"
        for i, layer in enumerate(spec.layers)
        if isinstance(layer, _MAC_LAYERS) and sum(counts.get(f"{root}.layers.{i}", {}).values()) == 0
    )
    return FlopCount(
        counter=COUNTER,
        convention=CONVENTION,
        total=int(counter.get_total_flops()),
        by_op=by_op,
        unsupported=unsupported,
    )
