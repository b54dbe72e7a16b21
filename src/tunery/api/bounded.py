"""Heavy request work — dataset validation, token counts for price estimates, tokenization
previews — in child processes with a memory limit and a time limit, never in the API process.

Why child processes of the API node, not jobs on the worker queue: these answer the request that
asked (the SDK's ``preprocess`` waits for its 200 or 400), they read a file this node has just
received, and they take seconds; the workers may all be busy training for hours, so queueing the
work there would make every upload wait behind training. Why not threads: a tenant's file decides
how much memory and CPU the work takes, and only a process can be capped and killed without
taking the server — and everyone else's requests — with it.

A child is ``python -m tunery.api.bounded LIMIT`` speaking one JSON request per line on stdin and
one JSON answer per line on stdout (not multiprocessing, which would re-import the ``tunery`` CLI,
the whole server and torch, in every child). At start it caps its own data segment (heap and
anonymous mappings, ``RLIMIT_DATA``) at the limit and lowers its priority below the API's, so a
busy child never slows request handling. The parent gives each call a deadline and kills a child
that misses it or dies; a child whose task ran out of memory is replaced. Idle children exit after
two minutes, and every child exits when the API process does. Tasks are named in ``TASKS``: the
child runs nothing else.

At most ``processes`` tasks run at once; a request that would wait behind more than
``max_waiting`` others is refused with 503 (``Busy``) rather than tying up a request thread, so a
tenant who floods the server with big files cannot starve the other tenants' requests.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import queue
import resource
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import IO, Any, cast

from tunery.errors import Busy, InvalidRequest, TuneryError

# The functions a child may run, by name ("module:function"); each takes JSON-able keyword
# arguments and returns a JSON-able result.
TASKS: dict[str, str] = {
    "validate": "tunery.api.validation:validate_task",
    "scan": "tunery.api.dataset_checks:scan_task",
    "preview": "tunery.api.preview:preview_task",
    "check_prompts": "tunery.api.dataset_checks:prompts_task",
}
IDLE_EXIT_S = 120.0
# Children run at this niceness above the API's, so request handling wins the CPU.
NICE = 5
PARENT_CHECK_S = 1.0


class TaskFailed(Exception):
    """The task raised (the message says what), or its process died."""


class TaskRefused(InvalidRequest):
    """The task refused the user's input (a ``TuneryError`` of status 4xx, or a ``TrainingFailed``
    that is the user's), carried across the process boundary as a 400 with its message."""


class OverLimit(TaskFailed):
    """The task needed more memory or time than its limit."""

    def __init__(self, what: str, limit: float):
        self.what = what  # "memory" or "time"
        self.limit = limit
        super().__init__(f"needed more than {int(limit)} bytes of memory (TUNERY_TASK_MEMORY_BYTES)"
                         if what == "memory" else f"took longer than {limit:g} s")


class _Gone(Exception):
    """The child exited cleanly before it took the request: a fresh one can take it."""


class _Child:
    """One child process; ``call`` sends a request and waits for its answer until a deadline."""

    def __init__(self, memory_bytes: int, idle_exit_s: float):
        self.memory_bytes = memory_bytes
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tunery.api.bounded", str(memory_bytes), str(idle_exit_s)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1,
        )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, task: str, args: dict[str, Any], timeout_s: float) -> Any:
        stdin, stdout = cast(IO[str], self.proc.stdin), cast(IO[str], self.proc.stdout)
        try:
            stdin.write(json.dumps({"task": task, "args": args}) + "\n")
            stdin.flush()
        except BrokenPipeError:
            raise _Gone from None
        ready, _, _ = select.select([stdout], [], [], timeout_s)
        if not ready:
            self.kill()
            raise OverLimit("time", timeout_s)
        line = stdout.readline()
        if not line:
            code = self.proc.wait()
            if code == 0:
                raise _Gone  # it had just given up waiting for work (idle exit) as the request came
            raise TaskFailed(f"the task's process died (exit status {code}); it most likely needed more than "
                             f"{self.memory_bytes} bytes of memory (TUNERY_TASK_MEMORY_BYTES)")
        answer: dict[str, Any] = json.loads(line)
        if answer.get("error") == "memory":
            self.kill()  # a process that hit its limit may be left in a bad state
            raise OverLimit("memory", self.memory_bytes)
        if "refused" in answer:
            raise TaskRefused(answer["refused"]["message"], param=answer["refused"]["param"])
        if "error" in answer:
            raise TaskFailed(answer["error"])
        return answer["result"]

    def close(self) -> None:
        if self.proc.stdin:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()


