"""The XDP pre-filter's cost per packet, with frames injected like a NIC's (issue 15).

    python -m bench.xdp [--rounds 7] [--frames 2000000] [--cpu 1] [--json FILE]

Two namespaces joined by one veth pair: a generator (`g0`) and a receiver (`eth0`). The
generator is an XDP program (bench/xdp_gen.o) run with BPF_PROG_TEST_RUN in live-frames mode on
g0: every repetition makes a real xdp_frame of a 60-byte UDP template (to the VIP's cluster MAC,
source ports cycling over 256 values) and XDP_TX sends it out of g0, in batches of 64, so the
receiver's veth takes them from its ring in its NAPI poll with full headroom, as a driver takes
frames from a NIC. The kernel times the run (in the generator's thread, which also runs the
receiver's softirq when it re-enables bottom halves), so `duration` is the whole path's time
per frame. Receiver cost = that time minus the same with nobody receiving (the receiver's veth
without NAPI: frames are freed at once), in the same round.

Foreign packets (the receiver owns no bucket): none (no rules: the stack drops them), nft
(clusterip's ingress rules), nft+xdp (the same plus the pre-filter), floor (an XDP program that
drops every packet to the VIP, without hashing), and xdp-drop (an XDP program that drops every
frame unread: the driver's own cost of running XDP at all; a program's cost beyond it is
reported as beyond_xdp_drop). Owned packets (the receiver owns every bucket;
a UDP socket on the port whose buffer stays full, so the stack drops them at the socket):
own-nft, own-nft+xdp (the pre-filter passes them), own-fast (`clusterip up --xdp on`: the
pre-filter's OWNED fast path rewrites the MACs and nft accepts at once with the rule
render.fast_rule puts first in the VIP's ingress chain).

Ratios are to nft (foreign) or own-nft (owned) in the same round; median [min-max] over the
rounds, each measurement the best of `tries` runs (other work on the machine only adds time).
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import json
import os
import secrets
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from clusterip.config import VipConfig, build
from clusterip.lab.netops import in_netns
from clusterip.xdp import libbpf as bpf
from clusterip.xdp.filter import XdpFilter
from clusterip.xdp.frames import frame
from clusterip.xdp.spec import Buckets, XdpError, XdpVip, mac_bytes

VIP = "198.18.0.100"
CLIENT = "198.18.1.1"
CLIENT_MAC = "02:c1:00:00:00:fe"
PORT = 5300
NODES = 3
N_PORTS = 256
GEN_OBJ = os.path.join(os.path.dirname(__file__), "xdp_gen.o")
FOREIGN = ("nobody", "xdp-drop", "none", "nft", "nft+xdp", "floor")
OWNED = ("nobody", "own-nft", "own-nft+xdp", "own-fast")
SIOCETHTOOL, ETHTOOL_SGRO = 0x8946, 0x2C
NETNS_DIR = "/run/netns"


# --- the two namespaces -----------------------------------------------------------------------
@dataclass
class Pair:
    gen: str
    rx: str
    made: list[tuple[str, int]] = field(default_factory=list)  # (name, inode) we created


@contextmanager
def pair() -> Iterator[Pair]:
    """Generator and receiver namespaces, removed on the way out (also on errors/Ctrl-C),
    each only if /run/netns/NAME still is the namespace we made."""
    from pyroute2 import IPRoute, netns

    tag = "bx" + secrets.token_hex(3)[:5]
    p = Pair(f"{tag}-g", f"{tag}-r")
    try:
        for name in (p.gen, p.rx):
            netns.create(name)
            p.made.append((name, os.stat(os.path.join(NETNS_DIR, name)).st_ino))
        with IPRoute(netns=p.gen) as ipr:
            ipr.link("add", ifname="g0", kind="veth", peer={"ifname": "eth0", "net_ns_fd": p.rx})
            ipr.link("set", index=ipr.link_lookup(ifname="g0")[0], state="up")
        with IPRoute(netns=p.rx) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
            ipr.link("set", index=ipr.link_lookup(ifname="eth0")[0], state="up")
        yield p
    finally:
        for name, ino in reversed(p.made):
            path = os.path.join(NETNS_DIR, name)
            with suppress(FileNotFoundError):
                if os.stat(path).st_ino == ino:
                    netns.remove(name)


def sh(ns: str, *argv: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=60, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} in {ns}: {done.stderr.strip() or done.stdout}")
    return done.stdout


def cip(ns: str, *args: str) -> str:
    return sh(ns, sys.executable, "-m", "clusterip", *args)


def set_gro(ns: str, ifname: str, on: bool) -> None:
    """GRO on a veth gives it NAPI without XDP (it takes XDP_TX'd frames); off: it drops them."""

    def go() -> None:
        req = bytearray(struct.pack("16sP", ifname.encode(), 0))
        val = struct.pack("II", ETHTOOL_SGRO, int(on))
        buf = ctypes.create_string_buffer(val, len(val))
        struct.pack_into("P", req, 16, ctypes.addressof(buf))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, req)

    in_netns(ns, go)


