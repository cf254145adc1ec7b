"""The environment fingerprint: the machine columns of the report schema (``reports.schema.COLUMNS`` whose
source is ``env``).

Framework-free: the GPU is read through NVML (``pynvml`` from ``nvidia-ml-py``, imported lazily); without it,
without a driver, or without a GPU the GPU columns are blank. Nothing here raises: a value that cannot be
found is left blank (``""``), or ``"unknown"`` for the suite commit.
"""

from __future__ import annotations

import os
import platform
import socket
import subprocess
from functools import lru_cache
from typing import Any

from xfbench.reports.schema import COLUMNS

# The columns fingerprint() fills: those of the schema's table whose source is "env", in file order. A row may
# still override any of them (e.g. a synthetic machine name).
ENV_COLUMNS: tuple[str, ...] = tuple(c.name for c in COLUMNS if c.source == "env")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:  # not Linux
        pass
    return platform.processor() or ""


def _ram_bytes() -> int | str:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or unsupported platform: leave blank rather than fail a run
        return ""


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _gpu() -> tuple[str, int | str, str]:
    """(name, total memory bytes of the first GPU, driver version); blanks when NVML is unusable."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return "", "", ""
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver / library: no usable GPU
        return "", "", ""
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        if count == 0:
            return "", "", ""
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        names = [_text(pynvml.nvmlDeviceGetName(h)) for h in handles]
        name = f"{count} x {names[0]}" if count > 1 and len(set(names)) == 1 else "; ".join(names)
        memory = int(pynvml.nvmlDeviceGetMemoryInfo(handles[0]).total)
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        return name, memory, driver
    except Exception:  # any NVML error: the fingerprint must never fail a benchmark run
        return "", "", ""
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def _git(*args: str) -> str:
    from xfbench.reports.paths import source_checkout

    root = source_checkout()
    if root is None:  # an installed wheel: no commit to name (the version says what it is)
        raise OSError("not a source checkout")
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True).stdout
    return out.strip()


def _suite_commit() -> str:
    try:
        commit = _git("rev-parse", "--short", "HEAD")
        dirty = bool(_git("status", "--porcelain"))
    except (OSError, subprocess.SubprocessError):  # no git, not a checkout, or git hangs
        return "unknown"
    if not commit:
        return "unknown"
    return commit + ("+dirty" if dirty else "")


#: The environment variables that cap the instruction set oneDNN (PyTorch, TensorFlow, MXNet) and MKL use: set, they
#: make this CPU stand in for an older one, so a run under a cap is another machine's run.
ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def isa_cap() -> str:
    """The ISA caps this process runs under, ``NAME=value`` separated by spaces (blank: none)."""
    return " ".join(f"{name}={os.environ[name]}" for name in ISA_CAP_VARIABLES if os.environ.get(name))


def cpu_affinity() -> str:
    """The CPUs this process may run on, as ranges (``0-1``); blank where the OS does not say."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:
        return ""
    out: list[list[int]] = []
    for c in cpus:
        if out and out[-1][1] == c - 1:
            out[-1][1] = c
        else:
            out.append([c, c])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in out)


@lru_cache(maxsize=16)
def _cached(framework_versions: tuple[tuple[str, str], ...], blas: str) -> tuple[tuple[str, str | int], ...]:
    gpu_name, gpu_memory, gpu_driver = _gpu()
    values: dict[str, str | int] = {
        "machine": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count() or "",
        "cpu_affinity": cpu_affinity(),
        "cpu_isa_cap": isa_cap(),
        "ram_bytes": _ram_bytes(),
        "gpu_name": gpu_name,
        "gpu_memory_bytes": gpu_memory,
        "gpu_driver": gpu_driver,
        "os": platform.platform(),
        "python": platform.python_version(),
        "blas": blas,
        "suite_commit": _suite_commit(),
    }
    if len(framework_versions) == 1:
        values["framework_version"] = framework_versions[0][1]
    return tuple(values.items())


def fingerprint(framework_versions: dict[str, str] | None = None, blas: str = "") -> dict[str, str | int]:
    """The environment columns of a report row (``ENV_COLUMNS``), cached per process.

    ``framework_versions`` maps backend name to framework version; when it names exactly one framework, its
    version is also returned as ``framework_version`` (with several, the writer picks the row's backend).
    ``blas`` is copied into the ``blas`` column. Memory in bytes; blank (``""``) where unknown.
    """
    key = tuple(sorted((framework_versions or {}).items()))
    return dict(_cached(key, blas))
