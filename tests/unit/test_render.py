import pytest

from clusterip import config
from clusterip.core.ownership import Ownership
from clusterip.render import (
    checked,
    render,
    render_adopt,
    render_delete,
    render_lease,
    render_update,
    table_name,
)
from tests.conftest import check_golden

CASES = {
    "all-sport": dict(protocol="all", hashmode="sourceip-sourceport"),
    "tcp-ports-dport": dict(
        protocol="tcp", dports=[80, 443], hashmode="sourceip-sourceport-destport"
    ),
    "udp-sourceip": dict(
        protocol="udp", hashmode="sourceip", clustermac="01:00:5e:00:00:20", seed="0"
    ),
}


def cfg(**kw: object) -> config.VipConfig:
    return config.build(vip="198.18.0.100", interface="eth0", total_nodes=3, local_nodes=[1], **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(CASES))
def test_render_golden(name: str) -> None:
    c = cfg(**CASES[name])
    check_golden(f"render/{name}.nft", render(c, Ownership.of(3, [1, 3], [2])))


def test_render_agent_orphaned_golden() -> None:
    """An agent's tables: its live (owner) table, the lease check, the UDP flow set."""
    c = cfg()
    own = Ownership.of(3, [1, 2], orphaned=[2])
    text = render(c, own, mode="agent", live=True, flow_timeout=300)
    check_golden("render/agent-orphaned.nft", text)
    assert text.count("flags owner") == 2  # the live table only: the others outlive the agent
    assert "@lease" in text and "@udp_seen" in text and "timeout 300s" in text


def test_transition_golden() -> None:
    """A bucket moving away (keep), one moving here (guard), with this node's flows."""
    c = cfg(protocol="tcp", dports=[80])
    own = Ownership.of(3, [1, 3], draining=[2], guarded=[3])
    mine = [("198.18.1.7", 40001, 80), ("198.18.1.2", 50000, 80)]
    check_golden("render/transition.nft", render(c, own, mine=mine))


def test_steady_state_golden() -> None:
    """Owned buckets only: one ingress hook, one hash, one map lookup; an accepted packet
    then meets the fragment and bare-SYN checks."""
    text = render(cfg(), Ownership.of(3, [1]))
    check_golden("render/steady.nft", text)
    assert "prerouting" not in text and "socket" not in text and "owner" not in text
    assert "ct " not in text and "egress" not in text and "@kept" not in text
    own = [r.strip() for r in text.split("chain own {\n")[1].split("\t}\n")[0].splitlines()]
    assert own == [
        'ip frag-off & 0x3fff != 0 meta l4proto { tcp, udp, sctp } counter name "fragments" drop',
        "tcp flags & (syn | ack) == syn update @syns { ip saddr . th sport . th dport }",
        'meta mark set 0 meta pkttype set host counter name "accepted" accept',
    ]


def test_moves_change_only_the_map_and_the_snapshot() -> None:
    c = cfg()
    steady = Ownership.of(3, [1])
    taken = steady.take(2)
    assert taken.guarded == {2}
    on = render_update(c, steady, taken, mine=[("198.18.1.1", 1000, 80)])
    assert on == (
        "flush set netdev clusterip_198_18_0_100 mine\n"
        "add element netdev clusterip_198_18_0_100 mine { 198.18.1.1 . 1000 . 80 }\n"
        "add element netdev clusterip_198_18_0_100 buckets { 2 : jump guard }\n"
    )
    settled = Ownership.of(3, [1, 2])
    off = render_update(c, taken, settled)
    assert off == (
        "delete element netdev clusterip_198_18_0_100 buckets { 2 }\n"
        "add element netdev clusterip_198_18_0_100 buckets { 2 : jump own }\n"
    )
    assert checked(taken.release(1)) == {1, 2} and checked(settled) == frozenset()


def test_fragments_are_dropped_only_where_ports_count() -> None:
    for kw, dropped in (
        ({}, True),
        ({"hashmode": "sourceip"}, False),
        ({"hashmode": "sourceip", "dports": [53]}, True),
        ({"protocol": "udp", "hashmode": "sourceip-sourceport-destport"}, True),
    ):
        text = render(cfg(**kw), Ownership.of(3, [1]))
        assert ("frag-off & 0x3fff != 0" in text) is dropped, kw


