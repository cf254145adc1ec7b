"""Bad input on the ``xfbench`` commands, handled one way everywhere.

The contract: bad input prints one line ``xfbench: error: ...`` naming the bad value and what is allowed,
exits with code 2 and prints no traceback. This module holds what the commands share to keep it: the
exception (:class:`UsageError`), the wrapper around a command (:func:`run_main`: exit codes, a closed
stdout pipe, Ctrl-C), and the checks several commands make (model names and spec files, named backends,
the memory a configuration needs, ``--tf32``). Nothing here imports a deep-learning framework; the
backend check imports one only when asked to (``in_process=True``) or in a probe subprocess.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from xfbench.analytics.spec import ModelSpec, SpecError
from xfbench.analytics.vocab import DEFAULT_DTYPE, DEFAULT_OPTIMIZER
from xfbench.backends.common import TF32_ENV, TF32_POLICIES, tf32_policy

EXIT_USAGE = 2
# A run whose every configuration was skipped (a framework or device absent): pytest's own code for a run
# that collected nothing, since in both nothing was measured.
EXIT_NOTHING_MEASURED = 5
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE, what a shell reports for a command whose reader went away
TF32_VALUES = TF32_POLICIES


class UsageError(Exception):
    """Bad user input: reported as one line ``xfbench: error: <message>``, exit code 2."""


def one_line(message: object) -> str:
    """``message`` on one line (a multi-line message keeps its lines, joined by '; ')."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


def _silence_stdout() -> None:
    """After a broken pipe: point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def run_main(command: Callable[[], int]) -> int:
    """Runs a command and returns its exit code; ``UsageError`` -> one line on stderr and 2, a reader that
    closed the pipe (``xfbench models | head -1``) -> 141 without a traceback, Ctrl-C -> 130."""
    try:
        code = int(command())
        sys.stdout.flush()
        return code
    except UsageError as exc:
        try:
            sys.stdout.flush()
        except BrokenPipeError:
            _silence_stdout()
        print(f"xfbench: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        print("xfbench: interrupted", file=sys.stderr)
        return 130


# --- models -----------------------------------------------------------------------------------------------


def load_model(name: str, *, option: str = "model", **overrides: Any) -> ModelSpec:
    """A catalog model or a spec file (``resolve_model``), every failure a ``UsageError`` naming ``name``:
    an unknown name, a file that is missing, a directory, unreadable, binary or malformed."""
    from xfbench.analytics.catalog import CATALOG, resolve_model

    allowed = f"allowed: {', '.join(CATALOG)} or a .json/.yaml spec file"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return resolve_model(name, **{k: v for k, v in overrides.items() if v is not None})
    except SpecError as exc:
        raise UsageError(one_line(exc)) from None
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{option} {name!r}: not a text spec file (byte {exc.start} is not UTF-8); {allowed}"
        ) from None
    except OSError as exc:
        raise UsageError(f"{option} {name!r}: cannot read ({exc.strerror or type(exc).__name__}); {allowed}") from None


# --- memory -----------------------------------------------------------------------------------------------


def host_ram_bytes() -> int:
    """Total physical memory of this machine, bytes (psutil)."""
    import psutil

    return int(psutil.virtual_memory().total)


def require_feasible(
    spec: ModelSpec,
    batch_size: int,
    phase: str,
    *,
    dtype: str = DEFAULT_DTYPE,
    optimizer: str = DEFAULT_OPTIMIZER,
    framework: str = "tensorflow",
    device: str = "cpu",
    copies: int = 1,
    what: str | None = None,
) -> None:
    """``UsageError`` when the memory ledger of the configuration exceeds this machine's RAM, before anything
    is allocated. On a GPU the step runs in device memory, which only the framework can size; the weights
    are made on the host first (neutral format), so their bytes are what is checked against RAM there.
    ``copies``: processes that each hold the configuration (data-parallel workers)."""
    from xfbench.analytics.memory import InfeasibleError, Ledger, check_feasible
    from xfbench.analytics.predict import predict

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pred = predict(spec, batch_size, dtype, optimizer, framework)
    except (SpecError, ValueError) as exc:
        raise UsageError(one_line(exc)) from None
    ledger = pred.training if phase == "training" else pred.inference
    if device != "cpu":
        ledger = Ledger(ledger.phase, (("parameters", ledger.term("parameters")),))
    if copies > 1:
        ledger = Ledger(ledger.phase, tuple((name, value * copies) for name, value in ledger.terms))
    label = what or f"{spec.name} {phase} at batch {batch_size}" + (f" on {copies} workers" if copies > 1 else "")
    try:
        check_feasible(ledger, host_ram_bytes(), label)
    except InfeasibleError as exc:
        raise UsageError(str(exc)) from None


# --- backends ---------------------------------------------------------------------------------------------

_PROBE = """
import sys
from xfbench.backends import BackendUnavailable, get_backend
try:
    get_backend(sys.argv[1])
