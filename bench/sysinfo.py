"""What machine the numbers come from, and how busy its CPUs were while measuring."""

from __future__ import annotations

import os
import platform
import re
import resource
import subprocess
import time
from collections.abc import Collection
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _first_line(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def cpu_model() -> str:
    with suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    """uname, CPUs, memory and the versions of every tool the benchmarks run."""
    mem_kb = 0
    with suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return {
        "uname": _first_line(["uname", "-a"]),
        "kernel": platform.release(),
        "nproc": os.cpu_count() or 0,
        "cpu_model": cpu_model(),
        "mem_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "nft": _first_line(["nft", "--version"]),
        "nginx": _first_line(["/usr/sbin/nginx", "-v"]),
        "haproxy": _first_line(["haproxy", "-v"]),
        "wrk": _wrk_version(),
        "trafgen": _first_line(["trafgen", "--version"]),
    }


def _wrk_version() -> str:
    line = _first_line(["wrk", "--version"])
    m = re.match(r"(wrk \S+)", line)
    return m.group(1) if m else line


@dataclass(frozen=True)
class CpuTimes:
    """Aggregate /proc/stat jiffies."""

    busy: int
    softirq: int
    total: int

    @classmethod
    def read(cls) -> CpuTimes:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
        # user nice system idle iowait irq softirq steal (guest* already in user)
        idle = fields[3] + fields[4]
        total = sum(fields[:8])
        return cls(busy=total - idle, softirq=fields[6], total=total)

    def since(self, before: CpuTimes) -> dict[str, float]:
        """Busy and softirq share of all CPUs between two readings (0..1)."""
        total = max(1, self.total - before.total)
        return {
            "busy": (self.busy - before.busy) / total,
            "softirq": (self.softirq - before.softirq) / total,
        }


PF_KTHREAD = 0x00200000


@dataclass(frozen=True)
class ProcTicks:
    """CPU ticks (utime+stime, plus reaped children) summed over groups of processes."""

    lab: int  # processes inside the lab's namespaces (nginx, haproxy)
    softirqd: int  # ksoftirqd/N: packet processing the kernel deferred to its threads
    other: int  # everything else except this process and kernel threads: the background

    @classmethod
    def read(cls, lab_inodes: Collection[int]) -> ProcTicks:
        lab = softirqd = other = 0
        me = os.getpid()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    head, _, rest = fh.read().rpartition(")")
                fields = rest.split()
                ticks = sum(int(x) for x in fields[11:15])
                flags = int(fields[6])
            except (OSError, IndexError, ValueError):
                continue
            if flags & PF_KTHREAD:
                if "ksoftirqd/" in head:
                    softirqd += ticks
                continue
            try:
                ino = os.stat(f"/proc/{entry}/ns/net").st_ino
            except OSError:
                continue
            if ino in lab_inodes:
                lab += ticks
            else:
                other += ticks
        return cls(lab, softirqd, other)


def _children_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Meter:
    """CPU use during one measurement: the whole machine (/proc/stat), the lab's own processes
    (servers, plus the client tools this process ran and reaped, plus ksoftirqd) and the
    background (every other process: other people's work on a shared machine)."""

    def __init__(self, lab_inodes: Collection[int]) -> None:
        self.lab_inodes = frozenset(lab_inodes)
        self._cpu = CpuTimes.read()
        self._ticks = ProcTicks.read(self.lab_inodes)
        self._children = _children_seconds()
        self._t0 = time.monotonic()

    def stop(self) -> dict[str, float]:
        seconds = max(time.monotonic() - self._t0, 1e-3)
        cpu = CpuTimes.read().since(self._cpu)
        ticks = ProcTicks.read(self.lab_inodes)
        ncpu = os.cpu_count() or 1
        lab_s = (ticks.lab - self._ticks.lab + ticks.softirqd - self._ticks.softirqd) / CLK_TCK
        lab_s += _children_seconds() - self._children
        other_s = (ticks.other - self._ticks.other) / CLK_TCK
        cpu["seconds"] = seconds
        cpu["lab_cpu_s"] = lab_s
        # Everything busy that was not the lab: other processes, short-lived ones included,
        # and kernel threads (e.g. another lab's namespaces being cleaned up).
        cpu["background"] = min(1.0, max(0.0, cpu["busy"] - lab_s / seconds / ncpu))
        cpu["other_processes"] = max(0.0, other_s / seconds / ncpu)
        return cpu
