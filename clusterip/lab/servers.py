"""Test servers for one lab node; each answers with the node's name so clients see who served.

    python -m clusterip.lab.servers --name n1 [--http 80] [--udp 5300] [--echo 7]
                                    [--listen wildcard|vip|reuseport|freebind --vip ADDR]
                                    [--vip6 ADDR6] [--wait-vip SECONDS]

* HTTP/1.1 (keep-alive): any GET -> 200, body "n1\\n", header "X-Node: n1".
* UDP: any datagram -> "n1 <payload>", sent from the address the datagram was sent to
  (IP_PKTINFO), so a reply to a VIP comes from the VIP, not from the node's own address.
* TCP line echo: each line "X\\n" -> "n1 X\\n"; the connection stays open.

How each server binds (`--listen`), as services do it in the field:
* wildcard   0.0.0.0 (the default);
* vip        the VIP's address (nginx `listen VIP:80`, HAProxy `bind VIP:80`): it must exist;
* reuseport  two sockets per service on the VIP's address in one SO_REUSEPORT group, each
             served by its own thread (the kernel spreads connections and datagrams);
* freebind   the VIP's address with IP_FREEBIND, so the bind works before the VIP is up.

`--vip6` serves IPv6 too, with separate IPv6-only sockets bound the same way (to `::` or to
ADDR6), so that IPv4 flows stay on IPv4 sockets.

`--wait-vip S`: a bind to the VIP retries every 5 ms for up to S seconds while the address is
not there yet (a service started with the agent, which adds the VIP before it owns a bucket).

A port of 0 turns that server off. Prints "ready" on stdout once every socket listens, then
points stdout at /dev/null (the parent may close the pipe). Exits 0 on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)  # Linux value; Python does not export it
IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)
IPV6_FREEBIND = 78  # include/uapi/linux/in6.h
BACKLOG = 1024
LISTEN_MODES = ("wildcard", "vip", "reuseport", "freebind")
_T = TypeVar("_T")


def bind_plan(mode: str, vip: str | None) -> tuple[str, int, bool, bool]:
    """(address, sockets per service, SO_REUSEPORT, IP_FREEBIND) for a `--listen` mode."""
    if mode not in LISTEN_MODES:
        raise ValueError(f"bad listen mode {mode!r}: allowed are {', '.join(LISTEN_MODES)}")
    if mode == "wildcard":
        return "0.0.0.0", 1, False, False
    if not vip:
        raise ValueError(f"listen mode {mode} needs the VIP's address (--vip)")
    return vip, 2 if mode == "reuseport" else 1, mode == "reuseport", mode == "freebind"


def bind_plan6(mode: str, vip6: str) -> tuple[str, int, bool, bool]:
    """bind_plan for the IPv6 sockets: `::` or the IPv6 VIP."""
    addr, count, reuseport, freebind = bind_plan(mode, vip6)
    return ("::" if mode == "wildcard" else addr), count, reuseport, freebind


def _prepare(sock: socket.socket, reuseport: bool, freebind: bool) -> None:
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if freebind:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_FREEBIND, 1)
    elif freebind:
        sock.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)


def _family(addr: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def tcp_servers(
    cls: type[socketserver.TCPServer],
    handler: type[socketserver.BaseRequestHandler],
    port: int,
    plan: tuple[str, int, bool, bool],
) -> list[socketserver.TCPServer]:
    """The listening server(s) of one TCP service, bound as `plan` says."""
    addr, count, reuseport, freebind = plan
    if _family(addr) == socket.AF_INET6:
        cls = type(cls.__name__ + "6", (cls,), {"address_family": socket.AF_INET6})
    out: list[socketserver.TCPServer] = []
    try:
        for _ in range(count):
            server = cls((addr, port), handler, bind_and_activate=False)
            out.append(server)
            _prepare(server.socket, reuseport, freebind)
            server.server_bind()
            server.server_activate()
    except BaseException:
        for server in out:
            server.server_close()
        raise
    return out


def udp_sockets(port: int, plan: tuple[str, int, bool, bool]) -> list[socket.socket]:
    addr, count, reuseport, freebind = plan
    out = []
    try:
        for _ in range(count):
            sock = socket.socket(_family(addr), socket.SOCK_DGRAM)
            out.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if sock.family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            _prepare(sock, reuseport, freebind)
            sock.bind((addr, port))
    except BaseException:
        for sock in out:
            sock.close()
        raise
    return out


class _Quiet:
    """Mixin: a big accept backlog, address reuse, and no tracebacks for peers going away."""

    request_queue_size = BACKLOG
    allow_reuse_address = True
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if not isinstance(exc, ConnectionError | TimeoutError):
            print(f"error serving {client_address}: {exc!r}", file=sys.stderr, flush=True)


class HttpServer(_Quiet, ThreadingHTTPServer):
    pass


class EchoServer(_Quiet, socketserver.ThreadingTCPServer):
    pass


def http_handler(name: str) -> type[BaseHTTPRequestHandler]:
    body = f"{name}\n".encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "clusterip-lab"
        timeout = 300  # idle keep-alive connections do not hold a thread forever

        def _head(self) -> None:
            self.send_response(200)
            self.send_header("X-Node", name)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()

        def do_GET(self) -> None:
            self._head()
            self.wfile.write(body)

        def do_HEAD(self) -> None:
            self._head()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def echo_handler(name: str) -> type[socketserver.StreamRequestHandler]:
    prefix = f"{name} ".encode()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            for line in self.rfile:
                self.wfile.write(prefix + (line if line.endswith(b"\n") else line + b"\n"))

    return Handler


def udp_reply(name: str, payload: bytes) -> bytes:
    return f"{name} ".encode() + payload


def serve_udp(sock: socket.socket, name: str, stop: threading.Event) -> None:
    """Answer datagrams until `stop`; the reply leaves from the datagram's destination."""
    sock.settimeout(0.2)
    while not stop.is_set():
        try:
            data, ancdata, _flags, peer = sock.recvmsg(65535, socket.CMSG_SPACE(20))
        except TimeoutError:
            continue
        except OSError:
            if stop.is_set():
                return
            continue
        cmsgs = []
        for level, kind, raw in ancdata:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(raw) >= 12:
                # struct in_pktinfo {int ifindex; in_addr spec_dst; in_addr addr}: reply from
                # addr (where it was sent), on any interface.
                cmsgs.append((level, kind, struct.pack("=i4s4s", 0, raw[8:12], b"\0" * 4)))
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(raw) >= 20:
                # struct in6_pktinfo {in6_addr addr; int ifindex}: from addr, any interface.
                cmsgs.append((level, kind, raw[:16] + struct.pack("=i", 0)))
        try:
            sock.sendmsg([udp_reply(name, data)], cmsgs, 0, peer)
        except OSError as exc:
            print(f"udp reply to {peer} failed: {exc}", file=sys.stderr, flush=True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m clusterip.lab.servers")
    parser.add_argument("--name", required=True, help="node name to answer with, e.g. n1")
    parser.add_argument("--listen", default="wildcard", choices=LISTEN_MODES, help="how to bind")
    parser.add_argument("--vip", help="the VIP's address (for --listen other than wildcard)")
    parser.add_argument("--vip6", help="serve IPv6 too; the IPv6 VIP's address")
    parser.add_argument("--http", type=int, default=80, help="HTTP port (0: off)")
    parser.add_argument("--udp", type=int, default=5300, help="UDP port (0: off)")
    parser.add_argument("--echo", type=int, default=7, help="TCP line echo port (0: off)")
    parser.add_argument("--wait-vip", type=float, default=0.0, help="retry binding the VIP (s)")
    args = parser.parse_args(argv)
    for opt in ("http", "udp", "echo"):
        if not 0 <= getattr(args, opt) <= 65535:
            parser.error(f"bad --{opt} {getattr(args, opt)}: expected 0 (off) or 1 to 65535")
    if not args.name or any(c.isspace() for c in args.name):
        parser.error(f"bad --name {args.name!r}: expected a non-empty word such as n1")
    try:
        args.plan = bind_plan(args.listen, args.vip)
        args.plans = [args.plan] + ([bind_plan6(args.listen, args.vip6)] if args.vip6 else [])
    except ValueError as exc:
        parser.error(str(exc))
    return args


def _bound(make: Callable[[], _T], wait: float) -> _T:
    """make(), retried while the address to bind is not there yet, for up to `wait` s."""
    end = time.monotonic() + wait
    while True:
        try:
            return make()
        except OSError as exc:
            if exc.errno != errno.EADDRNOTAVAIL or time.monotonic() >= end:
                raise
        time.sleep(0.005)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    stop = threading.Event()
    servers: list[socketserver.TCPServer] = []
    udp: list[socket.socket] = []
    wait = args.wait_vip
    for plan in args.plans:
        if args.http:
            handler = http_handler(args.name)
            servers += _bound(partial(tcp_servers, HttpServer, handler, args.http, plan), wait)
        if args.echo:
            echo = echo_handler(args.name)
            servers += _bound(partial(tcp_servers, EchoServer, echo, args.echo, plan), wait)
        if args.udp:
            udp += _bound(partial(udp_sockets, args.udp, plan), wait)
    runners: list[Callable[[], None]] = [partial(s.serve_forever, 0.1) for s in servers]
    runners += [partial(serve_udp, sock, args.name, stop) for sock in udp]

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    threads = [threading.Thread(target=run, daemon=True) for run in runners]
    for thread in threads:
        thread.start()
    print("ready", flush=True)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    while not stop.wait(0.1):
        pass
    for server in servers:
        server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join(timeout=1.0)
    for sock in udp:
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
