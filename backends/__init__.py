"""Framework adapters. Importing this package imports no framework.

>>> from backends import available_backends, get_backend
>>> tb = get_backend("torch")          # imports torch now, or raises BackendUnavailable

:func:`get_backend` prepares the framework's environment before importing it (TensorFlow grows its GPU memory
on demand; MXNet gets ``NVIDIA_TF32_OVERRIDE=0`` under the ``off`` TF32 policy) and applies the run's TF32
policy (:func:`backends.common.tf32_policy`, ``XFBENCH_TF32``) every time it is called.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from types import ModuleType

from xfbench.analytics.vocab import BACKEND_ALIASES, BACKENDS, canonical_backend
from xfbench.backends.base import BackendUnavailable, DeviceUnavailable, NotSupported
from xfbench.backends.common import TF32_ENV, TF32_POLICIES, is_oom_error, prepare_framework_env, tf32_policy

_MODULE = {"torch": "torch", "tensorflow": "tensorflow", "mxnet": "mxnet"}
_INSTALL_HINT = {
    "torch": "pip install 'xfbench[torch]' (or run: tox -e torch)",
    "tensorflow": "pip install 'xfbench[tensorflow]' (or run: tox -e tensorflow)",
    "mxnet": "pip install 'xfbench[mxnet]' with numpy<1.24 (or run: tox -e mxnet)",
}
# The user's spellings of the adapters' names (analytics/vocab.py's table, less the matmul-only numpy).
ALIASES = {alias: name for alias, name in BACKEND_ALIASES.items() if name in BACKENDS}


def canonical_name(name: str) -> str:
    """Backend name from a user's spelling; raises ``ValueError`` naming the allowed values
    (``vocab.canonical_backend``)."""
    return canonical_backend(name)


@cache
def is_available(name: str) -> bool:
    """Whether the framework is installed (a cached ``find_spec`` probe; nothing is imported)."""
    return importlib.util.find_spec(_MODULE[canonical_name(name)]) is not None


def available_backends() -> list[str]:
    return [b for b in BACKENDS if is_available(b)]


def get_backend(name: str) -> ModuleType:
    """The adapter module ``backends.<name>``; imports the framework.

    Before the import, the framework's environment is prepared (:func:`backends.common.prepare_framework_env`);
    after it, the run's TF32 policy is applied (``apply_tf32_policy`` of the backend's ``device`` module).
    Raises ``ValueError`` (one line) for a bad ``XFBENCH_TF32``."""
    key = canonical_name(name)
    if not is_available(key):
        raise BackendUnavailable(f"backend {key!r} is not installed: {_INSTALL_HINT[key]}")
    policy = tf32_policy()
    prepare_framework_env(key, policy)
    try:
        module = importlib.import_module(f"xfbench.backends.{key}")
        importlib.import_module(f"xfbench.backends.{key}.device").apply_tf32_policy(policy)
        return module
    except (ImportError, AttributeError) as exc:
        # e.g. MXNet 1.9.1 under numpy>=1.24 dies with AttributeError (np.PZERO) at import.
        raise BackendUnavailable(
            f"backend {key!r} is installed but failed to import ({type(exc).__name__}: {exc}); {_INSTALL_HINT[key]}"
        ) from exc


__all__ = [
    "ALIASES",
    "BACKENDS",
    "TF32_ENV",
    "TF32_POLICIES",
    "BackendUnavailable",
    "DeviceUnavailable",
    "NotSupported",
    "available_backends",
    "canonical_name",
    "get_backend",
    "is_available",
    "is_oom_error",
    "tf32_policy",
]
