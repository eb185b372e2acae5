"""What a lab leaves behind: its state file (`StateStore`) and the processes it started
(`proc_start_time`, `pids_in_netns`, signalling)."""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from clusterip.lab.errors import LabError
from clusterip.lab.topo import check_name

STATE_DIR = "/run/clusterip"


# --- processes ----------------------------------------------------------------------------------
def proc_start_time(pid: int) -> int | None:
    """Start time (clock ticks after boot) of a live, non-zombie process, else None."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in "ZX" else int(fields[19])


def pids_in_netns(ino: int) -> list[int]:
    """Processes whose network namespace has inode `ino` (never this process)."""
    want = f"net:[{ino}]"
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with suppress(OSError):
                if os.readlink(f"/proc/{entry}/ns/net") == want:
                    found.append(int(entry))
    return found


def _signal(pid: int, sig: int, group: bool) -> None:
    with suppress(ProcessLookupError, PermissionError):
        if group and os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


# --- the state file ---------------------------------------------------------------------------
class StateStore:
    """`DIR/lab-NAME.json`, replaced atomically, read-modify-written under a lock on DIR."""

    def __init__(self, name: str, directory: str = STATE_DIR) -> None:
        self.directory = directory
        self.path = os.path.join(directory, f"lab-{check_name(name)}.json")

    @contextmanager
    def locked(self) -> Iterator[None]:
        os.makedirs(self.directory, mode=0o755, exist_ok=True)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def read(self) -> dict[str, Any] | None:
        try:
            with open(self.path) as fh:
                data: dict[str, Any] = json.load(fh)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise LabError(f"unreadable lab state file {self.path}: {exc}") from None
        return data

    def create(self, data: dict[str, Any]) -> None:
        with self.locked():
            if os.path.exists(self.path):
                raise LabError(
                    f"lab state file {self.path} already exists: tear that lab down first "
                    "(clusterip lab down --name NAME) or pick another name"
                )
            self._write(data)

    def update(self, change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
        with self.locked():
            data = self.read()
            if data is None:
                raise LabError(f"lab state file {self.path} vanished")
            change(data)
            self._write(data)
            return data

    def delete(self) -> None:
        with self.locked(), suppress(FileNotFoundError):
            os.unlink(self.path)

    def _write(self, data: dict[str, Any]) -> None:
        tmp = f"{self.path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as fh:
            json.dump(data, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, self.path)
