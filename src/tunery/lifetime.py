"""Child processes that end with their parent: Linux's parent-death signal, set in the child
before exec. Elsewhere it is a no-op (the heartbeat check still recovers their jobs)."""

from __future__ import annotations

import ctypes
import signal
import sys
from collections.abc import Callable

PR_SET_PDEATHSIG = 1
_prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl if sys.platform == "linux" else None


def on_parent_death(sig: signal.Signals) -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child receive ``sig`` when the thread that forked it ends."""

    def set_signal() -> None:
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, sig)

    return set_signal
