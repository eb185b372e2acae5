"""Lab topology (pure), the probe's pure parts, and the build/teardown bookkeeping of
`clusterip.lab.net.Lab` against the in-memory NetOps fake. No root needed."""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from clusterip.cli.lab import lab as lab_cli
from clusterip.config import ConfigError
from clusterip.lab.net import Lab, LabError, MemoryNetOps, NoSuchLab, StateStore
from clusterip.lab.probe import (
    ProbeRecord,
    ProbeResult,
    ProbeSpec,
    classify,
    format_sources,
    http_node,
    parse_sources,
)
from clusterip.lab.topo import LAB_NET, LabTopo

# --- topology ------------------------------------------------------------------------------------


def test_namespace_and_port_names() -> None:
    t = LabTopo("cip", 3, 10)
    assert t.namespaces == ("cip-sw", "cip-n1", "cip-n2", "cip-n3", "cip-c")
    assert t.switch_ns == "cip-sw" and t.client_ns == "cip-c"
    assert [t.node_ns(k) for k in t.node_indexes] == ["cip-n1", "cip-n2", "cip-n3"]
    assert t.ports() == (("n1", "cip-n1"), ("n2", "cip-n2"), ("n3", "cip-n3"), ("c", "cip-c"))
    assert t.bridge == "br0" and t.interface == "eth0"
    assert t.hosts() == {
        "n1": "cip-n1",
        "n2": "cip-n2",
        "n3": "cip-n3",
        "client": "cip-c",
        "switch": "cip-sw",
    }


def test_node_addresses_and_macs() -> None:
    t = LabTopo("x", 64, 1)
    assert t.node_addr(1) == "198.18.0.1"
    assert t.node_addr(64) == "198.18.0.64"
    assert t.prefixlen == 16
    assert t.node_mac(10) == "02:c1:00:00:00:0a"
    macs = {t.host_mac(ns) for ns in t.host_namespaces}
    assert len(macs) == 65
    assert all(not int(m[:2], 16) & 1 for m in macs)  # all unicast


@pytest.mark.parametrize(
    ("clients", "last", "subnets"),
    [
        (1, "198.18.1.1", 1),
        (254, "198.18.1.254", 1),
        (255, "198.18.2.1", 2),
        (1000, "198.18.4.238", 4),
    ],
)
def test_client_addresses(clients: int, last: str, subnets: int) -> None:
    t = LabTopo("x", 2, clients)
    addrs = t.client_addrs()
    assert len(addrs) == clients == len(set(addrs))
    assert addrs[0] == "198.18.1.1" and addrs[-1] == last
    for a in addrs:
        ip = ipaddress.IPv4Address(a)
        assert ip in LAB_NET and a.rsplit(".", 1)[1] not in ("0", "255")
        assert any(ip in ipaddress.IPv4Network(n) for n in t.client_subnets())
    assert len(t.client_subnets()) == subnets
    special = {t.vip, t.gateway, *t.node_addrs()}
    assert not special & set(addrs)
    assert t.host_addrs(t.client_ns) == (t.gateway, *addrs)
    assert parse_sources(t.client_range()) == addrs


@pytest.mark.parametrize("name", ["", "ABC", "abcdefghi", "a-b", "a b", "ü"])
def test_bad_lab_name(name: str) -> None:
    with pytest.raises(ConfigError, match=r"bad lab name.*a-z"):
        LabTopo(name, 2, 1)


@pytest.mark.parametrize(
    ("nodes", "clients", "what"),
    [
        (0, 1, "nodes"),
        (65, 1, "nodes"),
        (True, 1, "nodes"),
        (2, 0, "clients"),
        (2, 1001, "clients"),
    ],
)
def test_bad_counts(nodes: Any, clients: Any, what: str) -> None:
    with pytest.raises(ConfigError) as err:
        LabTopo("x", nodes, clients)
    bad = nodes if what == "nodes" else clients
    assert f"bad number of {what} {bad!r}" in str(err.value)
    assert "from 1 to" in str(err.value)


def test_bad_node_and_host() -> None:
    t = LabTopo("x", 2, 1)
    for k in (0, 3):
        with pytest.raises(ConfigError, match=f"bad node {k}.*1 to 2"):
            t.node_ns(k)
    with pytest.raises(ConfigError, match=r"bad host 'n3'.*n1\.\.n2, client, switch"):
        t.host_ns("n3")
    assert t.host_ns("client") == "x-c"


