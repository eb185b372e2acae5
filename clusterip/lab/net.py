"""Build, run and tear down a lab (see `clusterip.lab.topo`) in network namespaces.

Everything the build creates is written to the state file `/run/clusterip/lab-NAME.json`
(atomically, under a lock) *before or right after* it is created, so a crash mid-build still
leaves a record. `teardown()` removes exactly what is recorded there:

* processes: only if /proc/PID/stat still shows the start time recorded at spawn (pid reuse);
  SIGTERM to the process group, SIGKILL after a short wait;
* anything still running inside a recorded namespace (children of `exec`, shells), found by
  the namespace's inode, as long as /run/netns/NAME still is that namespace;
* namespaces: only if /run/netns/NAME still has the recorded inode; removing a namespace
  removes its veth ends and the bridge with it;
* files (server logs) recorded by path; then the state file itself.

Sysctls set in the lab (everything else keeps the kernel's defaults):
* every namespace: net.ipv6.conf.{all,default}.disable_ipv6=1 (no DAD, RS or MLD frames that
  would show up in captures and counters; the project is IPv4 only);
* client: net.ipv4.conf.all.arp_announce=2 (ARP requests come from the gateway address, see
  `topo`);
* a dual-stack lab (`LabTopo(..., ipv6=True)`) turns IPv6 back on in the nodes and the client,
  with duplicate address detection and router solicitations off (addresses usable at once, no
  stray frames), and adds the addresses of `topo`'s IPv6 plan.
The bridge has multicast snooping off, so frames to any multicast MAC (the cluster MAC
03:bf:...) are flooded to every port; it otherwise learns and ages MACs like a switch (STP off,
so ports forward at once). Node k's eth0 has the fixed MAC 02:c1:00:00:00:kk.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from functools import partial
from typing import Any

from clusterip.lab.errors import LabError as LabError
from clusterip.lab.errors import NoSuchLab as NoSuchLab
from clusterip.lab.netops import NETNS_DIR, _setns_to
from clusterip.lab.netops import MemoryNetOps as MemoryNetOps
from clusterip.lab.netops import NetOps as NetOps
from clusterip.lab.netops import Pyroute2Ops as Pyroute2Ops
from clusterip.lab.probe import ProbeResult, ProbeSpec
from clusterip.lab.records import STATE_DIR, _signal, pids_in_netns, proc_start_time
from clusterip.lab.records import StateStore as StateStore
from clusterip.lab.topo import LabTopo, router_rules

TERM_WAIT = 2.0


# --- the lab ------------------------------------------------------------------------------------
BRIDGE_NF = ("iptables", "ip6tables", "arptables")
IPV6_ON = {
    **{f"net.ipv6.conf.{c}.disable_ipv6": "0" for c in ("all", "default")},
    **{f"net.ipv6.conf.{c}.accept_dad": "0" for c in ("all", "default")},
    **{f"net.ipv6.conf.{c}.router_solicitations": "0" for c in ("all", "default")},
}


class Lab:
    """A built lab. Make one with `Lab.build(topo)` or `Lab.load(name)`; `with` tears down."""

    def __init__(self, topo: LabTopo, store: StateStore, ops: NetOps) -> None:
        self.topo = topo
        self.store = store
        self.ops = ops
        self._children: dict[int, subprocess.Popen[Any]] = {}
        self._server_logs: dict[int, str] = {}
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.topo.name

    @property
    def state_path(self) -> str:
        return self.store.path

    # -- build / load / teardown
    @classmethod
    def build(
        cls,
        topo: LabTopo,
        *,
        servers: bool = True,
        state_dir: str = STATE_DIR,
        ops: NetOps | None = None,
        snoop: bool = True,
    ) -> Lab:
        """Create the lab; on any failure remove what was made and re-raise. `snoop`: start a
        snooping switch's process (clusterip.lab.snoop; a build without a kernel says no)."""
        ops = ops if ops is not None else Pyroute2Ops()
        store = StateStore(topo.name, state_dir)
        if os.path.exists(store.path):
            raise LabError(
                f"lab {topo.name!r} already exists (state file {store.path}): tear it down first "
                f"(clusterip lab down --name {topo.name}) or pick another name"
            )
        taken = sorted(set(topo.namespaces) & ops.list_ns())
        if taken:
            raise LabError(f"cannot build lab {topo.name!r}: namespace(s) {', '.join(taken)} exist")
        store.create(
            {
                "version": 1,
                "topo": {
                    "name": topo.name,
                    "nodes": topo.nodes,
                    "clients": topo.clients,
                    "ipv6": topo.ipv6,
                    "snooping": topo.snooping,
                    "router": topo.router,
                },
                "created": time.time(),
                "namespaces": [],
                "processes": [],
                "files": [],
            }
        )
        lab = cls(topo, store, ops)
        try:
            lab._build_net()
            if topo.snooping and snoop:
                from clusterip.lab.snoop import start_snooping

                start_snooping(lab)
            if servers:
                lab.start_servers()
        except BaseException:
            lab.teardown()
            raise
        return lab

    def _build_net(self) -> None:
        topo, ops = self.topo, self.ops
        for ns in topo.namespaces:
            self._record("namespaces", {"name": ns, "ino": None})  # before: a crash leaves a trace
            try:
                ino = ops.create_ns(ns)
            except FileExistsError:  # created by someone else since the check: not ours
                self.store.update(partial(_drop, key="namespaces", field="name", value=ns))
                raise
            self.store.update(partial(_set_ino, ns=ns, ino=ino))
        no_ipv6 = {"net.ipv6.conf.all.disable_ipv6": "1", "net.ipv6.conf.default.disable_ipv6": "1"}
        for ns in topo.namespaces:
            ops.sysctls(ns, no_ipv6)
        if topo.ipv6:
            # A snooping switch is the MLD querier too: its bridge needs a link-local address.
            for ns in (*topo.host_namespaces, *((topo.switch_ns,) if topo.snooping else ())):
                ops.sysctls(ns, IPV6_ON)
        ops.sysctls(topo.client_ns, {"net.ipv4.conf.all.arp_announce": "2"})
        # A switch forwards frames; it does not filter them. With br_netfilter loaded (by
        # anything on this machine), every bridged frame would go through the IP hooks.
        ops.sysctls(topo.switch_ns, {f"net.bridge.bridge-nf-call-{t}": "0" for t in BRIDGE_NF})
        ops.setup_switch(
            topo.switch_ns,
            topo.bridge,
            [(p, ns, topo.interface) for p, ns in topo.ports()],
            snooping=topo.snooping,
        )
        routes = [(net, topo.gateway) for net in topo.client_subnets()]
        for ns in topo.host_namespaces:
            ops.setup_host(
                ns,
                topo.interface,
                topo.host_mac(ns),
                topo.host_addrs(ns),
                topo.prefixlen,
                [] if ns == topo.client_ns else routes,
            )
        if topo.ipv6:
            self._build_ipv6()
        if topo.router:
            ops.nft(topo.router_ns, router_rules())

    def _build_ipv6(self) -> None:
        topo = self.topo
        for k in topo.node_indexes:
            via = [(topo.client_subnet6(), topo.gateway6)]
            ops_addrs = [topo.node_addr6(k)]
            self.ops.setup_ipv6(topo.node_ns(k), topo.interface, ops_addrs, topo.prefixlen6, via)
        self.ops.setup_ipv6(
            topo.client_ns,
            topo.interface,
            [topo.gateway6],
            topo.prefixlen6,
            [],
            lo_addrs=topo.client_addrs6(),
        )
        if topo.router:
            self.ops.setup_ipv6(
                topo.router_ns, topo.interface, [topo.router_addr6], topo.prefixlen6, []
            )

    @classmethod
    def load(cls, name: str, *, state_dir: str = STATE_DIR, ops: NetOps | None = None) -> Lab:
        store = StateStore(name, state_dir)
        data = store.read()
        if data is None:
            raise NoSuchLab(f"no lab {name!r} (no state file {store.path})")
        try:
            t = data["topo"]
            topo = LabTopo(
                name=t["name"],
                nodes=int(t["nodes"]),
                clients=int(t["clients"]),
                ipv6=bool(t.get("ipv6", False)),
                snooping=bool(t.get("snooping", False)),
                router=bool(t.get("router", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise LabError(f"bad lab state file {store.path}: {exc}") from None
        return cls(topo, store, ops if ops is not None else Pyroute2Ops())

    def state(self) -> dict[str, Any]:
        """The recorded state (a fresh read of the state file; empty lists when gone)."""
        return self.store.read() or {"namespaces": [], "processes": [], "files": []}

    def teardown(self) -> None:
        """Remove exactly what the state file records; safe to call again."""
        data = self.store.read()
        if data is None:
            self._reap()
            return
        recorded = {r["pid"]: r["start"] for r in data["processes"] if r["start"] is not None}
        self._kill(recorded, group=True)
        self.store.update(lambda d: d.update(processes=[]))
        for rec in reversed(data["namespaces"]):
            current = self.ops.ns_inode(rec["name"])
            if current is not None and rec["ino"] in (None, current):
                pids = pids_in_netns(current)
                self._kill({p: s for p in pids if (s := proc_start_time(p)) is not None}, False)
                self.ops.remove_ns(rec["name"])
            self.store.update(partial(_drop, key="namespaces", field="name", value=rec["name"]))
        for path in data.get("files", []):
            with suppress(FileNotFoundError):
                os.unlink(path)
        self.store.delete()
        self._reap()

    def _reap(self) -> None:
        for pid, child in list(self._children.items()):
            if child.poll() is not None:
                del self._children[pid]

    def _kill(self, targets: Mapping[int, int], group: bool) -> None:
        """SIGTERM each process still having its start time (its group if it leads one), wait,
        then SIGKILL what is left; reap our own children."""

        def alive(pid: int) -> bool:
            child = self._children.get(pid)
            if child is not None and child.poll() is not None:
                return False
            return proc_start_time(pid) == targets[pid]

        for sig in (signal.SIGTERM, signal.SIGKILL):
            todo = [p for p in targets if alive(p)]
            for pid in todo:
                _signal(pid, sig, group)
            end = time.monotonic() + TERM_WAIT
            while any(alive(p) for p in todo) and time.monotonic() < end:
                time.sleep(0.02)
        for pid in targets:
            child = self._children.pop(pid, None)
            if child is not None:
                with suppress(subprocess.TimeoutExpired):
                    child.wait(timeout=1.0)

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # -- running things in the lab
    def ns(self, host_or_ns: str) -> str:
        """Namespace of a host label (n1.., client, switch) or a lab namespace name."""
        if host_or_ns in self.topo.namespaces:
            return host_or_ns
        return self.topo.host_ns(host_or_ns)

    def _popen(self, ns: str, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[Any]:
        if isinstance(argv, str) or not argv:
            raise LabError(f"bad argv {argv!r}: expected a non-empty list of strings")
        user_preexec = kwargs.pop("preexec_fn", None)
        fd = os.open(os.path.join(NETNS_DIR, self.ns(ns)), os.O_RDONLY)
        try:
            join = _setns_to(fd)

            def preexec() -> None:
                join()
                if user_preexec is not None:
                    user_preexec()

            return subprocess.Popen(list(argv), preexec_fn=preexec, **kwargs)
        finally:
            os.close(fd)

    def spawn(
        self, ns: str, argv: Sequence[str], *, role: str = "process", **popen_kwargs: Any
    ) -> subprocess.Popen[Any]:
        """Start `argv` in namespace `ns` (own session) and record it for teardown."""
        popen_kwargs.setdefault("start_new_session", True)
        proc = self._popen(ns, argv, **popen_kwargs)
        self._children[proc.pid] = proc
        rec = {
            "pid": proc.pid,
            "start": proc_start_time(proc.pid),
            "ns": self.ns(ns),
            "role": role,
            "argv": list(argv),
        }
        self._record("processes", rec)
        return proc

    def run(
        self,
        ns: str,
        argv: Sequence[str],
        *,
        timeout: float,
        check: bool = False,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion in `ns`, capturing text output; kills its process group on timeout.

        Not recorded (it is waited for); teardown's namespace sweep catches any leftovers.
        """
        proc = self._popen(
            ns,
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            _signal(proc.pid, signal.SIGKILL, group=True)
            proc.communicate()
            raise
        done = subprocess.CompletedProcess(list(argv), proc.returncode, out, err)
        if check:
            done.check_returncode()
        return done

    def call(self, ns: str, argv: Sequence[str]) -> int:
        """Run in `ns` with this process's stdin/stdout/stderr (interactive); the exit status."""
        proc = self._popen(ns, argv)
        while True:
            try:
                return proc.wait()
            except KeyboardInterrupt:  # the child got the same SIGINT; wait for it
                continue

    def sysctls(self, host: str, values: Mapping[str, str]) -> None:
        """Set sysctls in one host's namespace (per-namespace ones, such as
        net.ipv4.tcp_syncookies)."""
        self.ops.sysctls(self.ns(host), values)

    def start_servers(
        self,
        nodes: Iterable[int] | None = None,
        *,
        timeout: float | None = None,
        listen: str = "wildcard",
        args: Sequence[str] = (),
        wait: bool = True,
    ) -> dict[int, subprocess.Popen[Any]]:
        """Start `clusterip.lab.servers` in each node and wait until every one is listening
        (`wait=False`: the caller calls `servers_ready` later). `listen`: how they bind (see
        that module; all but wildcard bind the lab's VIP); `args`: more of its flags (e.g.
        `--http 0`, `--wait-vip 10`)."""
        ks = list(nodes) if nodes is not None else list(self.topo.node_indexes)
        procs: dict[int, subprocess.Popen[Any]] = {}
        logs: dict[int, str] = {}
        for k in ks:
            name = self.topo.node_name(k)
            logs[k] = f"{self.store.path[: -len('.json')]}.{name}.log"
            self._record("files", logs[k])
            argv = [sys.executable, "-m", "clusterip.lab.servers", "--name", name]
            argv += ["--listen", listen, "--vip", self.topo.vip, *args]
            if self.topo.ipv6:
                argv += ["--vip6", self.topo.vip6]
            with open(logs[k], "ab") as log:
                procs[k] = self.spawn(
                    self.topo.node_ns(k),
                    argv,
                    role="server",
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=log,
                )
        self._server_logs.update({procs[k].pid: logs[k] for k in ks})
        if wait:
            self.servers_ready(procs, timeout)
        return procs

    def servers_ready(
        self, procs: Mapping[int, subprocess.Popen[Any]], timeout: float | None = None
    ) -> None:
        """Wait for servers that `start_servers(wait=False)` started (LabError if one fails)."""
        limit = timeout if timeout is not None else 10.0 + 0.5 * len(procs)
        logs = {k: self._server_logs[p.pid] for k, p in procs.items()}
        _wait_ready(procs, logs, time.monotonic() + limit)

    def probe(
        self,
        *,
        proto: str = "tcp",
        port: int | None = None,
        vip: str | None = None,
        sources: str | Sequence[str] | None = None,
        per_source: int = 1,
        timeout: float = 1.0,
        concurrency: int = 32,
        deadline: float | None = None,
    ) -> ProbeResult:
        """Run `clusterip.lab.probe` in the client namespace (default: every client address)."""
        spec = ProbeSpec.make(
            vip=vip or self.topo.vip,
            proto=proto,
            port=port,
            sources=sources if sources is not None else self.topo.client_range(),
            per_source=per_source,
            timeout=timeout,
            concurrency=concurrency,
            deadline=deadline,
        )
        argv = [sys.executable, "-m", "clusterip.lab.probe", *spec.to_args()]
        done = self.run(self.topo.client_ns, argv, timeout=spec.deadline + 15.0)
        if done.returncode != 0:
            raise LabError(f"probe failed (exit {done.returncode}): {done.stderr.strip()}")
        return ProbeResult.from_json(done.stdout)

    def neighbour(self, ns: str, ip: str) -> str | None:
        """The link-layer address `ns` has for `ip` (None if no usable neighbour entry)."""
        return self.ops.neighbour(self.ns(ns), ip)

    def _record(self, key: str, value: Any) -> None:
        with self._lock:
            self.store.update(lambda d: d[key].append(value))


def _set_ino(data: dict[str, Any], ns: str, ino: int) -> None:
    for rec in data["namespaces"]:
        if rec["name"] == ns:
            rec["ino"] = ino


def _drop(data: dict[str, Any], key: str, field: str, value: Any) -> None:
    data[key] = [r for r in data[key] if r[field] != value]


def _wait_ready(
    procs: Mapping[int, subprocess.Popen[Any]], logs: Mapping[int, str], deadline: float
) -> None:
    """Wait for each server's 'ready' line; raise LabError naming the first that fails."""
    pending = {p.stdout.fileno(): (k, p) for k, p in procs.items() if p.stdout is not None}
    buffers: dict[int, bytes] = dict.fromkeys(pending, b"")
    try:
        with selectors.DefaultSelector() as sel:
            for fd in pending:
                sel.register(fd, selectors.EVENT_READ)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    k, _ = next(iter(pending.values()))
                    raise LabError(f"server on n{k} not ready in time: {_tail(logs[k])}")
                for key, _ in sel.select(left):
                    fd = int(key.fd)
                    chunk = os.read(fd, 4096)
                    buffers[fd] += chunk
                    k, _proc = pending[fd]
                    if b"ready\n" in buffers[fd]:
                        sel.unregister(fd)
                        del pending[fd]
                    elif not chunk:
                        raise LabError(f"server on n{k} exited: {_tail(logs[k])}")
    finally:
        for proc in procs.values():
            if proc.stdout is not None:
                proc.stdout.close()


def _tail(path: str, size: int = 600) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - size))
            text = fh.read().decode(errors="replace").strip()
    except OSError as exc:
        return f"(no log: {exc.strerror})"
    return text.replace("\n", " | ") or "(empty log)"
