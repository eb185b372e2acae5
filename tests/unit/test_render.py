import pytest

from clusterip import config
from clusterip.core.ownership import Ownership
from clusterip.render import render, render_delete, render_update, table_name
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


def test_render_agent_owner_orphaned_golden() -> None:
    c = cfg()
    own = Ownership.of(3, [1, 2], orphaned=[2])
    check_golden("render/agent-orphaned.nft", render(c, own, mode="agent", owner=True))


def test_steady_state_golden() -> None:
    """Owned buckets only: one ingress hook, no ip table (no socket check, no conntrack)."""
    text = render(cfg(), Ownership.of(3, [1]))
    check_golden("render/steady.nft", text)
    assert "delete table ip" in text and "prerouting" not in text
    assert "ct " not in text and "egress" not in text and "@kept" not in text


def test_transitions_switch_the_socket_check_on_and_off() -> None:
    c = cfg()
    steady = Ownership.of(3, [1])
    taken = steady.take(2)
    assert taken.guarded == {2} and taken.in_transition
    on = render_update(c, steady, taken)
    assert on.startswith("add table ip ") and "socket wildcard" in on
    assert "2 : jump guard" in on
    settled = Ownership.of(3, [1, 2])
    off = render_update(c, taken, settled)
    assert off.endswith("delete table ip clusterip_198_18_0_100\n")
    assert "2 : jump own" in off
    assert "table ip" not in render_update(c, taken, taken.release(1))  # still in transition


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
    assert text.count("delete table") == 3  # netdev, arp, ip
    assert all(table_name(c) in line for line in text.splitlines())


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