def test_vip_config_uses_the_shared_type() -> None:
    cfg = LabTopo("x", 3, 1).vip_config([2], hashmode="sourceip")
    assert str(cfg.vip) == "198.18.0.100" and cfg.interface == "eth0"
    assert cfg.total_nodes == 3 and cfg.local_nodes == (2,) and cfg.hashmode == "sourceip"
    with pytest.raises(ConfigError, match=r"stays inside 198\.18\.0\.0/16"):
        LabTopo("x", 3, 1).vip_config(vip="192.0.2.1")


# --- probe: pure parts ---------------------------------------------------------------------------


def test_parse_and_format_sources() -> None:
    got = parse_sources("198.18.1.254-198.18.2.1, 198.18.9.9")
    assert got == ("198.18.1.254", "198.18.1.255", "198.18.2.0", "198.18.2.1", "198.18.9.9")
    assert format_sources(got) == "198.18.1.254-198.18.2.1,198.18.9.9"
    assert parse_sources(format_sources(got)) == got


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("10.0.0.1", "stays inside 198.18.0.0/16"),
        ("198.18.1.9-198.18.1.1", "first address must come first"),
        ("nonsense", "bad source address 'nonsense'"),
        ("", "bad sources"),
        ("198.18.0.0-198.18.255.255,198.18.0.1", "more than 65536"),
    ],
)
def test_bad_sources(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_sources(text)


def test_probe_spec_defaults_and_args() -> None:
    spec = ProbeSpec.make(vip="198.18.0.100", proto="udp", sources=["198.18.1.1", "198.18.1.2"])
    assert spec.port == 5300 and spec.per_source == 1
    assert spec.deadline == pytest.approx(3.0)  # 1 round of 1 s timeouts + 2 s
    args = spec.to_args()
    assert args[args.index("--sources") + 1] == "198.18.1.1-198.18.1.2"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"proto": "sctp"}, "bad protocol 'sctp'"),
        ({"port": 0}, "bad port"),
        ({"per_source": 0}, "bad requests per source 0"),
        ({"concurrency": 5000}, "bad concurrency 5000"),
        ({"timeout": 0.0}, "bad timeout"),
        ({"deadline": 1e6}, "bad deadline"),
        ({"vip": "8.8.8.8"}, "bad VIP '8.8.8.8'"),
    ],
)
def test_bad_probe_spec(kwargs: dict[str, Any], match: str) -> None:
    base: dict[str, Any] = {"vip": "198.18.0.100", "sources": "198.18.1.1"}
    with pytest.raises(ConfigError, match=match):
        ProbeSpec.make(**{**base, **kwargs})


