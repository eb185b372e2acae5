"""`--notify CMD`: run CMD on every ownership change of this node, as keepalived's notify."""

from __future__ import annotations

import logging
import shlex
import subprocess
from collections.abc import Sequence

log = logging.getLogger("clusterip.core")


class Notifier:
    def __init__(self, command: str | None) -> None:
        self.argv: list[str] = shlex.split(command) if command else []
        self._running: list[subprocess.Popen[bytes]] = []

    def __call__(self, event: str, vip: str, owned: Sequence[int], buckets: int) -> None:
        self.reap()
        if not self.argv:
            return
        # argv, never a shell string: CMD EVENT VIP OWNED_COUNT BUCKETS
        argv = [*self.argv, event, vip, str(len(owned)), str(buckets)]
        try:
            self._running.append(
                subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
            )
        except OSError as exc:
            log.warning("notify command %s failed to start: %s", argv[0], exc)

    def reap(self) -> None:
        self._running = [p for p in self._running if p.poll() is None]
