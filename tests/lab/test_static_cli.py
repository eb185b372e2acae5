"""`clusterip up/down/status/take/release` against the real kernel in a private namespace."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

VIP = "198.18.0.100"


class Ns:
    def __init__(self, name: str) -> None:
        self.name = name

    def sh(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.name, *argv], capture_output=True, text=True, check=check
        )

    def cip(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.sh(sys.executable, "-m", "clusterip", *argv, check=False)

    def snapshot(self) -> tuple[str, str, str]:
        return (
            self.sh("nft", "list", "ruleset").stdout,
            self.sh("ip", "-o", "-4", "addr", "show").stdout,
            self.sh("cat", "/proc/net/dev_mcast").stdout,
        )


@pytest.fixture
def ns() -> Iterator[Ns]:
    name = f"cipt-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        n = Ns(name)
        n.sh("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1")
        n.sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
        n.sh("ip", "link", "set", "eth0", "up")
        n.sh("ip", "link", "set", "eth1", "up")
        n.sh("ip", "addr", "add", "198.18.0.1/16", "dev", "eth0")
        yield n
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


UP = ["up", "--vip", VIP, "--interface", "eth0", "--total-nodes", "3", "--local-node", "1"]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--clustermac", "02:00:00:00:00:01"], "02:00:00:00:00:01"),
        (["--local-node", "4"], "'4'"),
        (["--total-nodes", "65"], "'65'"),
        (["--vip", "198.18.0.256"], "198.18.0.256"),
        (["--interface", "nosuch0"], "nosuch0"),
        (["--hashmode", "sourceport"], "sourceport"),
        (["--seed", "0xnothex"], "0xnothex"),
        (["--protocol", "icmp"], "icmp"),
        (["--dport", "99999"], "99999"),
        (["--mac-mode", "anycast"], "anycast"),
        (["--mac-mode", "unicast", "--clustermac", "03:bf:00:00:00:01"], "03:bf:00:00:00:01"),
    ],
)
def test_bad_input_one_line_exit_2_no_change(ns: Ns, args: list[str], named: str) -> None:
    before = ns.snapshot()
    argv = list(UP)
    for i in range(0, len(args), 2):  # override the flag if UP has it, else append
        flag, value = args[i], args[i + 1]
        if (flag in argv and flag != "--local-node") or flag == "--local-node":
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    res = ns.cip(*argv)
    assert res.returncode == 2, res
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert named in lines[0]
    assert any(w in lines[0] for w in ("expected", "allowed", "must be", "no interface"))
    assert ns.snapshot() == before


def test_bad_take_release_change_nothing(ns: Ns) -> None:
    assert ns.cip(*UP).returncode == 0
    before = ns.snapshot()
    for argv in (
        ["take", "7", "--vip", VIP],
        ["release", "x", "--vip", VIP],
        ["take", "1", "--vip", "198.18.0.99"],
    ):
        res = ns.cip(*argv)
        assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1, res
    # Counters may move; rules, addresses and MAC list may not.
    assert ns.snapshot()[1:] == before[1:]
    assert _status(ns)["owned"] == [1]


def _status(ns: Ns) -> dict[str, object]:
    res = ns.cip("status", "--json")
    assert res.returncode == 0, res
    vips = json.loads(res.stdout)["vips"]
    assert len(vips) == 1
    return vips[0]  # type: ignore[no-any-return]


def test_up_twice_one_copy_and_down_leaves_no_trace(ns: Ns) -> None:
    clean = ns.snapshot()
    assert ns.cip(*UP).returncode == 0
    once = ns.snapshot()
    res = ns.cip(*UP)
    assert res.returncode == 0, res
    assert ns.snapshot()[1:] == once[1:]
    assert ns.sh("nft", "list", "tables").stdout.count("clusterip_198_18_0_100") == 2
    assert ns.sh("ip", "-o", "addr", "show", "dev", "eth0").stdout.count(VIP) == 1
    mc = [line.split() for line in once[2].splitlines() if "03bfc6120064" in line]
    assert len(mc) == 1 and mc[0][1] == "eth0" and mc[0][2] == "1", once[2]
    st = _status(ns)
    assert st["interface"] == "eth0" and st["clustermac"] == "03:bf:c6:12:00:64"
    assert st["hashmode"] == "sourceip-sourceport" and st["total_nodes"] == 3
    assert st["owned"] == [1]
    res = ns.cip("down", "--vip", VIP)
    assert res.returncode == 0, res
    assert ns.snapshot() == clean


def test_down_keeps_an_address_it_did_not_add(ns: Ns) -> None:
    ns.sh("ip", "addr", "add", f"{VIP}/32", "dev", "eth0")
    with_vip = ns.snapshot()
    assert ns.cip(*UP).returncode == 0
    assert ns.cip("down").returncode == 0
    assert ns.snapshot() == with_vip


def test_take_release_status(ns: Ns) -> None:
    assert ns.cip(*UP).returncode == 0
    assert ns.cip("take", "3", "--vip", VIP).returncode == 0
    assert _status(ns)["owned"] == [1, 3]
    res = ns.cip("release", "1", "--vip", VIP)
    assert res.returncode == 0, res
    st = _status(ns)
    assert st["owned"] == [3] and st["draining"] == [1]
    assert ns.cip("take", "1", "--vip", VIP).returncode == 0
    st = _status(ns)
    assert st["owned"] == [1, 3] and st["draining"] == []
    assert ns.cip("release", "3", "--now", "--vip", VIP).returncode == 0
    st = _status(ns)
    assert st["owned"] == [1] and st["draining"] == []
    human = ns.cip("status")
    assert "node(s) 1 of 3" in human.stdout


def test_config_file_several_vips(ns: Ns, tmp_path: object) -> None:
    import pathlib

    path = pathlib.Path(str(tmp_path)) / "c.toml"
    path.write_text(
        "[[vip]]\n"
        f'vip = "{VIP}"\ninterface = "eth0"\ntotal_nodes = 2\nlocal_node = 1\nprotocol = "tcp"\n'
        "dport = [80, 443]\n"
        "[[vip]]\n"
        'vip = "198.18.0.101"\ninterface = "eth0"\ntotal_nodes = 4\nlocal_node = [2, 4]\n'
        'hashmode = "sourceip"\nseed = "0xdeadbeef"\n'
    )
    clean = ns.snapshot()
    res = ns.cip("up", "-c", str(path))
    assert res.returncode == 0, res
    vips = json.loads(ns.cip("status", "--json").stdout)["vips"]
    assert [(v["vip"], v["owned"], v["dports"]) for v in vips] == [
        (VIP, [1], [80, 443]),
        ("198.18.0.101", [2, 4], []),
    ]
    assert vips[1]["seed"] == "0xdeadbeef"
    assert ns.cip("down", "-c", str(path)).returncode == 0
    assert ns.snapshot() == clean