# --- BPF objects: the generator and the floor -------------------------------------------------
class GenObject:
    """bench/xdp_gen.o loaded once: its xdp_gen and xdp_floor programs."""

    def __init__(self, vip: str, cluster_mac: str) -> None:
        lib = bpf.lib()
        if not os.path.exists(GEN_OBJ):
            raise XdpError(f"no {GEN_OBJ}: run `make setup`")
        self.obj = lib.bpf_object__open_file(GEN_OBJ.encode(), None)
        if not self.obj:
            raise bpf.fail(f"open {GEN_OBJ}")
        macs = mac_bytes(cluster_mac) + mac_bytes(CLIENT_MAC)
        conf = struct.pack("<4sHH12s", socket.inet_aton(vip), 40000, N_PORTS, macs)
        rodata = lib.bpf_object__find_map_by_name(self.obj, b".rodata")
        bpf.check(lib.bpf_map__set_initial_value(rodata, conf, len(conf)), "generator config")
        bpf.check(lib.bpf_object__load(self.obj), "load the generator")
        self.fds = {
            name: bpf.check(
                lib.bpf_program__fd(lib.bpf_object__find_program_by_name(self.obj, name.encode())),
                name,
            )
            for name in ("xdp_gen", "xdp_floor", "xdp_drop")
        }

    def close(self) -> None:
        bpf.lib().bpf_object__close(self.obj)


def generate(p: Pair, gen: GenObject, template: bytes, frames: int, cpu: int) -> float:
    """Send `frames` copies of the template into the receiver; ns per frame, whole path."""

    def go() -> float:
        os.sched_setaffinity(0, {cpu})
        index = socket.if_nametoindex("g0")
        _, _, ns = bpf.test_run(
            gen.fds["xdp_gen"], template, repeat=frames, ingress_ifindex=index, live=True,
            batch_size=64,
        )  # fmt: skip
        return float(ns)

    return in_netns(p.gen, go)