def test_http_node() -> None:
    ok = b"HTTP/1.1 200 OK\r\nX-Node: n2\r\nContent-Length: 3\r\n\r\nn2\n"
    assert http_node(ok[:20]) is None
    assert http_node(ok[:-1]) is None  # body incomplete
    assert http_node(ok) == "n2"
    assert http_node(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nn7\n") == "n7"
    with pytest.raises(ValueError, match="503"):
        http_node(b"HTTP/1.1 503 Busy\r\n\r\n")


def test_classify() -> None:
    assert classify(TimeoutError()) == "timeout"
    assert classify(ConnectionRefusedError()) == "refused"
    assert classify(ConnectionResetError()) == "reset"
    assert classify(EOFError()) == "closed"
    assert classify(OSError(113, "No route")) == "unreachable"
    assert classify(OSError(99, "x")) == "EADDRNOTAVAIL"


def test_probe_result_roundtrip() -> None:
    result = ProbeResult(
        (
            ProbeRecord("198.18.1.1", 4000, 80, "n1", None),
            ProbeRecord("198.18.1.1", 4001, 80, "n2", None),
            ProbeRecord("198.18.1.2", 4002, 80, None, "timeout"),
        ),
        1.5,
    )
    data = json.loads(result.to_json())
    assert data["by_node"] == {"n1": 1, "n2": 1} and data["errors"] == 1
    assert ProbeResult.from_json(result.to_json()) == result
    assert result.nodes_by_source() == {"198.18.1.1": {"n1", "n2"}}


# --- build bookkeeping against the in-memory fake ------------------------------------------------


def test_build_and_teardown_with_fake(tmp_path: Path) -> None:
    ops = MemoryNetOps()
    ops.create_ns("other")  # not the lab's: must survive
    topo = LabTopo("f1", 2, 300)
    lab = Lab.build(topo, servers=False, state_dir=str(tmp_path), ops=ops)
    state = json.loads((tmp_path / "lab-f1.json").read_text())
    assert [r["name"] for r in state["namespaces"]] == list(topo.namespaces)
    assert all(r["ino"] == ops.namespaces[r["name"]] for r in state["namespaces"])
    sw = ops.links["f1-sw"]
    assert sw["br0"]["kind"] == "bridge"
    assert {p for p, v in sw.items() if v.get("master") == "br0"} == {"n1", "n2", "c"}
    n2 = ops.links["f1-n2"]["eth0"]
    assert n2["addrs"] == ["198.18.0.2/16"] and n2["mac"] == "02:c1:00:00:00:02"
    assert n2["routes"] == [("198.18.1.0/24", "198.18.0.254"), ("198.18.2.0/24", "198.18.0.254")]
    client = ops.links["f1-c"]["eth0"]
    assert client["addrs"][0] == "198.18.0.254/16" and len(client["addrs"]) == 301
    assert ops.sysctl_values["f1-c"]["net.ipv4.conf.all.arp_announce"] == "2"
    assert ops.sysctl_values["f1-sw"]["net.bridge.bridge-nf-call-iptables"] == "0"
    assert all(
        ops.sysctl_values[ns]["net.ipv6.conf.all.disable_ipv6"] == "1" for ns in topo.namespaces
    )

    again = Lab.load("f1", state_dir=str(tmp_path), ops=ops)
    assert again.topo == topo
    again.teardown()
    assert ops.list_ns() == {"other"}
    assert not (tmp_path / "lab-f1.json").exists()
    lab.teardown()  # idempotent
    with pytest.raises(NoSuchLab, match="no lab 'f1'"):
        Lab.load("f1", state_dir=str(tmp_path), ops=ops)


class _FailClient(MemoryNetOps):
    def setup_host(self, ns: str, *args: Any, **kwargs: Any) -> None:
        if ns.endswith("-c"):
            raise RuntimeError("injected failure")
        super().setup_host(ns, *args, **kwargs)


def test_failed_build_removes_what_it_made(tmp_path: Path) -> None:
    ops = _FailClient()
    ops.create_ns("f2-x")  # same prefix, not the lab's
    with pytest.raises(RuntimeError, match="injected"):
        Lab.build(LabTopo("f2", 3, 1), servers=False, state_dir=str(tmp_path), ops=ops)
    assert ("setup_host", "f2-n3") in ops.calls  # it did get halfway
    assert ops.list_ns() == {"f2-x"}
    assert os.listdir(tmp_path) == []


class _RacedNamespace(MemoryNetOps):
    """Someone else creates f6-n1 between the build's check and its create."""

    def list_ns(self) -> set[str]:
        return super().list_ns() - {"f6-n1"}


def test_namespace_created_by_someone_else_meanwhile_is_left_alone(tmp_path: Path) -> None:
    ops = _RacedNamespace()
    ops.create_ns("f6-n1")
    with pytest.raises(FileExistsError):
        Lab.build(LabTopo("f6", 2, 1), servers=False, state_dir=str(tmp_path), ops=ops)
    assert set(ops.namespaces) == {"f6-n1"}
    assert ops.namespaces["f6-n1"] == 1  # the original one, never removed
    assert os.listdir(tmp_path) == []


def test_refuses_existing_state_or_namespace(tmp_path: Path) -> None:
    ops = MemoryNetOps()
    ops.create_ns("f3-n2")
    with pytest.raises(LabError, match="f3-n2 exist"):
        Lab.build(LabTopo("f3", 2, 1), servers=False, state_dir=str(tmp_path), ops=ops)
    assert ops.list_ns() == {"f3-n2"} and os.listdir(tmp_path) == []
    StateStore("f4", str(tmp_path)).create({"topo": {}})
    with pytest.raises(LabError, match="already exists"):
        Lab.build(LabTopo("f4", 2, 1), servers=False, state_dir=str(tmp_path), ops=ops)


def test_teardown_skips_namespace_replaced_since(tmp_path: Path) -> None:
    ops = MemoryNetOps()
    Lab.build(LabTopo("f5", 1, 1), servers=False, state_dir=str(tmp_path), ops=ops)
    ops.remove_ns("f5-n1")
    ops.create_ns("f5-n1")  # someone else's namespace, same name, new inode
    Lab.load("f5", state_dir=str(tmp_path), ops=ops).teardown()
    assert ops.list_ns() == {"f5-n1"}


# --- CLI input errors (no lab needed) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["up", "--nodes", "0"], "bad number of nodes 0"),
        (["up", "--nodes", "2", "--clients", "5000"], "bad number of clients 5000"),
        (["up", "--nodes", "2", "--name", "Bad"], "bad lab name 'Bad'"),
        (["down", "--name", "a_b"], "bad lab name 'a_b'"),
    ],
)
def test_cli_bad_input(args: list[str], match: str) -> None:
    result = CliRunner().invoke(lab_cli, args)
    assert result.exit_code == 2
    assert match in result.output
