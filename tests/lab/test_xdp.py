"""The XDP pre-filter in a lab, in front of the static nft datapath (`clusterip up`).

The filter is attached with `python -m clusterip.lab.xdptool sync`, which mirrors the node's nft
ownership into the program's bucket map, natively on the lab's veth interfaces.
"""

from __future__ import annotations

import ipaddress
import json
import os
import select
import signal
import subprocess
import sys
from typing import Any

from clusterip.hashing import flow_bucket
from clusterip.lab.net import Lab
from tests.lab.clients import udp_once
from tests.lab.conftest import MakeLab
from tests.lab.test_datapath import cip, status, up_all

HASHMODE = "sourceip-sourceport"


def xdp(lab: Lab, k: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "clusterip.lab.xdptool", *args]
    done = lab.run(lab.topo.node_ns(k), argv, timeout=30)
    assert not check or done.returncode == 0, (args, done.stdout, done.stderr)
    return done


def xdp_status(lab: Lab, k: int) -> dict[str, Any]:
    rows = json.loads(xdp(lab, k, "status", "--interface", "eth0", "--json").stdout)
    return rows["interfaces"][0]  # type: ignore[no-any-return]


def xdp_counters(lab: Lab, k: int) -> dict[str, int]:
    """Node k's XDP counters for the VIP (all 0 when no program is attached)."""
    (vip,) = xdp_status(lab, k).get("vips") or [{}]
    return {c: vip.get(c, 0) for c in ("dropped", "passed", "owned")}


def nft_counters(lab: Lab, k: int) -> dict[str, int]:
    return {name: c["packets"] for name, c in status(lab, k)["counters"].items()}


def prog_on(lab: Lab, k: int) -> str:
    """What `ip link` says about XDP on node k's eth0 ('' when nothing is attached)."""
    done = lab.run(lab.topo.node_ns(k), ["ip", "-d", "link", "show", "dev", "eth0"], timeout=10)
    return " ".join(line.strip() for line in done.stdout.splitlines() if "xdp" in line)


def test_xdp_drops_what_nft_would_drop_and_passes_what_it_accepts(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=300)
    up_all(lab, "--hashmode", HASHMODE)
    seed = int(status(lab, 1)["seed"], 16)
    for k in lab.topo.node_indexes:
        out = xdp(lab, k, "sync", "--vip", lab.topo.vip, "--mode", "native").stdout
        assert "native" in out, out
        assert "prog/xdp" in prog_on(lab, k)
    sources = list(lab.topo.client_addrs())

    def flows_and_counts() -> tuple[dict[str, list[str]], dict[int, dict[str, int]]]:
        before = {k: nft_counters(lab, k) for k in lab.topo.node_indexes}
        xbefore = {k: xdp_counters(lab, k) for k in lab.topo.node_indexes}
        answers = udp_once(lab, sources)
        counts = {}
        for k in lab.topo.node_indexes:
            after, xafter = nft_counters(lab, k), xdp_counters(lab, k)
            counts[k] = {f"nft_{c}": after[c] - before[k][c] for c in after}
            if xdp_status(lab, k)["xdp"]:
                counts[k].update({f"xdp_{c}": xafter[c] - xbefore[k][c] for c in xafter})
        return answers, counts

    with_xdp, counts = flows_and_counts()

    def owner(key: str) -> str:
        src, sport = key.split(":")
        return f"n{flow_bucket(HASHMODE, seed, 3, ipaddress.IPv4Address(src), int(sport), 5300)}"

    expect = {key: owner(key) for key in with_xdp}
    assert len(with_xdp) == 300
    assert {k: v for k, v in with_xdp.items() if v != [expect[k]]} == {}
    for k in lab.topo.node_indexes:
        mine = sum(1 for n in expect.values() if n == f"n{k}")
        c = counts[k]
        # XDP passed exactly this node's flows, and nft accepted exactly what XDP passed;
        # XDP dropped all the others, so none of them reached nft.
        assert (c["xdp_passed"], c["nft_accepted"]) == (mine, mine), c
        assert (c["xdp_dropped"], c["nft_foreign"]) == (300 - mine, 0), c
        assert c["xdp_owned"] == 0
    # Control: XDP off. nft alone serves the same flows and drops just what XDP dropped.
    for k in lab.topo.node_indexes:
        assert "detached" in xdp(lab, k, "detach", "--interface", "eth0").stdout
        assert prog_on(lab, k) == ""
    without, bare = flows_and_counts()
    assert len(without) == 300
    assert {k: v for k, v in without.items() if v != [owner(k)]} == {}
    for k in lab.topo.node_indexes:
        mine = sum(1 for key in without if owner(key) == f"n{k}")
        assert (bare[k]["nft_accepted"], bare[k]["nft_foreign"]) == (mine, 300 - mine), bare[k]
    # TCP through the filter: every connection served by its own node.
    for k in lab.topo.node_indexes:
        xdp(lab, k, "sync", "--vip", lab.topo.vip, "--mode", "native")
    res = lab.probe(proto="tcp", port=80, sources=sources[:100], per_source=2)
    assert res.errors == 0, res.error_kinds()
    assert all(
        r.node
        == f"n{flow_bucket(HASHMODE, seed, 3, ipaddress.IPv4Address(r.src), r.sport, r.dport)}"
        for r in res.results
    )