class BoundedPool:
    """Runs ``TASKS`` in at most ``processes`` children of ``memory_bytes`` each (thread-safe)."""

    def __init__(self, processes: int, memory_bytes: int, *, max_waiting: int | None = None,
                 idle_exit_s: float = IDLE_EXIT_S):
        self.processes = max(1, processes)
        self.memory_bytes = memory_bytes
        self.max_waiting = 4 * self.processes if max_waiting is None else max_waiting
        self.idle_exit_s = idle_exit_s
        self._idle: queue.SimpleQueue[_Child] = queue.SimpleQueue()
        self._slots = threading.BoundedSemaphore(self.processes)
        self._lock = threading.Lock()
        self._waiting = 0
        self._closed = False

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        if not self._slots.acquire(blocking=False):
            with self._lock:
                if self._waiting >= self.max_waiting:
                    raise Busy(f"the server is busy with {self.processes + self._waiting} dataset tasks; "
                               "retry in a few seconds")
                self._waiting += 1
            try:
                self._slots.acquire()
            finally:
                with self._lock:
                    self._waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    def _child(self) -> _Child:
        while True:
            try:
                child = self._idle.get_nowait()
            except queue.Empty:
                return _Child(self.memory_bytes, self.idle_exit_s)
            if child.alive():
                return child
            child.close()  # it exited after sitting idle

    def run(self, task: str, args: dict[str, Any], timeout_s: float) -> Any:
        """Run ``task`` in a child and return its result; raises ``OverLimit`` (memory, time),
        ``TaskRefused`` (the input is the user's problem: a 400), ``TaskFailed`` (it raised or
        died) or ``Busy`` (too many tasks waiting already)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}")
        with self._slot():
            child = self._child()
            try:
                try:
                    result = child.call(task, args, timeout_s)
                except _Gone:
                    child = _Child(self.memory_bytes, self.idle_exit_s)
                    result = child.call(task, args, timeout_s)
            except OverLimit:
                raise
            except (TaskFailed, TaskRefused):
                if child.alive():
                    self._idle.put(child)
                raise
            except BaseException:
                child.kill()  # interrupted mid-call: its pipe is out of step
                raise
            if self._closed:
                child.close()
            else:
                self._idle.put(child)
            return result

    def warm(self, count: int | None = None) -> None:
        """Start idle children now (each takes about a second to start)."""
        for _ in range(min(self.processes, count or self.processes)):
            self._idle.put(_Child(self.memory_bytes, self.idle_exit_s))

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


# ---- the child -----------------------------------------------------------------------------------


def _limit_self(memory_bytes: int) -> None:
    resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))
    with contextlib.suppress(OSError):
        os.nice(NICE)
    parent = os.getppid()

    def watch_parent() -> None:  # a busy child would not notice its stdin closing
        while True:
            time.sleep(PARENT_CHECK_S)
            if os.getppid() != parent:
                os._exit(0)

    threading.Thread(target=watch_parent, name="watch-parent", daemon=True).start()


def _target(name: str) -> Callable[..., Any]:
    module, _, function = TASKS[name].partition(":")
    return cast(Callable[..., Any], getattr(importlib.import_module(module), function))


def _answer(request: dict[str, Any]) -> dict[str, Any]:
    try:
        return {"result": _target(request["task"])(**request["args"])}
    except MemoryError:
        return {"error": "memory"}
    except TuneryError as error:
        if error.status_code < 500 or getattr(error, "user_error", False):
            return {"refused": {"message": error.message, "param": error.param}}
        return {"error": f"{type(error).__name__}: {error}"}
    except Exception as error:  # the task's own failure, reported to the parent as text
        return {"error": f"{type(error).__name__}: {error}"}


def _serve(memory_bytes: int, idle_exit_s: float) -> None:
    """Answer requests until stdin closes (the API is gone) or ``idle_exit_s`` pass without one."""
    _limit_self(memory_bytes)
    while True:
        ready, _, _ = select.select([sys.stdin], [], [], idle_exit_s)
        line = sys.stdin.readline() if ready else ""
        if not line:
            return
        answer = _answer(json.loads(line))
        sys.stdout.write(json.dumps(answer) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]), float(sys.argv[2]) if len(sys.argv) > 2 else IDLE_EXIT_S)
