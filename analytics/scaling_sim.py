"""Data-parallel training past this machine, by simulation: step time, speedup and efficiency on ``nodes`` servers
of ``gpus_per_node`` devices each, from the gradient bytes, one device's step time and two links.

Units: seconds, bytes, bytes per second. Framework-free (no deep-learning import).

Inputs

* ``S``: gradient bytes of one step (parameters x dtype bytes), all-reduced once per step.
* ``T``: compute seconds of one step on ONE device at the per-device batch (weak scaling: the per-device batch is
  fixed, so ``T`` is the same on every device count).
* intra-node link ``(B_i, a_i)`` (bandwidth bytes/s, latency s per ring step) between the devices of a server;
  inter-node link ``(B_n, a_n)``: the NIC of a server, shared by all its devices.
* ``F``: tensor-fusion buffer bytes (Horovod: ``HOROVOD_FUSION_THRESHOLD``, default 64 MiB): the gradients go out
  in ``m = ceil(S / F)`` all-reduce calls of ``S / m`` bytes; each call pays the latency terms once.
* ``f``: overlap fraction, the share of the step during which gradients are ready and can be sent while compute
  goes on. Default 2/3: backward costs about twice the forward's FLOPs (two GEMMs per forward GEMM: input and
  weight gradients), so it is ~2/3 of the step, and each layer's gradient is ready as soon as its backward ends.

All-reduce of ``s`` bytes on ``N = n * g`` devices (``n`` nodes of ``g`` devices), ``ring(s, k, B, a) =
2(k-1)/k * s/B + 2(k-1) a`` (``analytics.scaling.ring_allreduce_time``):

* ``hierarchical``: reduce-scatter inside each node, ``g`` parallel inter-node rings each on a ``s/g`` shard (all
  ``g`` share the NIC, so each gets ``B_n / g``), all-gather inside each node. Reduce-scatter + all-gather is one
  intra-node ring all-reduce; the ``g`` shard rings together move ``2(n-1)/n * s`` through each NIC::

      t = ring(s, g, B_i, a_i) + ring(s, n, B_n, a_n)

* ``ring`` (flat ring over all ``N`` devices, NCCL 2's ring across servers, what Horovod ran in 2017): each of
  the ``2(N-1)`` steps moves ``s/N`` over every hop at once, so the slowest hop sets the pace
  (``B = min(B_i, B_n)`` when ``n > 1``); the first chunk crosses ``2(n-1)`` network hops and ``2(N-n)``
  intra-node hops (NCCL's own latency model, ``src/graph/tuning.cc``)::

      t = 2(N-1)/N * s/B + 2(N-n) a_i + 2(n-1) a_n

Step (per device, every device alike)::

    C        = m * t(S/m)                      communication seconds of the step
    exposed  = max(C - f*T, t_lat)             t_lat = the latency terms of one call: the last gradient (the first
                                               layer's) is ready only when backward ends, so its call is never hidden
    step     = T + exposed
    speedup  = N * T / step                    samples per second over one device's
    efficiency = speedup / N = T / step

One device: ``C = exposed = 0``, ``step = T``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from xfbench.analytics.scaling import ring_allreduce_time

ALGORITHMS = ("hierarchical", "ring")

# Bandwidth units -> bytes per second. Case matters: "bit" is a bit, "B" a byte (decimal prefixes, as link
# speeds are quoted).
BANDWIDTH_UNITS: dict[str, float] = {
    "Gbit/s": 1e9 / 8,
    "Mbit/s": 1e6 / 8,
    "GB/s": 1e9,
    "MB/s": 1e6,
}
LATENCY_UNITS: dict[str, float] = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}

# PCIe 3.0 x16, one direction: 8 GT/s x 16 lanes x 128/130 (encoding) / 8 bit = 15.75 GB/s (PCI-SIG PCIe 3.0
# base specification). Latency per ring step over PCI: NCCL's cost model, hwLat[PCI][Ring][Simple] = 5.7 us
# (NVIDIA/nccl src/graph/tuning.cc, commit 01afd20a77b5804e0ecf1042509dd9d20ebf9e93).
PCIE3_X16_BYTES_PER_S = 8e9 * 16 * (128 / 130) / 8
NCCL_PCI_RING_STEP_S = 5.7e-6
DEFAULT_INTRA_NETWORK = "15.75GB/s,5.7us"
# Horovod's default fusion buffer: tensor_fusion_threshold = 64 * 1024 * 1024 (horovod/tensorflow/mpi_ops.cc,
# v0.11, commit 11bc15737db643c3e616423226441b350301bff6; docs/tensor-fusion.md: "Default fusion buffer size is
# 64 MB").
DEFAULT_FUSION_BYTES = 64 * 1024 * 1024
# Backward ~ 2x forward FLOPs, so ~2/3 of a training step (see the module docstring).
DEFAULT_OVERLAP = 2.0 / 3.0

_NETWORK_HELP = (
    "allowed: BANDWIDTH,LATENCY with a positive number and a unit each, bandwidth in "
    + ", ".join(BANDWIDTH_UNITS)
    + " and latency in "
    + ", ".join(LATENCY_UNITS)
    + ", e.g. 25Gbit/s,5us"
)
_QUANTITY = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([A-Za-z/]+)\s*$")


@dataclass(frozen=True)
class Link:
    """A link: ``bandwidth`` bytes/s, ``latency`` seconds per ring step."""

    bandwidth: float
    latency: float


def _quantity(text: str, units: dict[str, float], what: str, spec: str) -> float:
    match = _QUANTITY.match(text)
    if match is None or match.group(2) not in units:
        raise ValueError(f"network {spec!r}: bad {what} {text.strip()!r}; {_NETWORK_HELP}")
    value = float(match.group(1)) * units[match.group(2)]
    if not math.isfinite(value) or (what == "bandwidth" and value <= 0):
        raise ValueError(f"network {spec!r}: bad {what} {text.strip()!r}; {_NETWORK_HELP}")
    return value


def parse_network(spec: str) -> Link:
    """``"25Gbit/s,5us"`` -> ``Link(3.125e9, 5e-6)``. Units: bandwidth Gbit/s, Mbit/s, GB/s, MB/s; latency ns,
    us, ms, s. ``ValueError`` (one line naming the bad value and what is allowed) otherwise."""
    parts = str(spec).split(",")
    if len(parts) != 2:
        raise ValueError(f"network {spec!r}: expected two values, got {len(parts)}; {_NETWORK_HELP}")
    return Link(
        _quantity(parts[0], BANDWIDTH_UNITS, "bandwidth", spec), _quantity(parts[1], LATENCY_UNITS, "latency", spec)
    )


def _positive_int(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def allreduce_latency(nodes: int, gpus_per_node: int, intra: Link, inter: Link, algorithm: str) -> float:
    """Seconds of one all-reduce call that do not depend on its size (the latency terms of the formulas)."""
    return allreduce_time(0.0, nodes, gpus_per_node, intra, inter, algorithm)


def allreduce_time(
    nbytes: float, nodes: int, gpus_per_node: int, intra: Link, inter: Link, algorithm: str = "hierarchical"
) -> float:
    """Seconds of ONE all-reduce of ``nbytes`` over ``nodes * gpus_per_node`` devices (formulas in the module
    docstring): ``hierarchical`` = intra-node ring + inter-node ring over the shared NIC; ``ring`` = one flat
    ring through every device."""
    n = _positive_int(nodes, "nodes")
    g = _positive_int(gpus_per_node, "gpus_per_node")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"algorithm {algorithm!r}; allowed: {', '.join(ALGORITHMS)}")
    if algorithm == "hierarchical":
        return ring_allreduce_time(nbytes, g, intra.bandwidth, intra.latency) + ring_allreduce_time(
            nbytes, n, inter.bandwidth, inter.latency
        )
    devices = n * g
    bandwidth = min(intra.bandwidth, inter.bandwidth) if n > 1 else intra.bandwidth
    transfer = ring_allreduce_time(nbytes, devices, bandwidth, 0.0)
    return transfer + 2.0 * (devices - n) * intra.latency + 2.0 * (n - 1) * inter.latency


def messages(grad_bytes: float, fusion_bytes: float) -> int:
    """All-reduce calls per step with tensor fusion: ``ceil(S / F)`` (at least one)."""
    if fusion_bytes <= 0:
        raise ValueError(f"fusion buffer must be positive bytes, got {fusion_bytes}")
    return max(1, math.ceil(float(grad_bytes) / float(fusion_bytes)))


def step_comm_time(
    grad_bytes: float,
    nodes: int,
    gpus_per_node: int,
    intra: Link,
    inter: Link,
    algorithm: str = "hierarchical",
    fusion_bytes: float = DEFAULT_FUSION_BYTES,
) -> float:
    """``C = m * t(S/m)``: seconds of all the all-reduce calls of one step."""
    m = messages(grad_bytes, fusion_bytes)
    return m * allreduce_time(float(grad_bytes) / m, nodes, gpus_per_node, intra, inter, algorithm)


@dataclass(frozen=True)
class SimRow:
    """One simulated configuration (seconds; speedup over one device; efficiency = speedup / devices)."""

    nodes: int
    gpus_per_node: int
    devices: int
    step_time_s: float
    speedup: float
    efficiency: float
    comm_s: float
    compute_s: float
    exposed_comm_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def simulate(
    grad_bytes: float,
    device_step_time_s: float,
    nodes: Iterable[int],
    gpus_per_node: int,
    inter: Link,
    intra: Link | None = None,
    *,
    fusion_bytes: float = DEFAULT_FUSION_BYTES,
    overlap: float = DEFAULT_OVERLAP,
    algorithm: str = "hierarchical",
) -> list[SimRow]:
    """One :class:`SimRow` per node count (weak scaling: the per-device batch, hence ``T``, fixed).

    ``grad_bytes``: bytes all-reduced per step; ``device_step_time_s``: ``T``, one device's step at the
    per-device batch; ``inter``: the servers' network; ``intra`` (default PCIe 3.0 x16, 15.75 GB/s, 5.7 us);
    ``fusion_bytes``: ``F``; ``overlap``: ``f`` in [0, 1]; ``algorithm``: hierarchical or ring."""
    if grad_bytes < 0 or not math.isfinite(grad_bytes):
        raise ValueError(f"grad_bytes must be >= 0, got {grad_bytes}")
    if device_step_time_s <= 0 or not math.isfinite(device_step_time_s):
        raise ValueError(f"device step time must be > 0 seconds, got {device_step_time_s}")
    if not 0.0 <= overlap <= 1.0:
        raise ValueError(f"overlap {overlap}; allowed: a fraction in [0, 1]")
    g = _positive_int(gpus_per_node, "gpus_per_node")
    link_intra = intra if intra is not None else parse_network(DEFAULT_INTRA_NETWORK)
    t = float(device_step_time_s)
    rows = []
    for n in nodes:
        n = _positive_int(n, "nodes")
        devices = n * g
        comm = step_comm_time(grad_bytes, n, g, link_intra, inter, algorithm, fusion_bytes)
        floor = allreduce_latency(n, g, link_intra, inter, algorithm)
        exposed = max(comm - overlap * t, floor) if devices > 1 else 0.0
        step = t + exposed
        rows.append(
            SimRow(
                nodes=n,
                gpus_per_node=g,
                devices=devices,
                step_time_s=step,
                speedup=devices * t / step,
                efficiency=t / step,
                comm_s=comm,
                compute_s=t,
                exposed_comm_s=exposed,
            )
        )
    return rows


__all__ = [
    "ALGORITHMS",
    "BANDWIDTH_UNITS",
    "DEFAULT_FUSION_BYTES",
    "DEFAULT_INTRA_NETWORK",
    "DEFAULT_OVERLAP",
    "LATENCY_UNITS",
    "Link",
    "SimRow",
    "allreduce_latency",
    "allreduce_time",
    "messages",
    "parse_network",
    "simulate",
    "step_comm_time",
]
