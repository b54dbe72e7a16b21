"""The sandboxed process that runs one python grader's ``grade(sample, item)``: standard library only.

Started by ``sandbox.py`` as ``python -I sandbox_child.py WORKDIR`` in a new session. It reads
``WORKDIR/input.json`` ({source, sample, item, limits, read_paths}), locks itself in, runs the user's
code and writes ``WORKDIR/result.json`` ({"score": x} or {"error": kind, "detail": text}); the user's
prints go to ``WORKDIR/output.log``. Locking in, in this order, each step refusing to run user code if
it cannot be applied:

1. resource limits: CPU seconds, address space (memory), file size, open files, no core dumps;
2. every capability dropped, from the bounding set too (a root worker's grader is not root);
3. Landlock: reads only beneath the Python installation, the system libraries and the work
   directory; writes only beneath the work directory (no device nodes, even there);
4. seccomp: no sockets (no network), no fork/vfork/clone of a process (threads only), no exec, no
   signals to other processes, no ptrace, mounts, namespaces, SysV IPC, rlimit changes, io_uring,
   bpf, keyrings or module loading. An unknown architecture is refused (the filter names x86-64's
   system call numbers; nothing else was tested).

Wall time is the parent's: it kills the process group.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
import platform
import resource
import struct
import sys
import traceback

# Landlock (linux/landlock.h)
_LL_CREATE_RULESET, _LL_ADD_RULE, _LL_RESTRICT_SELF = 444, 445, 446
_LL_CREATE_RULESET_VERSION = 1
_LL_RULE_PATH_BENEATH = 1
_FS_EXECUTE, _FS_WRITE_FILE, _FS_READ_FILE, _FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
_FS_REMOVE_DIR, _FS_REMOVE_FILE, _FS_MAKE_CHAR, _FS_MAKE_DIR = 1 << 4, 1 << 5, 1 << 6, 1 << 7
_FS_MAKE_REG, _FS_MAKE_SOCK, _FS_MAKE_FIFO, _FS_MAKE_BLOCK = 1 << 8, 1 << 9, 1 << 10, 1 << 11
_FS_MAKE_SYM, _FS_REFER, _FS_TRUNCATE = 1 << 12, 1 << 13, 1 << 14
_FILE_RIGHTS = _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE
_READ = _FS_EXECUTE | _FS_READ_FILE | _FS_READ_DIR
_WRITE = (_FS_WRITE_FILE | _FS_REMOVE_DIR | _FS_REMOVE_FILE | _FS_MAKE_DIR | _FS_MAKE_REG | _FS_MAKE_SYM
          | _FS_MAKE_FIFO)

# prctl / capabilities / seccomp
_PR_CAPBSET_DROP, _PR_SET_NO_NEW_PRIVS, _PR_SET_SECCOMP = 24, 38, 22
_SECCOMP_MODE_FILTER = 2
_SYS_CAPSET = 126
_CAP_VERSION_3 = 0x20080522
_AUDIT_ARCH_X86_64 = 0xC000003E
_X32_BIT = 0x40000000
_RET_ALLOW, _RET_KILL_PROCESS, _RET_ERRNO = 0x7FFF0000, 0x80000000, 0x00050000
_CLONE_THREAD = 0x00010000

# x86-64 system calls answered EPERM (ENOSYS for clone3, so that glibc falls back to clone, whose
# flags the filter can read).
_DENIED = {
    "socket": 41, "socketpair": 53, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438,
    "pidfd_send_signal": 424, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297, "tkill": 200,
    "setrlimit": 160, "prlimit64": 302, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "unshare": 272, "setns": 308, "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431,
    "fsmount": 432, "fspick": 433, "mount_setattr": 442, "mknod": 133, "mknodat": 259,
    "shmget": 29, "shmat": 30, "shmctl": 31, "semget": 64, "semop": 65, "semctl": 66, "semtimedop": 220,
    "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71, "io_uring_setup": 425, "io_uring_enter": 426,
    "io_uring_register": 427, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250,
    "add_key": 248, "request_key": 249, "init_module": 175, "finit_module": 313, "delete_module": 176,
    "kexec_load": 246, "kexec_file_load": 320, "reboot": 169, "swapon": 167, "swapoff": 168,
    "syslog": 103, "open_by_handle_at": 304, "name_to_handle_at": 303, "settimeofday": 164,
    "clock_settime": 227, "clock_adjtime": 305, "adjtimex": 159, "sethostname": 170, "setdomainname": 171,
    "iopl": 172, "ioperm": 173, "quotactl": 179, "acct": 163, "fanotify_init": 300, "setpriority": 141,
    "sched_setscheduler": 144, "sched_setparam": 142, "ioprio_set": 251, "personality": 135,
}
_SYS_CLONE, _SYS_CLONE3, _SYS_KILL, _SYS_TGKILL = 56, 435, 62, 234

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class SandboxError(Exception):
    """A lock-in step could not be applied; no user code runs."""


def _check(result: int, what: str) -> int:
    if result < 0:
        raise SandboxError(f"{what}: {os.strerror(ctypes.get_errno())}")
    return result


def _set_limits(limits: dict[str, int]) -> None:
    cpu = limits["cpu_seconds"]
    # SIGXCPU at the soft limit (which a grader may catch), SIGKILL one second later.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_bytes"], limits["memory_bytes"]))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_bytes"], limits["file_bytes"]))
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _drop_capabilities() -> None:
    if os.geteuid() == 0:  # only root may (and need) clear the bounding set
        cap = 0
        while _libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) == 0:
            cap += 1
    header = struct.pack("Ii", _CAP_VERSION_3, 0)
    data = ctypes.create_string_buffer(24)  # two all-zero {effective, permitted, inheritable}
    _check(_libc.syscall(_SYS_CAPSET, ctypes.c_char_p(header), data), "capset")


def _landlock(read_paths: list[str], write_dir: str) -> None:
    abi = _libc.syscall(_LL_CREATE_RULESET, None, ctypes.c_size_t(0), _LL_CREATE_RULESET_VERSION)
    if abi < 1:
        raise SandboxError("Landlock is not available in this kernel")
    handled = _READ | _WRITE | _FS_MAKE_CHAR | _FS_MAKE_BLOCK | _FS_MAKE_SOCK
    handled |= (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    attr = struct.pack("Q", handled)
    fd = _check(_libc.syscall(_LL_CREATE_RULESET, ctypes.c_char_p(attr), ctypes.c_size_t(len(attr)), 0),
                "landlock_create_ruleset")
    trunc = _FS_TRUNCATE if abi >= 3 else 0
    for path, rights in [(p, _READ) for p in read_paths] + [(write_dir, _READ | _WRITE | trunc)]:
        try:
            path_fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue  # a library directory this system does not have
        if not os.path.isdir(path):
            rights &= _FILE_RIGHTS
        rule = struct.pack("=Qi", rights, path_fd)
        _check(_libc.syscall(_LL_ADD_RULE, fd, _LL_RULE_PATH_BENEATH, ctypes.c_char_p(rule), 0),
               f"landlock_add_rule({path})")
        os.close(path_fd)
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.syscall(_LL_RESTRICT_SELF, fd, 0), "landlock_restrict_self")
    os.close(fd)


def _bpf(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06


def _seccomp_program(pid: int) -> list[bytes]:
    def errno_(e: int) -> int:
        return _RET_ERRNO | e

    prog = [
        _bpf(_LD_W_ABS, 4),  # arch
        _bpf(_JEQ, _AUDIT_ARCH_X86_64, 1, 0),
        _bpf(_RET, _RET_KILL_PROCESS),
        _bpf(_LD_W_ABS, 0),  # syscall number
        _bpf(_JGE, _X32_BIT, 0, 1),
        _bpf(_RET, _RET_KILL_PROCESS),
    ]
    for nr in _DENIED.values():
        prog += [_bpf(_JEQ, nr, 0, 1), _bpf(_RET, errno_(errno.EPERM))]
    prog += [_bpf(_JEQ, _SYS_CLONE3, 0, 1), _bpf(_RET, errno_(errno.ENOSYS))]
    # clone: threads only (CLONE_THREAD in the low word of the flags)
    prog += [_bpf(_JEQ, _SYS_CLONE, 0, 4), _bpf(_LD_W_ABS, 16), _bpf(_JSET, _CLONE_THREAD, 0, 1),
             _bpf(_RET, _RET_ALLOW), _bpf(_RET, errno_(errno.EPERM))]
    # kill: only this process, or pid 0 (its own process group, which holds only it)
    prog += [_bpf(_JEQ, _SYS_KILL, 0, 5), _bpf(_LD_W_ABS, 16), _bpf(_JEQ, pid, 1, 0), _bpf(_JEQ, 0, 0, 1),
             _bpf(_RET, _RET_ALLOW), _bpf(_RET, errno_(errno.EPERM))]
    # tgkill: only to this process's own threads
    prog += [_bpf(_JEQ, _SYS_TGKILL, 0, 4), _bpf(_LD_W_ABS, 16), _bpf(_JEQ, pid, 0, 1),
             _bpf(_RET, _RET_ALLOW), _bpf(_RET, errno_(errno.EPERM))]
    prog.append(_bpf(_RET, _RET_ALLOW))
    return prog


def _seccomp() -> None:
    if platform.machine() != "x86_64":
        raise SandboxError(f"the grader sandbox's system call filter supports x86-64 only, not {platform.machine()}")
    prog = b"".join(_seccomp_program(os.getpid()))
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("HxxxxxxQ", len(prog) // 8, ctypes.addressof(buf))
    _check(_libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    _check(_libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.c_char_p(fprog), 0, 0), "seccomp")


def _lock_in(config: dict, workdir: str) -> None:
    _set_limits(config["limits"])
    _drop_capabilities()
    _landlock(config["read_paths"], workdir)
    _seccomp()


def _run_user_code(source: str, sample: object, item: object) -> float:
    namespace: dict[str, object] = {"__name__": "grader"}
    exec(compile(source, "grader.py", "exec"), namespace)  # noqa: S102 - the sandbox's purpose
    grade = namespace.get("grade")
    if not callable(grade):
        raise TypeError("the grader source defines no grade(sample, item) function")
    score = grade(sample, item)
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise TypeError(f"grade() must return a number; it returned {type(score).__name__}")
    if not math.isfinite(score):
        raise ValueError(f"grade() returned {score}")
    return float(score)


def main() -> int:
    workdir = sys.argv[1]
    with open(os.path.join(workdir, "input.json"), encoding="utf-8") as f:
        config = json.load(f)
    result_path = os.path.join(workdir, "result.json")
    result = open(result_path, "w", encoding="utf-8")  # noqa: SIM115 - opened before the lock-in
    log = os.open(os.path.join(workdir, "output.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    try:
        _lock_in(config, workdir)
    except (SandboxError, OSError) as exc:
        json.dump({"error": "sandbox", "detail": str(exc)}, result)
        return 0
    try:
        outcome: dict[str, object] = {"score": _run_user_code(config["source"], config["sample"], config["item"])}
    except MemoryError:
        outcome = {"error": "memory", "detail": "the grader ran out of memory"}
    except BaseException as exc:  # noqa: BLE001 - whatever user code raises is its failure
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        outcome = {"error": "runtime", "detail": detail[-2000:]}
    result.seek(0)
    json.dump(outcome, result)
    result.truncate()
    result.close()
    return 0


if __name__ == "__main__":
    os._exit(main())