# --- receiver set-ups ---------------------------------------------------------------------------
class Receiver:
    """Enters and leaves each set-up in the receiver namespace."""

    def __init__(self, p: Pair, gen: GenObject, cfg: VipConfig) -> None:
        self.p, self.gen, self.cfg = p, gen, cfg
        self.filter: XdpFilter | None = None
        self.floor_link = -1
        self.sink: subprocess.Popen[bytes] | None = None
        self.base = ["--vip", VIP, "--interface", "eth0", "--total-nodes", str(NODES)]

    def nft(self, owned: bool, xdp: str = "off") -> None:
        nodes = [str(k) for k in range(1, NODES + 1)] if owned else ["1"]
        flags = [arg for k in nodes for arg in ("--local-node", k)]
        cip(self.p.rx, "up", *self.base, *flags, "--xdp", xdp)
        if not owned:
            cip(self.p.rx, "release", "1", "--now", "--vip", VIP)

    def xdp(self, buckets: Buckets, *, owned_protos: tuple[str, ...] = ("tcp",)) -> None:
        def go() -> None:
            vip = XdpVip.from_config(self.cfg, owned_protos=owned_protos)
            f = XdpFilter("eth0", [vip])
            f.load()
            f.set_buckets(self.cfg.vip, buckets)
            att = f.attach("native")
            assert att.mode == "native", att
            self.filter = f

        in_netns(self.p.rx, go)

    def plain_xdp(self, prog: str) -> None:
        def go() -> None:
            fd = bpf.link_create_xdp(
                self.gen.fds[prog], socket.if_nametoindex("eth0"), bpf.XDP_FLAGS_DRV_MODE
            )
            self.floor_link = bpf.check(fd, f"attach {prog}")

        in_netns(self.p.rx, go)

    def enter(self, name: str) -> None:
        all_buckets = range(1, NODES + 1)
        if name == "nobody":
            set_gro(self.p.rx, "eth0", False)
        elif name == "xdp-drop":
            self.plain_xdp("xdp_drop")
        elif name in ("nft", "nft+xdp", "floor"):
            self.nft(owned=False)
            if name == "nft+xdp":
                self.xdp(Buckets.of(NODES))  # owns nothing: every bucket drops
            elif name == "floor":
                self.plain_xdp("xdp_floor")
        elif name == "own-fast":  # as `clusterip up --xdp on` runs it: the owned fast path
            self.nft(owned=True, xdp="on")
        elif name.startswith("own-"):
            self.nft(owned=True)
            if name == "own-nft+xdp":
                self.xdp(Buckets.of(NODES, all_buckets))

    def leave(self, name: str) -> None:
        if self.filter is not None:
            self.filter.close()
            self.filter = None
        if self.floor_link >= 0:
            os.close(self.floor_link)
            self.floor_link = -1
        if name == "nobody":
            set_gro(self.p.rx, "eth0", True)
        elif name not in ("none", "xdp-drop"):
            cip(self.p.rx, "down", "--vip", VIP)

    def start_sink(self) -> None:
        """A UDP socket on the port that never reads: owned packets end at its full buffer."""
        code = (
            "import socket,sys,time\n"
            "s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            "s.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,4096)\n"
            f"s.bind(('0.0.0.0',{PORT}))\nprint('ready',flush=True)\nsys.stdin.read()\n"
        )
        argv = ["ip", "netns", "exec", self.p.rx, sys.executable, "-c", code]
        self.sink = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self.sink.stdout is not None
        if self.sink.stdout.readline().strip() != b"ready":
            raise RuntimeError("the UDP sink did not start")

    def stop_sink(self) -> None:
        if self.sink is not None:
            self.sink.kill()  # the Popen we started, by its own pid
            self.sink.wait()
            self.sink = None


