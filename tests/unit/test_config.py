import ipaddress

import pytest

from clusterip import config
from clusterip.config import ConfigError


def base(**kw: object) -> dict[str, object]:
    d: dict[str, object] = dict(
        vip="198.18.0.100", interface="eth0", total_nodes=3, local_nodes=[1]
    )
    d.update(kw)
    return d


def test_defaults_derived_from_vip_and_identical_everywhere() -> None:
    a = config.build(**base())  # type: ignore[arg-type]
    b = config.build(**base(local_nodes=[2]))  # type: ignore[arg-type]
    assert a.clustermac == "03:bf:c6:12:00:64" == b.clustermac
    assert a.seed == b.seed
    assert a.cluster_fields() == b.cluster_fields()
    assert a.protocol == "all" and a.hashmode == "sourceip-sourceport"
    other = config.build(**base(vip="198.18.0.101"))  # type: ignore[arg-type]
    assert other.seed != a.seed and other.clustermac != a.clustermac


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        (
            dict(clustermac="02:00:00:00:00:01"),
            "bad cluster MAC '02:00:00:00:00:01': must be a multicast",
        ),
        (dict(clustermac="zz"), "bad cluster MAC 'zz'"),
        (dict(local_nodes=[4]), "bad local node '4': expected a number from 1 to 3"),
        (dict(local_nodes=[0]), "bad local node '0'"),
        (dict(total_nodes=65), "bad total nodes '65': expected a number from 1 to 64"),
        (dict(total_nodes=0), "bad total nodes '0'"),
        (dict(vip="198.18.0.300"), "bad VIP '198.18.0.300'"),
        (dict(vip="224.0.0.1"), "bad VIP '224.0.0.1': must be a unicast"),
        (dict(vip="fe80::10"), "bad VIP 'fe80::10': a link-local address"),
        (dict(vip="ff05::10"), "bad VIP 'ff05::10': a multicast address"),
        (dict(vip="::"), "bad VIP '::': must be a unicast"),
        (dict(vip="::1"), "bad VIP '::1': must be a unicast"),
        (dict(vip="::ffff:192.0.2.1"), "an IPv4-mapped address; write it as 192.0.2.1"),
        (dict(vip="2001:db8::1", clustermac="02:00:00:00:00:01"), "must be a multicast"),
        (dict(vip="2001:db8::zz"), "bad VIP '2001:db8::zz': expected an IPv4 or IPv6"),
        (dict(hashmode="random"), "bad hashmode 'random': allowed are sourceip, "),
        (dict(seed="xyz"), "bad seed 'xyz': expected 1 to 8 hex digits"),
        (dict(seed="123456789"), "bad seed '123456789'"),
        (dict(protocol="icmp"), "bad protocol 'icmp'"),
        (dict(dports=["0"]), "bad destination port '0'"),
        (dict(interface="x" * 16), "bad interface name"),
    ],
)
def test_bad_values_are_named(kw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        config.build(**base(**kw))  # type: ignore[arg-type]
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_seed_forms() -> None:
    assert config.parse_seed("0x1A2b") == 0x1A2B
    assert config.parse_seed("ffffffff") == 0xFFFFFFFF
    assert config.parse_seed(7) == 7


def test_toml_round_trip(tmp_path: object) -> None:
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "c.toml"
    cfgs = [
        config.build(**base(local_nodes=[1, 3], dports=["80,443"], protocol="tcp")),  # type: ignore[arg-type]
        config.build(**base(vip="198.18.0.101/24", hashmode="sourceip", seed="abc")),  # type: ignore[arg-type]
    ]
    p.write_text(config.dump_toml(cfgs))
    back = config.load_toml(str(p))
    assert back == cfgs
    assert back[1].prefixlen == 24 and back[1].vip == ipaddress.IPv4Address("198.18.0.101")


def test_toml_errors(tmp_path: object) -> None:
    import pathlib

    p = pathlib.Path(str(tmp_path)) / "c.toml"
    p.write_text('[[vip]]\nvip = "198.18.0.1"\ninterface = "eth0"\ntotal_nodes = 2\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown key 'bogus'"):
        config.load_toml(str(p))
    p.write_text("[[vip]\n")
    with pytest.raises(ConfigError, match="bad config file"):
        config.load_toml(str(p))
    with pytest.raises(ConfigError, match="cannot read config file"):
        config.load_toml(str(p) + ".missing")
    p.write_text('[[vip]]\nvip = "198.18.0.1"\ninterface = "eth0"\ntotal_nodes = 2\n' * 2)
    with pytest.raises(ConfigError, match="appears twice"):
        config.load_toml(str(p))
