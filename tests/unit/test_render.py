import pytest

from clusterip import config
from clusterip.render import Ownership, render, render_delete, render_update, table_name
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
    assert text.count("delete table") == 2
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
