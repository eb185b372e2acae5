"""Debian's nginx on the serving nodes and HAProxy on the director, in the lab's namespaces.

The configuration files live in a private temporary directory; the processes are started with
`Lab.spawn`, so the lab's teardown stops them whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence

from clusterip.lab.net import Lab, LabError

NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
HTTP_PORT = 80


def nginx_conf(name: str, workdir: str, port: int = HTTP_PORT, *, ipv6: bool = False) -> str:
    """One worker, no logs, a tiny static answer naming the node (as the lab's own servers
    do, so `Lab.probe` can tell who answered). Keep-alive connections are never cut short.
    `ipv6`: also listen on IPv6 (a socket of its own, so IPv4 stays on IPv4 sockets)."""
    listen6 = f"\n    listen [::]:{port} ipv6only=on backlog=4096;" if ipv6 else ""
    d = os.path.join(workdir, name)
    temp = "\n".join(
        f"  {kind}_temp_path {d}/{kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
  worker_connections 8192;
}}
http {{
  access_log off;
{temp}
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server {{
    listen {port} backlog=4096;{listen6}
    location / {{
      add_header X-Node {name};
      return 200 "{name}\\n";
    }}
  }}
}}
"""


def haproxy_conf(backends: Sequence[str], *, bind: str, port: int = HTTP_PORT) -> str:
    """A TCP-mode director: round-robin over `backends`, no health checks (nothing else on the
    wire). TCP mode is HAProxy's cheapest way to do it, so the baseline is its best case."""
    servers = "\n".join(f"  server s{i} {addr}:{port}" for i, addr in enumerate(backends, start=1))
    return f"""global
  maxconn 4096
  nbthread 2
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend fe
  bind {bind}:{port}
  default_backend be
backend be
  balance roundrobin
{servers}
"""


def _tail(path: str) -> str:
    try:
        with open(path, errors="replace") as fh:
            return " | ".join(fh.read().strip().splitlines()[-5:])
    except OSError:
        return ""


def _wait_listening(
    lab: Lab,
    ns: str,
    addr: str,
    port: int,
    proc: subprocess.Popen[bytes],
    what: str,
    log: str,
    timeout: float = 10.0,
) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise LabError(f"{what} in {ns} exited with status {proc.returncode}: {_tail(log)}")
        url = f"http://{addr}:{port}/"
        done = lab.run(ns, ["curl", "-s", "-o", "/dev/null", "-m", "1", url], timeout=5)
        if done.returncode == 0:
            return
        time.sleep(0.1)
    raise LabError(f"{what} in {ns} is not listening on {addr}:{port} after {timeout:g} s")


def start_nginx(
    lab: Lab, nodes: Sequence[int], workdir: str, prefix: Sequence[str] = (), *, ipv6: bool = False
) -> None:
    """nginx on each node; `prefix` goes before the command (e.g. `nice -n -5`)."""
    for k in nodes:
        name = lab.topo.node_name(k)
        os.makedirs(os.path.join(workdir, name), exist_ok=True)
        conf = os.path.join(workdir, name, "nginx.conf")
        with open(conf, "w") as fh:
            fh.write(nginx_conf(name, workdir, ipv6=ipv6))
        ns = lab.topo.node_ns(k)
        log = os.path.join(workdir, name, "stderr.log")
        with open(log, "wb") as err:
            proc = lab.spawn(
                ns,
                [*prefix, NGINX, "-p", os.path.join(workdir, name), "-c", conf],
                role="nginx",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        _wait_listening(lab, ns, "127.0.0.1", HTTP_PORT, proc, "nginx", log)


def start_haproxy(
    lab: Lab, director: int, backends: Sequence[int], workdir: str, prefix: Sequence[str] = ()
) -> str:
    """HAProxy on node `director`'s own address; returns that address."""
    addr = lab.topo.node_addr(director)
    conf = os.path.join(workdir, "haproxy.cfg")
    with open(conf, "w") as fh:
        fh.write(haproxy_conf([lab.topo.node_addr(k) for k in backends], bind=addr))
    ns = lab.topo.node_ns(director)
    log = os.path.join(workdir, "haproxy.log")
    with open(log, "wb") as err:
        proc = lab.spawn(
            ns,
            [*prefix, HAPROXY, "-db", "-f", conf],
            role="haproxy",
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
        )
    _wait_listening(lab, ns, addr, HTTP_PORT, proc, "haproxy", log)
    return addr
