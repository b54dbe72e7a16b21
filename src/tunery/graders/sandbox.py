"""The only way graders run user code: ``run_python_grader`` starts ``sandbox_child.py`` in a fresh,
locked-in process (see its docstring for the layers), waits at most the wall-time limit, kills its
process group, and turns whatever happened into a ``SandboxOutcome``. Nothing the user's code does can
raise here: every failure is an outcome (which the grader scores 0 and counts).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

CHILD = Path(__file__).with_name("sandbox_child.py")
# Beside the Python installation, what the dynamic loader and common libraries read.
SYSTEM_READ_PATHS = ("/lib", "/lib64", "/usr/lib", "/usr/lib64", "/usr/share/zoneinfo", "/etc/ld.so.cache",
                     "/etc/localtime", "/dev/null", "/dev/zero", "/dev/urandom", "/proc/cpuinfo", "/proc/self",
                     "/sys/devices/system/cpu")
ErrorKind = Literal["runtime", "memory", "timeout", "killed", "sandbox"]


@dataclass(frozen=True)
class SandboxLimits:
    """Per call. ``memory_bytes`` bounds the address space, so it must leave room for the
    interpreter and whatever the grader imports (numpy alone maps about 300 MB)."""

    wall_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    open_files: int = 64


@dataclass(frozen=True)
class SandboxOutcome:
    score: float | None  # None when the grader failed
    error: ErrorKind | None = None
    detail: str | None = None
    seconds: float = 0.0


def python_read_paths() -> list[str]:
    """The directories a grader's imports come from: the standard library and site-packages."""
    paths = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    return sorted(p for p in paths if os.path.isdir(p))


def run_python_grader(source: str, sample: dict[str, Any], item: Any, limits: SandboxLimits) -> SandboxOutcome:
    """Run ``grade(sample, item)`` from ``source`` in the sandbox and return its score or failure."""
    workdir = Path(tempfile.mkdtemp(prefix="tunery-grader-"))
    started = time.perf_counter()
    try:
        config = {
            "source": source, "sample": sample, "item": item,
            "limits": {"cpu_seconds": limits.cpu_seconds, "memory_bytes": limits.memory_bytes,
                       "file_bytes": limits.file_bytes, "open_files": limits.open_files},
            "read_paths": python_read_paths() + list(SYSTEM_READ_PATHS),
        }
        (workdir / "input.json").write_text(json.dumps(config))
        outcome = _run(workdir, limits)
        return SandboxOutcome(outcome.score, outcome.error, outcome.detail, time.perf_counter() - started)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(workdir: Path, limits: SandboxLimits) -> SandboxOutcome:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "HOME": str(workdir), "TMPDIR": str(workdir)}
    proc = subprocess.Popen([sys.executable, "-I", str(CHILD), str(workdir)], cwd=workdir, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        code = proc.wait(timeout=limits.wall_seconds)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        return SandboxOutcome(None, "timeout", f"the grader ran longer than {limits.wall_seconds:g} s and was stopped")
    _kill_group(proc)  # nothing may outlive the call
    return _read_result(workdir, code, limits)


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _read_result(workdir: Path, code: int, limits: SandboxLimits) -> SandboxOutcome:
    try:
        result = json.loads((workdir / "result.json").read_text(encoding="utf-8", errors="replace")[:100_000])
    except (OSError, ValueError):
        result = None
    if isinstance(result, dict) and isinstance(result.get("score"), (int, float)) and code == 0:
        return SandboxOutcome(float(result["score"]))
    if isinstance(result, dict) and result.get("error") in ("runtime", "memory", "sandbox"):
        return SandboxOutcome(None, result["error"], str(result.get("detail"))[:2000])
    if code in (-signal.SIGXCPU, -signal.SIGKILL):
        return SandboxOutcome(None, "timeout", f"the grader used more than {limits.cpu_seconds} s of CPU time "
                              "and was stopped")
    return SandboxOutcome(None, "killed", f"the grader's process ended without a score (exit status {code})")