except BackendUnavailable as exc:
    print(str(exc).splitlines()[0] if str(exc) else "unavailable")
    sys.exit(3)
"""


def probe_backend(name: str, python: str | None = None, timeout_s: float = 300.0) -> str | None:
    """Imports backend ``name`` in a fresh interpreter (``python``, default this one): ``None`` if it
    imports, else why not (one line naming the install command)."""
    from xfbench.reports.paths import subprocess_env

    cmd = [python or sys.executable, "-c", _PROBE, name]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=subprocess_env(), timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return f"backend {name!r} did not import within {timeout_s:.0f} s"
    except OSError as exc:
        return f"cannot run {cmd[0]} ({exc.strerror or type(exc).__name__})"
    if proc.returncode == 0:
        return None
    if proc.returncode == 3 and proc.stdout.strip():
        return proc.stdout.strip().splitlines()[-1]
    tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    last = tail[-1][:300] if tail else "no message"
    return f"backend {name!r} failed to import (exit {proc.returncode}: {last})"


def require_backends(
    names: Iterable[str], *, in_process: bool = False, python: Mapping[str, str] | None = None
) -> None:
    """The backends the user named must be usable: ``UsageError`` naming the install command otherwise.

    ``in_process``: import them here (for commands that use them in this process); otherwise each is
    imported in a probe subprocess (``python[name]`` where given), so this process stays framework-free."""
    from xfbench.backends import BackendUnavailable, get_backend, is_available

    check_tf32_env()
    for name in names:
        interpreter = (python or {}).get(name)
        if interpreter is None and not is_available(name):
            try:
                get_backend(name)  # raises BackendUnavailable naming the install command, imports nothing
            except BackendUnavailable as exc:
                raise UsageError(f"--backend {name}: {one_line(exc)}") from None
        if in_process and interpreter is None:
            try:
                get_backend(name)
            except BackendUnavailable as exc:
                raise UsageError(f"--backend {name}: {one_line(exc)}") from None
        else:
            why = probe_backend(name, interpreter)
            if why is not None:
                raise UsageError(f"--backend {name}: {why}")


# --- options ----------------------------------------------------------------------------------------------


def tf32_value(text: str) -> str:
    """``--tf32`` on or off (any case); ``ValueError`` naming the allowed values otherwise."""
    value = text.strip().lower()
    if value not in TF32_VALUES:
        raise ValueError(f"--tf32 {text!r}; allowed: {', '.join(TF32_VALUES)}")
    return value


def check_tf32_env() -> None:
    """``UsageError`` when ``XFBENCH_TF32`` is set in the environment to something other than on or off."""
    try:
        tf32_policy()
    except ValueError as exc:
        raise UsageError(one_line(exc)) from None


def apply_tf32(value: str | None) -> None:
    """Sets ``XFBENCH_TF32`` for this process and every subprocess it starts (``None``: leave it alone)."""
    if value is not None:
        os.environ[TF32_ENV] = tf32_value(value)


def check_output_dir(path: str, option: str) -> None:
    """``UsageError`` unless ``path`` is (or can be made) a writable directory."""
    from pathlib import Path

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{option} {path!r}: exists and is not a directory; allowed: a writable directory")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {path!r}: cannot create it ({exc.strerror or type(exc).__name__})") from None
    if not os.access(p, os.W_OK | os.X_OK):
        raise UsageError(f"{option} {path!r}: not writable; allowed: a writable directory")


__all__ = [
    "EXIT_NOTHING_MEASURED",
    "EXIT_USAGE",
    "TF32_ENV",
    "UsageError",
    "apply_tf32",
    "check_output_dir",
    "check_tf32_env",
    "host_ram_bytes",
    "load_model",
    "one_line",
    "probe_backend",
    "require_backends",
    "require_feasible",
    "run_main",
    "tf32_value",
]