# --- measuring ----------------------------------------------------------------------------------
def summary(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def measure_phase(
    rx: Receiver,
    names: tuple[str, ...],
    template: bytes,
    *,
    rounds: int,
    frames: int,
    tries: int,
    cpu: int,
    log: Callable[[str], None],
) -> list[dict[str, Any]]:
    samples = []
    for rnd in range(rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for name in order:
            rx.enter(name)
            try:
                generate(rx.p, rx.gen, template, frames // 10, cpu)  # warm-up
                ns = min(generate(rx.p, rx.gen, template, frames, cpu) for _ in range(tries))
                counters = rx.filter.counters()[rx.cfg.vip] if rx.filter else {}
            finally:
                rx.leave(name)
            samples.append({"round": rnd, "setup": name, "ns": ns, "xdp": counters})
            log(f"  round {rnd + 1}/{rounds} {name:<12} {ns:7.1f} ns/frame (whole path)")
    return samples


def analyze(samples: list[dict[str, Any]], names: tuple[str, ...], ref: str) -> dict[str, Any]:
    base = {s["round"]: s["ns"] for s in samples if s["setup"] == "nobody"}
    cost: dict[str, dict[int, float]] = {n: {} for n in names if n != "nobody"}
    for s in samples:
        if s["setup"] in cost:
            cost[s["setup"]][s["round"]] = s["ns"] - base[s["round"]]
    out: dict[str, Any] = {}
    for name, per_round in cost.items():
        rounds = sorted(per_round)
        ratios = [per_round[r] / cost[ref][r] for r in rounds if cost[ref].get(r)]
        entry = {"receiver_ns": summary([per_round[r] for r in rounds])}
        if name != ref:
            entry[f"ratio_to_{ref}"] = summary(ratios)
            entry[f"times_cheaper_than_{ref}"] = summary([1 / x for x in ratios if x > 0])
        out[name] = entry
    if "xdp-drop" in cost:  # the cost of a program beyond the driver's own XDP path
        drop = cost["xdp-drop"]
        for name in ("nft+xdp", "floor"):
            rows = [cost[name][r] - drop[r] for r in sorted(cost.get(name, {})) if r in drop]
            if rows:
                out[name]["beyond_xdp_drop_ns"] = summary(rows)
    out["nobody_path_ns"] = summary(list(base.values()))
    return out


def run(
    *,
    rounds: int = 7,
    frames: int = 2_000_000,
    tries: int = 2,
    cpu: int = 1,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Both phases in fresh namespaces; returns samples, analysis and the method."""
    cfg = build(vip=VIP, interface="eth0", total_nodes=NODES, local_nodes=[1])
    template = frame(
        ip(CLIENT), ip(VIP), "udp", 40000, PORT, dst_mac=cfg.clustermac, src_mac=CLIENT_MAC
    )
    with pair() as p:
        gen = GenObject(VIP, cfg.clustermac)
        rx = Receiver(p, gen, cfg)
        try:
            set_gro(p.rx, "eth0", True)
            log(f"foreign packets ({p.rx}): {', '.join(FOREIGN)}")
            foreign = measure_phase(
                rx, FOREIGN, template, rounds=rounds, frames=frames, tries=tries, cpu=cpu, log=log
            )
            log(f"owned packets: {', '.join(OWNED)}")
            rx.start_sink()
            owned = measure_phase(
                rx, OWNED, template, rounds=rounds, frames=frames, tries=tries, cpu=cpu, log=log
            )
        finally:
            rx.stop_sink()
            gen.close()
    return {
        "method": __doc__,
        "params": {"rounds": rounds, "frames": frames, "tries": tries, "cpu": cpu},
        "kernel": os.uname().release,
        "foreign": {"samples": foreign, "analysis": analyze(foreign, FOREIGN, "nft")},
        "owned": {"samples": owned, "analysis": analyze(owned, OWNED, "own-nft")},
    }


def ip(text: str) -> Any:
    import ipaddress

    return ipaddress.IPv4Address(text)


def table(result: dict[str, Any]) -> str:
    def fmt(s: dict[str, float], digits: int = 1) -> str:
        return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}-{s['max']:.{digits}f}]"

    lines = [f"{'receiver':<14} {'ns per packet':>24} {'ratio to nft only':>26}"]
    for phase, ref in (("foreign", "nft"), ("owned", "own-nft")):
        a = result[phase]["analysis"]
        lines.append(f"-- {phase} (path with nobody receiving: {fmt(a['nobody_path_ns'])} ns)")
        for name, entry in a.items():
            if name == "nobody_path_ns":
                continue
            ratio = entry.get(f"ratio_to_{ref}")
            beyond = entry.get("beyond_xdp_drop_ns")
            lines.append(
                f"{name:<14} {fmt(entry['receiver_ns']):>24} "
                f"{fmt(ratio, 3) if ratio else '1':>26}"
                + (f"   beyond xdp-drop {fmt(beyond)}" if beyond else "")
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.xdp", description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--frames", type=int, default=2_000_000)
    ap.add_argument("--tries", type=int, default=2)
    ap.add_argument("--cpu", type=int, default=1)
    ap.add_argument("--json", help="write the full result here")
    args = ap.parse_args(argv)
    started = time.monotonic()
    result = run(rounds=args.rounds, frames=args.frames, tries=args.tries, cpu=args.cpu)
    result["seconds"] = time.monotonic() - started
    print(table(result))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