def test_a_moved_bucket_follows_take_and_release(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=150)
    up_all(lab, "--hashmode", "sourceip")
    for k in lab.topo.node_indexes:
        xdp(lab, k, "sync", "--vip", lab.topo.vip, "--mode", "native")
    cip(lab, 3, "release", "3", "--now", "--vip", lab.topo.vip)
    xdp(lab, 3, "sync", "--vip", lab.topo.vip)  # nft released 3 first, now XDP drops it
    cip(lab, 1, "take", "3", "--vip", lab.topo.vip)
    xdp(lab, 1, "sync", "--vip", lab.topo.vip)
    assert xdp_status(lab, 1)["vips"][0]["passing"] == [1, 3]
    assert xdp_status(lab, 3)["vips"][0]["passing"] == []
    answers = udp_once(lab, list(lab.topo.client_addrs()))
    seed = int(status(lab, 1)["seed"], 16)
    for key, nodes in answers.items():
        b = flow_bucket("sourceip", seed, 3, ipaddress.IPv4Address(key.split(":")[0]))
        assert nodes == [f"n{1 if b == 3 else b}"], key


FRAGMENTS = r"""
import socket, struct, sys
src, dst, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for i in range(count):
    payload = bytes(16)
    # UDP (17), fragment offset 185 (x 8 bytes), no MF: a last fragment, without ports
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1000 + i, 185, 64, 17, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    s.sendto(hdr + payload, (dst, 0))
print("sent", count)
"""


def test_non_first_fragments_pass_xdp(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=3, clients=4, servers=False)
    up_all(lab, "--hashmode", HASHMODE)
    for k in lab.topo.node_indexes:
        xdp(lab, k, "sync", "--vip", lab.topo.vip, "--mode", "native")
    src = lab.topo.client_addrs()[0]
    before = {k: xdp_counters(lab, k) for k in lab.topo.node_indexes}
    argv = [sys.executable, "-c", FRAGMENTS, src, lab.topo.vip, "100"]
    done = lab.run(lab.topo.client_ns, argv, timeout=20)
    assert done.returncode == 0, done.stderr
    for k in lab.topo.node_indexes:
        after = xdp_counters(lab, k)
        # Every node saw the 100 fragments and passed them all to nft.
        assert after["passed"] - before[k]["passed"] == 100, (k, before[k], after)
        assert after["dropped"] == before[k]["dropped"]


def test_the_program_goes_with_the_process_that_holds_it(make_lab: MakeLab) -> None:
    lab = make_lab(nodes=1, clients=1, servers=False)
    cip(
        lab,
        1,
        "up",
        "--vip",
        lab.topo.vip,
        "--interface",
        "eth0",
        "--total-nodes",
        "2",
        "--local-node",
        "1",
        "--xdp",
        "off",
    )  # fmt: skip (the tool attaches its own below)
    argv = [sys.executable, "-m", "clusterip.lab.xdptool", "sync", "--vip", lab.topo.vip, "--hold"]
    proc = lab.spawn(
        lab.topo.node_ns(1),
        argv,
        role="xdp-hold",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 20)
    lines = [proc.stdout.readline() for _ in range(2)] if ready else []
    assert lines and lines[-1].strip() == "ready", (lines, proc.poll())
    assert "native" in lines[0] and "bpf_link" in lines[0]
    assert "prog/xdp" in prog_on(lab, 1)
    # A bpf_link cannot be detached by another process's `detach`.
    refused = xdp(lab, 1, "detach", "--interface", "eth0", check=False)
    assert refused.returncode == 1 and "cannot detach XDP from eth0" in refused.stderr, refused
    assert "prog/xdp" in prog_on(lab, 1)
    os.kill(proc.pid, signal.SIGKILL)  # however it ends
    proc.wait(timeout=10)
    assert prog_on(lab, 1) == ""
    # Static mode: netlink-attached, outlives `sync`; `detach` leaves nothing attached or pinned.
    xdp(lab, 1, "sync", "--vip", lab.topo.vip)
    assert "prog/xdp" in prog_on(lab, 1)
    xdp(lab, 1, "detach", "--interface", "eth0")
    assert prog_on(lab, 1) == ""
    assert not [p for p in _bpffs() if "clusterip" in p]


def _bpffs() -> list[str]:
    found = []
    for root, dirs, files in os.walk("/sys/fs/bpf"):
        found += [os.path.join(root, n) for n in dirs + files]
    return found


def test_auto_falls_back_where_the_driver_has_no_native_xdp(make_lab: MakeLab) -> None:
    """lo has no native XDP: auto attaches nothing and says why; on takes generic mode."""
    from clusterip.lab.netops import in_netns
    from clusterip.xdp import XdpFilter, XdpVip

    lab = make_lab(nodes=1, clients=1, servers=False)
    vip = XdpVip(ipaddress.IPv4Address(lab.topo.vip), HASHMODE, 1)

    def attach(mode: str) -> tuple[str | None, str, str, str]:
        def show() -> str:
            argv = ["ip", "link", "show", "lo"]
            return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

        with XdpFilter("lo", [vip]) as f:
            f.load()
            att = f.attach(mode)
            during = show()
        return att.mode, att.describe(), during, show()

    mode, text, during, after = in_netns(lab.topo.node_ns(1), lambda: attach("auto"))
    assert mode is None and "xdp" not in during
    assert text == "off: driver unknown of lo has no native XDP: auto falls back to nft alone"
    mode, text, during, after = in_netns(lab.topo.node_ns(1), lambda: attach("on"))
    assert mode == "generic" and "xdpgeneric" in during, (text, during)
    assert "xdp" not in after  # gone with the filter's close()
