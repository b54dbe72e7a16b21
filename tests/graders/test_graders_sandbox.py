"""Python graders run contained: what each one tries fails inside the sandbox, scores 0 and is
counted, and the process that graded them is unharmed afterwards."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

from tunery.graders.grading import GraderEnv, grade, grade_many, sample_namespace
from tunery.graders.sandbox import SandboxLimits, run_python_grader
from tunery.graders.schema import parse_grader

LIMITS = SandboxLimits(wall_seconds=3, cpu_seconds=1, memory_bytes=512 << 20)
SAMPLE, ITEM = sample_namespace("4"), {"answer": "4"}


def run(body: str, limits: SandboxLimits = LIMITS) -> tuple[float | None, str | None, str | None]:
    outcome = run_python_grader(f"import os, socket\n\ndef grade(sample, item):\n{body}\n", SAMPLE, ITEM, limits)
    return outcome.score, outcome.error, outcome.detail


def test_a_grader_sees_sample_and_item_and_may_use_its_own_directory() -> None:
    score, error, _ = run("    open('scratch.txt', 'w').write(sample['output_text'])\n"
                          "    return float(open('scratch.txt').read() == item['answer'])")
    assert (score, error) == (1.0, None)


def test_no_network() -> None:
    score, error, detail = run("    socket.create_connection(('127.0.0.1', 9), timeout=1)\n    return 1.0")
    assert (score, error) == (None, "runtime") and "Operation not permitted" in str(detail)


def test_no_writes_outside_its_directory(tmp_path: Path) -> None:
    target = tmp_path / "escaped"
    score, error, detail = run(f"    open({str(target)!r}, 'w').write('x')\n    return 1.0")
    assert (score, error) == (None, "runtime") and "Permission denied" in str(detail)
    assert not target.exists()


def test_no_reads_outside_python_and_system_libraries() -> None:
    secret = Path(tempfile.mkdtemp()) / "secret"
    secret.write_text("api key")
    score, error, _ = run(f"    return float(len(open({str(secret)!r}).read()))")
    assert (score, error) == (None, "runtime")


def test_forking_repeatedly_gets_no_process() -> None:
    score, error, detail = run("    while True:\n        os.fork()")
    assert (score, error) == (None, "runtime") and "Operation not permitted" in str(detail)
    score, error, _ = run("    import subprocess\n    subprocess.run(['true'])\n    return 1.0")
    assert (score, error) == (None, "runtime")


def test_threads_still_work() -> None:
    score, error, _ = run("    import threading\n    out = []\n"
                          "    t = threading.Thread(target=lambda: out.append(2.0))\n    t.start(); t.join()\n"
                          "    return out[0]")
    assert (score, error) == (2.0, None)


@pytest.mark.slow
def test_looping_forever_is_stopped_by_the_cpu_and_the_wall_limits() -> None:
    cpu_bound = SandboxLimits(wall_seconds=60, cpu_seconds=1, memory_bytes=512 << 20)  # the CPU limit comes first
    score, error, detail = run("    while True:\n        pass", cpu_bound)
    assert (score, error) == (None, "timeout") and "CPU" in str(detail)
    score, error, detail = run("    import time\n    time.sleep(60)")
    assert (score, error) == (None, "timeout") and "longer than 3 s" in str(detail)


def test_allocating_without_bound_runs_out_of_memory() -> None:
    roomy = SandboxLimits(wall_seconds=30, cpu_seconds=20, memory_bytes=256 << 20)  # memory runs out first
    score, error, _ = run("    hoard = []\n    while True:\n        hoard.append(bytearray(10**7))", roomy)
    assert (score, error) == (None, "memory")


def test_no_capabilities_no_new_privileges_and_a_syscall_filter() -> None:
    score, error, _ = run("    status = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
                          "    assert int(status['CapEff'], 16) == 0 and int(status['CapBnd'], 16) == 0\n"
                          "    assert status['NoNewPrivs'].strip() == '1' and status['Seccomp'].strip() == '2'\n"
                          "    return 1.0")
    assert (score, error) == (1.0, None)


def test_no_signals_to_other_processes_nor_raised_limits() -> None:
    assert run(f"    os.kill({os.getpid()}, 0)\n    return 1.0")[:2] == (None, "runtime")
    assert run("    import resource\n    resource.setrlimit(resource.RLIMIT_CPU, (1, 1))\n    return 1.0")[:2] \
        == (None, "runtime")


@pytest.mark.slow
def test_hostile_graders_score_zero_are_counted_and_leave_the_grader_healthy() -> None:
    hostile = {
        "socket": "    socket.create_connection(('127.0.0.1', 9))\n    return 1.0",
        "fork": "    while True:\n        os.fork()",
        "loop": "    while True:\n        pass",
        "alloc": "    x = []\n    while True:\n        x.append(bytearray(10**8))",
        "raise": "    raise ValueError('no')",
        "not_a_number": "    return 'one'",
    }
    env = GraderEnv(limits=LIMITS, parallelism=2)
    children_before = _children()
    graders = [parse_grader({"type": "python", "name": n,
                             "source": f"import os, socket\ndef grade(sample, item):\n{b}\n"})
               for n, b in hostile.items()]
    grades = [grade_many(g, [(SAMPLE, ITEM)] * 2, env) for g in graders]
    for name, pair in zip(hostile, grades, strict=True):
        for g in pair:
            assert g.reward == 0.0 and g.failed, name
    assert grades[2][0].errors["unresponsive_reward_error"]
    assert grades[3][0].errors["python_grader_runtime_error"]
    ok = parse_grader({"type": "python", "name": "ok", "source": "def grade(s, i):\n    return 0.75\n"})
    assert grade(ok, SAMPLE, ITEM, env).reward == 0.75
    assert _children() == children_before  # nothing left running
    with socket.socket() as s:  # the grading process itself is untouched
        s.bind(("127.0.0.1", 0))


def _children() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if Path(f"/proc/{entry}/stat").read_text().split(") ")[1].split()[1] == me:
                    found.add(int(entry))
            except (OSError, IndexError):
                pass
    return found
