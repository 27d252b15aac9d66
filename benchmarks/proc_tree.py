"""What a benchmark measures of a process tree and of the machine, from /proc (Linux)."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def descendants(root: int) -> list[int]:
    """root and every process below it."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = [root], [root]
    while frontier:
        nxt = [pid for pid, ppid in parents.items() if ppid in frontier]
        found += nxt
        frontier = nxt
    return found


def tree_cpu(root: int) -> float:
    """utime + stime + cutime + cstime of root and its descendants, seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in descendants(root):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])
    return total / tick


def tree_memory_mb(root: int, field: str = "VmHWM") -> float:
    """The sum of a /proc/<pid>/status memory field (VmHWM: peak, VmRSS: now) over the tree, MB."""
    kb = 0
    for pid in descendants(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(f"{field}:"):
                    kb += int(line.split()[1])
        except OSError:
            continue
    return kb / 1024


def machine_busy() -> float:
    """CPU seconds all cores spent busy (not idle or iowait) since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