def test_agent_lease_and_adoption() -> None:
    c = cfg()
    lease = render_lease(c, 2500, "node=3 inc=17 until=1.000")
    assert lease == (
        "flush set netdev clusterip_198_18_0_100 lease\n"
        "add element netdev clusterip_198_18_0_100 lease "
        '{ 198.18.0.100 timeout 2500ms comment "node=3 inc=17 until=1.000" }\n'
    )
    assert render_lease(c, 0, "x") == "flush set netdev clusterip_198_18_0_100 lease\n"
    adopt = render_adopt(c)
    assert "flags owner" in adopt and adopt.endswith(
        "delete element netdev clusterip_198_18_0_100 lease { 198.18.0.100 }\n"
    )


def test_kept_flows_are_looked_up_only_while_there_are_any() -> None:
    c = cfg()
    none = Ownership.of(3, [1])
    some = Ownership(3, frozenset({1}), kept=frozenset({("198.18.1.1", 4000)}))
    text = render_update(c, none, some)
    assert "flush chain netdev clusterip_198_18_0_100 vip" in text
    assert "@kept drop" in text and "add element" in text
    back = render_update(c, some, none)
    assert "flush chain" in back and "@kept" not in back.split("flush chain")[1]
    more = Ownership(3, frozenset({1}), kept=frozenset({("198.18.1.1", 4000), ("198.18.1.2", 1)}))
    assert "flush chain" not in render_update(c, some, more)


def test_udp_flows_are_tracked_by_agents_only() -> None:
    for protocol, mode, tracked in (
        ("all", "agent", True),
        ("udp", "agent", True),
        ("tcp", "agent", False),
        ("all", "static", False),
    ):
        text = render(cfg(protocol=protocol), Ownership.of(3, [1]), mode=mode)
        assert ("@udp_seen" in text) is tracked, (protocol, mode)


def test_nothing_owned_drops_everything_for_the_vip() -> None:
    text = render(cfg(), Ownership.of(3))
    assert "add element" not in text
    assert 'counter name "foreign" drop' in text.split("chain vip")[1].split("chain own")[0]


def test_update_touches_only_changed_elements() -> None:
    c = cfg()
    old = Ownership.of(4096, range(1, 100), [200], [5])
    new = Ownership.of(4096, [*range(1, 99), 200, 300], [99], [300])
    text = render_update(c, old, new)
    check_golden("render/update.nft", text)
    assert render_update(c, new, new) == ""
    with pytest.raises(ValueError):
        render_update(c, old, Ownership.of(8))


def test_delete_names_only_our_tables() -> None:
    c = cfg()
    text = render_delete(c)
    assert table_name(c) == "clusterip_198_18_0_100"
    # netdev, arp, inet (live), and clusterip/1's ip table and guard tables
    assert text.count("delete table") == 6
    assert all(line.split()[3].endswith("198_18_0_100") for line in text.splitlines())


def test_seed_is_always_explicit() -> None:
    # Without `seed`, the kernel picks a random one at every load: nodes would disagree.
    text = render(cfg(seed="0"), Ownership.of(3, [1]))
    for line in text.splitlines():
        if "jhash" in line:
            assert "seed 0x00000000" in line


def test_ownership_validation() -> None:
    with pytest.raises(config.ConfigError, match="bad owned bucket 4"):
        Ownership.of(3, [4])
    with pytest.raises(config.ConfigError, match="both owned and draining"):
        Ownership.of(3, [1], [1])


def test_take_and_release() -> None:
    own = Ownership.of(3, [1])
    assert own.take(2).owned == {1, 2}
    released = own.take(2).release(1)
    assert released.owned == {2} and released.draining == {1}
    assert own.release(1, keep_flows=False).draining == frozenset()
    assert own.take(2).release(2).take(2).draining == frozenset()
    assert own.take(2).guarded == {2} and own.take(2, guard=False).guarded == frozenset()
    assert own.take(2).release(2).guarded == frozenset()
    with pytest.raises(config.ConfigError, match="guarded buckets \\[2\\] are not owned"):
        Ownership.of(3, [1], guarded=[2])
