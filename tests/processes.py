"""The live child processes of a process, read from /proc (tests that count the processes a server
or a pool started)."""

from __future__ import annotations

from pathlib import Path


def live_children(parent: int) -> dict[int, list[bytes]]:
    """pid → argv of ``parent``'s children that are running (exited ones may linger as zombies until
    reaped; they are left out)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat, cmdline = (entry / "stat").read_text(), (entry / "cmdline").read_bytes()
        except OSError:
            continue  # it ended while we looked
        state, ppid = stat.rsplit(")", 1)[1].split()[:2]
        if int(ppid) == parent and state != "Z":
            found[int(entry.name)] = cmdline.split(b"\0")
    return found
