"""Pure parts of the operator's aids: the address warnings, the status page's event history,
its HTML (the document inside it), the bind address default, and the XDP metrics."""

from __future__ import annotations

import ipaddress
import json

from clusterip.addrcheck import address_warning
from clusterip.core.events import OwnershipChanged, PeerDown, PeerUp
from clusterip.reactor.metrics import Metrics
from clusterip.reactor.web import History, parse_bind, render_page

VIP = ipaddress.IPv4Address("192.0.2.10")


def ifs(*texts: str) -> list[ipaddress.IPv4Interface]:
    return [ipaddress.IPv4Interface(t) for t in texts]


def test_vip_inside_a_subnet_is_fine() -> None:
    assert address_warning(VIP, "eth0", ifs("192.0.2.1/24")) is None
    assert address_warning(VIP, "eth0", ifs("10.0.0.1/8", "192.0.2.1/24", "192.0.2.10/32")) is None


def test_vip_outside_every_subnet_is_one_line() -> None:
    line = address_warning(VIP, "eth0", ifs("10.0.0.1/24", "192.0.2.10/32"))
    assert line == (
        "warning: VIP 192.0.2.10 is outside every subnet of eth0 (10.0.0.1/24): clients reach "
        "it only through a route to this segment"
    )


def test_no_ipv4_address_but_the_vip_is_one_line() -> None:
    for addrs in ([], ifs("192.0.2.10/32")):
        line = address_warning(VIP, "eth1", addrs)
        assert line is not None and "\n" not in line
        assert line.startswith("warning: interface eth1 has no IPv4 address of its own")


def test_ipv6_vip_is_checked_against_ipv6_addresses_only() -> None:
    vip6 = ipaddress.IPv6Address("2001:db8::10")
    v6 = [ipaddress.IPv6Interface("2001:db8::1/64")]
    link_local = [ipaddress.IPv6Interface("fe80::1/64")]
    assert address_warning(vip6, "eth0", [*ifs("192.0.2.1/24"), *v6]) is None
    line = address_warning(vip6, "eth0", [*ifs("192.0.2.1/24"), *link_local])
    assert line is not None and "no IPv6 address of its own" in line
    line = address_warning(vip6, "eth0", [ipaddress.IPv6Interface("2001:db8:1::1/64")])
    assert line is not None and "outside every subnet of eth0 (2001:db8:1::1/64)" in line


def test_history_keeps_the_newest_events_with_times() -> None:
    now = iter(range(1000, 2000))
    h = History(size=3, clock=lambda: float(next(now)))
    h.add("v", PeerUp(2, 7, "192.0.2.2"))
    h.add("v", PeerDown(2, 7, "timeout"))
    h.add("v", OwnershipChanged(frozenset({1, 2}), {2: 2}, frozenset({2}), {}))
    h.add("v", PeerUp(3, 8, "192.0.2.3"))
    rows = h.recent()
    assert [r["kind"] for r in rows] == ["join", "move", "death"]  # newest first, 3 kept
    assert rows[2] == {"t": 1001.0, "vip": "v", "kind": "death", "node": 2,
                       "text": "node 2 down (timeout)"}  # fmt: skip
    assert rows[1]["text"] == "2 buckets here (+1, 1 from dead nodes, -0)"


def test_page_embeds_the_document_safely_and_loads_nothing_from_outside() -> None:
    doc = {"agent": {"node_id": 1}, "vips": [], "events": [{"text": "</script><b>x"}]}
    page = render_page(doc).decode()
    assert "/*INITIAL*/null" not in page and "</script><b>" not in page
    start = page.index("let doc = ") + len("let doc = ")
    embedded = json.loads(page[start : page.index(";\n", start)])
    assert embedded == doc
    for outside in ("http://", "https://", "src=", "@import"):
        assert outside not in page


def test_bind_defaults_to_localhost() -> None:
    assert parse_bind("9473") == ("127.0.0.1", 9473)
    assert parse_bind(":9473") == ("127.0.0.1", 9473)
    assert parse_bind("0.0.0.0:9473") == ("0.0.0.0", 9473)


def test_xdp_counters_in_the_metrics() -> None:
    from prometheus_client import generate_latest

    m = Metrics()
    m.set_xdp("192.0.2.10", {"dropped": 5, "owned": 7})
    text = generate_latest(m.registry).decode()
    assert 'clusterip_xdp_packets_total{verdict="dropped",vip="192.0.2.10"} 5.0' in text
    m.set_xdp("192.0.2.10", None)
    assert "clusterip_xdp_packets_total{" not in generate_latest(m.registry).decode()
