"""Key parsing, key id, cluster fingerprint, view digest, readable differences."""

from __future__ import annotations

import dataclasses
import json

import pytest

from clusterip import config
from clusterip.config import ConfigError
from clusterip.core.fingerprint import (
    agent_fields,
    canonical,
    differences,
    fingerprint,
    fingerprint_fields,
    key_id,
    parse_key,
    view_digest,
)
from tests.conftest import check_golden

KEY = b"clusterip-test-key-0123456789abcdef"


def cfg(**over: object) -> config.VipConfig:
    args: dict[str, object] = {"vip": "192.0.2.10", "interface": "eth0", "total_nodes": 3}
    args.update(over)
    return config.build(**args)  # type: ignore[arg-type]


def test_key_trailing_whitespace_ignored_any_bytes_allowed() -> None:
    assert parse_key(b"\x00\xff" * 8 + b" \n\t\r\n") == b"\x00\xff" * 8
    assert parse_key(b"  leading spaces stay!") == b"  leading spaces stay!"


def test_key_too_short() -> None:
    with pytest.raises(ConfigError, match="15 bytes"):
        parse_key(b"x" * 15 + b"\n\n")
    assert parse_key(b"x" * 16) == b"x" * 16


def test_key_id_is_short_stable_and_reveals_nothing_obvious() -> None:
    kid = key_id(KEY)
    assert len(kid) == 8
    assert kid == key_id(bytes(KEY))
    assert kid != key_id(KEY + b"!")
    assert kid not in KEY and KEY[:8] != kid


def test_agent_fields_drop_total_nodes_only() -> None:
    c = cfg()
    fields = agent_fields(c)
    assert "total_nodes" not in fields
    assert set(fields) == set(c.cluster_fields()) - {"total_nodes"}


def test_fingerprint_ignores_node_count_interface_and_local_nodes() -> None:
    kid = key_id(KEY)
    base = fingerprint(cfg(), buckets=4096, key_id=kid)
    assert len(base) == 8
    assert fingerprint(cfg(total_nodes=7), buckets=4096, key_id=kid) == base
    assert fingerprint(cfg(interface="ens3"), buckets=4096, key_id=kid) == base
    assert fingerprint(cfg(local_nodes=[2]), buckets=4096, key_id=kid) == base


@pytest.mark.parametrize(
    "change",
    [
        {"vip": "192.0.2.11"},
        {"clustermac": "03:bf:00:00:00:01"},
        {"hashmode": "sourceip"},
        {"seed": "0x1234"},
        {"protocol": "tcp"},
        {"dports": [80]},
    ],
)
def test_fingerprint_covers_every_cluster_field(change: dict[str, object]) -> None:
    kid = key_id(KEY)
    assert fingerprint(cfg(**change), buckets=4096, key_id=kid) != fingerprint(
        cfg(), buckets=4096, key_id=kid
    )


def test_fingerprint_covers_buckets_and_key() -> None:
    kid = key_id(KEY)
    base = fingerprint(cfg(), buckets=4096, key_id=kid)
    assert fingerprint(cfg(), buckets=2048, key_id=kid) != base
    assert fingerprint(cfg(), buckets=4096, key_id=key_id(b"another-key-16-bytes")) != base


def test_canonical_encoding_is_order_independent_json() -> None:
    assert canonical({"b": 1, "a": [2, 3]}) == b'{"a":[2,3],"b":1}'
    fields = fingerprint_fields(cfg(), buckets=4096, key_id=key_id(KEY))
    assert json.loads(canonical(fields)) == fields


def test_fingerprint_golden() -> None:
    """The fingerprint is a wire contract: nodes of different versions must agree on it."""
    c = cfg()
    c = dataclasses.replace(c, seed=0x1A2B3C4D)
    kid = key_id(KEY)
    text = (
        canonical(fingerprint_fields(c, buckets=4096, key_id=kid)).decode()
        + "\n"
        + fingerprint(c, buckets=4096, key_id=kid).hex()
        + "\n"
    )
    check_golden("wire/fingerprint.txt", text)


def test_view_digest_depends_on_members_and_weights_not_order() -> None:
    assert view_digest({1: 1, 2: 1}) == view_digest({2: 1, 1: 1})
    assert view_digest({1: 1, 2: 1}) != view_digest({1: 1, 2: 2})
    assert view_digest({1: 1, 2: 1}) != view_digest({1: 1, 3: 1})
    assert view_digest({}) != view_digest({1: 1})


def test_differences_name_each_differing_setting_with_both_values() -> None:
    kid = key_id(KEY)
    ours = fingerprint_fields(cfg(), buckets=4096, key_id=kid)
    theirs = fingerprint_fields(cfg(seed="0x1234"), buckets=1024, key_id=kid)
    text = differences(theirs, ours)
    assert text.startswith("buckets 1024 (ours 4096), seed ")
    assert [part.split()[0] for part in text.split(", ")] == ["buckets", "seed"]
    assert "hashmode" not in text and "key_id" not in text  # equal settings are not listed


def test_differences_of_equal_or_unknown_settings_are_empty() -> None:
    ours = fingerprint_fields(cfg(), buckets=4096, key_id=key_id(KEY))
    assert differences(dict(ours), ours) == ""
    assert differences(None, ours) == "" and differences({}, ours) == ""


def test_differences_cover_a_setting_only_one_side_has() -> None:
    assert differences({"a": 1, "new": True}, {"a": 1}) == "new True (ours None)"
    assert differences({"a": 1}, {"a": 1, "gone": 2}) == "gone None (ours 2)"
