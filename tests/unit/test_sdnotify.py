"""sd_notify over a real unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusterip.sdnotify import Notifier, Watchdog, socket_address, watchdog_period


class FakeSystemd:
    """A bound AF_UNIX datagram socket; `messages()` returns what arrived, in order."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.0)

    def messages(self, wait: float = 0.0) -> list[list[str]]:
        if wait:
            time.sleep(wait)
        out: list[list[str]] = []
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return out
            out.append(data.decode().split("\n"))

    def recv_one(self, timeout: float) -> list[str]:
        self.sock.settimeout(timeout)
        try:
            return self.sock.recv(4096).decode().split("\n")
        finally:
            self.sock.settimeout(0.0)


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakeSystemd, str]]:
    path = str(tmp_path / "notify")
    sd = FakeSystemd(path)
    yield sd, path
    sd.sock.close()


def test_messages_arrive_in_order(fake: tuple[FakeSystemd, str]) -> None:
    sd, path = fake
    n = Notifier.from_env({"NOTIFY_SOCKET": path})
    n._monotonic_usec = lambda: 123456789
    assert n.enabled
    assert n.status("joining")
    assert n.ready("serving 1365 of 4096 buckets")
    assert n.watchdog()
    assert n.reloading()
    assert n.ready()
    assert n.stopping("leaving")
    n.close()
    assert sd.messages() == [
        ["STATUS=joining"],
        ["READY=1", "STATUS=serving 1365 of 4096 buckets"],
        ["WATCHDOG=1"],
        ["RELOADING=1", "MONOTONIC_USEC=123456789"],
        ["READY=1"],
        ["STOPPING=1", "STATUS=leaving"],
    ]


def test_monotonic_usec_is_clock_monotonic(fake: tuple[FakeSystemd, str]) -> None:
    sd, path = fake
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    Notifier(path).reloading("re-reading /etc/clusterip/clusterip.toml")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    [msg] = sd.messages()
    assert msg[0] == "RELOADING=1"
    assert msg[2] == "STATUS=re-reading /etc/clusterip/clusterip.toml"
    key, _, value = msg[1].partition("=")
    assert key == "MONOTONIC_USEC"
    assert before <= int(value) <= after


def test_status_stays_one_field(fake: tuple[FakeSystemd, str]) -> None:
    sd, path = fake
    Notifier(path).status("two\nlines\n READY=1")
    assert sd.messages() == [["STATUS=two lines READY=1"]]


def test_abstract_socket() -> None:
    name = f"clusterip-test-{secrets.token_hex(6)}"
    sd = FakeSystemd("\0" + name)
    try:
        n = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert n.address == "\0" + name
        assert n.ready()
        assert sd.messages() == [["READY=1"]]
    finally:
        sd.sock.close()


def test_no_socket_is_a_no_op(tmp_path: Path) -> None:
    n = Notifier.from_env({})
    assert not n.enabled
    assert not n.ready()
    assert not n.watchdog()
    assert not Watchdog(n, 1.0).tick(0.0)


def test_unset_removes_variables_for_children(fake: tuple[FakeSystemd, str]) -> None:
    sd, path = fake
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "1", "X": "y"}
    n = Notifier.from_env(env, unset=True)
    assert env == {"X": "y"}
    assert n.ready()
    assert sd.messages() == [["READY=1"]]


def test_gone_socket_does_not_raise(tmp_path: Path) -> None:
    n = Notifier(str(tmp_path / "nobody-listens"))
    assert not n.ready()
    assert isinstance(n.last_error, OSError)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("@x", "\0x"),
        ("/run/systemd/notify", "/run/systemd/notify"),
        ("relative/path", None),
        ("vsock:2:1234", None),
    ],
)
def test_socket_address(value: str | None, expected: str | None) -> None:
    assert socket_address(value) == expected


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4243"}, None),  # someone else's
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": "1000", "WATCHDOG_PID": "x"}, None),
    ],
)
def test_watchdog_period(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_period(env, pid=4242) == expected


def test_watchdog_period_defaults_to_own_pid() -> None:
    env = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert watchdog_period(env) == 1.0


def test_watchdog_ticks_at_most_once_per_period(fake: tuple[FakeSystemd, str]) -> None:
    sd, path = fake
    dog = Watchdog(Notifier(path), 5.0)
    sent = [t for t in (0.0, 1.0, 4.9, 5.0, 6.0, 10.1, 10.2) if dog.tick(t)]
    assert sent == [0.0, 5.0, 10.1]
    assert sd.messages() == [["WATCHDOG=1"]] * 3


def test_hung_loop_stops_the_pings(fake: tuple[FakeSystemd, str]) -> None:
    """A real loop on a thread pings every 20 ms; when it hangs, no ping arrives."""
    sd, path = fake
    dog = Watchdog(Notifier(path), 0.02)
    hang = threading.Event()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            if hang.is_set():
                stop.wait()  # stuck: no more iterations
                return
            dog.tick(time.monotonic())
            time.sleep(0.002)

    thread = threading.Thread(target=loop)
    thread.start()
    try:
        assert sd.recv_one(2.0) == ["WATCHDOG=1"]
        time.sleep(0.2)
        hang.set()
        time.sleep(0.05)  # the loop notices within one iteration
        pinging = sd.messages()
        assert len(pinging) >= 3, pinging  # ~10 expected in 0.2 s
        assert sd.messages(wait=0.3) == []  # 15 periods without a ping
    finally:
        stop.set()
        thread.join()


@pytest.mark.skipif(shutil.which("systemd-notify") is None, reason="no systemd-notify here")
def test_same_datagram_as_systemd_notify(fake: tuple[FakeSystemd, str]) -> None:
    """systemd's own client writes exactly what we write."""
    sd, path = fake
    env = dict(os.environ, NOTIFY_SOCKET=path)
    subprocess.run(
        ["systemd-notify", "--no-block", "--ready", "--status=serving"], env=env, check=True
    )
    theirs = sd.recv_one(2.0)
    Notifier(path).ready("serving")
    ours = sd.recv_one(2.0)
    assert sorted(theirs) == sorted(ours) == ["READY=1", "STATUS=serving"]
