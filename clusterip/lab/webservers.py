"""Debian's nginx and HAProxy as a lab node's web server, bound as a user would bind them.

Both answer every GET with 200, the node's name in the body and in an `X-Node` header (as the
lab's own servers do, so `Lab.probe` can tell who answered), and keep connections alive.
`bind` is "wildcard" (`listen 80`) or "vip" (`listen VIP:80`, `bind VIP:80`: the VIP must be
up first). Configuration files live in a directory the caller owns; the processes are started
with `Lab.spawn`, so the lab's teardown stops them whatever happens.
"""

from __future__ import annotations

import os
import subprocess
import time

from clusterip.lab.net import Lab, LabError

NGINX = "/usr/sbin/nginx"
HAPROXY = "/usr/sbin/haproxy"
PORT = 80
BINDS = ("wildcard", "vip")


def _address(lab: Lab, bind: str) -> str:
    if bind not in BINDS:
        raise LabError(f"bad bind {bind!r}: allowed are {', '.join(BINDS)}")
    return f"{lab.topo.vip}:{PORT}" if bind == "vip" else str(PORT)


def nginx_conf(name: str, workdir: str, listen: str) -> str:
    d = os.path.join(workdir, name)
    temps = "\n".join(
        f"  {kind}_temp_path {d}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
  worker_connections 4096;
}}
http {{
  access_log off;
{temps}
  keepalive_requests 1000000;
  keepalive_timeout 120s;
  server {{
    listen {listen} backlog=4096;
    location / {{
      add_header X-Node {name};
      return 200 "{name}\\n";
    }}
  }}
}}
"""


def haproxy_conf(name: str, bind: str) -> str:
    """HAProxy answering by itself (`http-request return`): no backend needed."""
    return f"""global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 120s
  timeout server 120s
  timeout http-keep-alive 120s
frontend fe
  bind {bind}
  http-request return status 200 content-type text/plain string "{name}" hdr X-Node {name}
"""


def start(
    lab: Lab, server: str, nodes: list[int], workdir: str, bind: str, *, vip_up: bool = True
) -> list[subprocess.Popen[bytes]]:
    """Start `server` ("nginx" or "haproxy") on each node; returns once each answers (or,
    with `vip_up=False`, once it listens: the VIP is not there yet, and a VIP-bound server
    then needs `net.ipv4.ip_nonlocal_bind=1` on its node, as behind keepalived)."""
    listen = _address(lab, bind)
    if server not in ("nginx", "haproxy"):
        raise LabError(f"bad server {server!r}: allowed are nginx, haproxy")
    procs = []
    for k in nodes:
        name = lab.topo.node_name(k)
        d = os.path.join(workdir, name)
        os.makedirs(d, exist_ok=True)
        conf = os.path.join(d, f"{server}.conf")
        if server == "nginx":
            text = nginx_conf(name, workdir, listen)
            argv = [NGINX, "-p", d, "-c", conf]
        else:
            text = haproxy_conf(name, listen if ":" in listen else f"*:{listen}")
            argv = [HAPROXY, "-db", "-f", conf]
        with open(conf, "w") as fh:
            fh.write(text)
        log = os.path.join(d, f"{server}.log")
        with open(log, "wb") as err:
            proc = lab.spawn(
                lab.topo.node_ns(k),
                argv,
                role=server,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        procs.append(proc)
        _wait(lab, k, proc, f"{server} on {name}", log, vip_up)
    return procs


def _wait(
    lab: Lab, k: int, proc: subprocess.Popen[bytes], what: str, log: str, vip_up: bool
) -> None:
    # From inside the node its own stack answers for the VIP, whatever the buckets say.
    url = f"http://{lab.topo.vip}:{PORT}/"
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if proc.poll() is not None:
            with open(log, errors="replace") as fh:
                tail = " | ".join(fh.read().strip().splitlines()[-5:])
            raise LabError(f"{what} exited with status {proc.returncode}: {tail}")
        if vip_up:
            argv = ["curl", "-s", "-o", "/dev/null", "-m", "1", url]
            if lab.run(lab.topo.node_ns(k), argv, timeout=5).returncode == 0:
                return
        else:
            argv = ["ss", "-Hltn", f"sport = :{PORT}"]
            if lab.run(lab.topo.node_ns(k), argv, timeout=5).stdout.strip():
                return
        time.sleep(0.1)
    raise LabError(f"{what} does not answer at {url}")
