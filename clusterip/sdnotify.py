"""The sd_notify protocol, spoken directly: one datagram per message to $NOTIFY_SOCKET.

systemd (Type=notify) passes the socket's address in NOTIFY_SOCKET: a file system path, or an
abstract socket written with a leading `@`. A message is newline-separated `KEY=VALUE` fields
(sd_notify(3)). Without NOTIFY_SOCKET (not started by systemd, or Type= is not notify) every
call is a no-op that returns False, so callers need no `if`.

    notifier = Notifier.from_env()        # reads the environment once
    notifier.status("joining 3 peers")
    notifier.ready("serving 1365 of 4096 buckets")
    dog = Watchdog(notifier, watchdog_period())   # half of WatchdogSec=, None when off
    dog.tick(time.monotonic())            # on every iteration of the main loop
    notifier.reloading(); ...; notifier.ready()   # around a SIGHUP reload
    notifier.stopping()

Sending never raises: systemd may be restarting or gone, and the service must go on. Nothing
here runs at import.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Mapping, MutableMapping

ENV_SOCKET = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC = "WATCHDOG_USEC"
ENV_WATCHDOG_PID = "WATCHDOG_PID"


def socket_address(value: str | None) -> str | None:
    """NOTIFY_SOCKET as a Python AF_UNIX address; None for unset or unsupported values.

    `@name` is the abstract socket `\\0name`; anything else must be an absolute path
    (systemd ≥ 254 also knows `vsock:`, which a Debian 12 systemd never hands out).
    """
    if not value:
        return None
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def _monotonic_usec() -> int:
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def _clean(text: str) -> str:
    """A field value on one line: a newline would start a new (bogus) field."""
    return " ".join(str(text).split())


class Notifier:
    """One notification socket; every method returns True when the datagram was sent."""

    def __init__(
        self, address: str | None, *, monotonic_usec: Callable[[], int] = _monotonic_usec
    ) -> None:
        self.address = address
        self._monotonic_usec = monotonic_usec
        self._sock: socket.socket | None = None
        self.last_error: OSError | None = None

    @classmethod
    def from_env(
        cls, environ: MutableMapping[str, str] | None = None, *, unset: bool = False
    ) -> Notifier:
        """From NOTIFY_SOCKET. `unset=True` removes NOTIFY_SOCKET, WATCHDOG_USEC and
        WATCHDOG_PID from the environment (as sd_notify's unset_environment), so that child
        processes (the --notify command) do not inherit them."""
        env = os.environ if environ is None else environ
        notifier = cls(socket_address(env.get(ENV_SOCKET)))
        if unset:
            for key in (ENV_SOCKET, ENV_WATCHDOG_USEC, ENV_WATCHDOG_PID):
                env.pop(key, None)
        return notifier

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send `KEY=VALUE` fields as one message."""
        if self.address is None or not fields:
            return False
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            self.last_error = exc
            return False
        self.last_error = None
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: start-up (or a reload) is done. systemd's start job completes here."""
        if status is None:
            return self.send("READY=1")
        return self.send("READY=1", f"STATUS={_clean(status)}")

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC= (systemd ≥ 253 requires it for notify-reload;
        252 ignores the field). Send ready() when the reload is done."""
        fields = ["RELOADING=1", f"MONOTONIC_USEC={self._monotonic_usec()}"]
        if status is not None:
            fields.append(f"STATUS={_clean(status)}")
        return self.send(*fields)

    def status(self, text: str) -> bool:
        """STATUS=: one line that `systemctl status` shows."""
        return self.send(f"STATUS={_clean(text)}")

    def stopping(self, status: str | None = None) -> bool:
        if status is None:
            return self.send("STOPPING=1")
        return self.send("STOPPING=1", f"STATUS={_clean(status)}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the keep-alive ping. Send it from the loop whose hang must be noticed."""
        return self.send("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Pings at most once per `period` seconds, from whoever calls `tick` (the main loop):
    a loop that hangs stops calling it, the pings stop, and systemd restarts the service."""

    def __init__(self, notifier: Notifier, period: float | None) -> None:
        self.notifier = notifier
        self.period = period if notifier.enabled else None
        self._next: float | None = None

    def tick(self, now: float) -> bool:
        """Call on every loop iteration with a monotonic time; True when a ping was sent."""
        if self.period is None:
            return False
        if self._next is not None and now < self._next:
            return False
        self._next = now + self.period
        return self.notifier.watchdog()


def watchdog_period(
    environ: Mapping[str, str] | None = None, pid: int | None = None
) -> float | None:
    """Seconds between watchdog pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
    advises. None when the watchdog is off, the value is not a positive integer, or
    WATCHDOG_PID names another process."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_WATCHDOG_USEC)
    if not raw:
        return None
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get(ENV_WATCHDOG_PID)
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000
