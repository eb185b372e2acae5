"""The shared key, its public id, and fingerprints of what every agent must agree on.

Pure: `parse_key` takes the bytes of the key file (the caller reads it).

- key id: 8 bytes of SHA-256 over the key (domain-separated), sent in every message so that a
  node with another key is told apart from a corrupted or forged message. Never the key.
- cluster fingerprint: 8 bytes of SHA-256 over a canonical JSON encoding of
  `VipConfig.cluster_fields()` without `total_nodes` (in agent mode the node count is whoever is
  alive, so it must not split the cluster), plus the bucket count and the key id. Two nodes with
  different VIP, cluster MAC, MAC mode, hashmode, seed, protocol, ports, buckets or key never
  count each other as members (`mac_mode` is in the fields only when it is not the default,
  multicast: a multicast-mode cluster's fingerprint is what it was before MAC modes).
- view digest: 8 bytes of SHA-256 over the sorted (node id, weight) pairs a node assigns buckets
  to. Equal digests mean equal assignments.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from clusterip.config import ConfigError, VipConfig

KEY_MIN_BYTES = 16
ID_BYTES = 8
AGENT_EXCLUDED_FIELDS = ("total_nodes",)
# Fields left out of the fingerprint when they have their default (see the module doc).
IMPLICIT_FIELDS = {"mac_mode": "multicast"}


def parse_key(raw: bytes) -> bytes:
    """The shared secret from a key file's bytes: any bytes, trailing whitespace ignored.

    Raises ConfigError if fewer than 16 bytes remain.
    """
    key = raw.rstrip()
    if len(key) < KEY_MIN_BYTES:
        raise ConfigError(
            f"key too short: {len(key)} bytes after stripping trailing whitespace, need at least "
            f"{KEY_MIN_BYTES} (e.g. `head -c 32 /dev/urandom > KEYFILE`)"
        )
    return key


def key_id(key: bytes) -> bytes:
    """Public 8-byte id of a key: tells keys apart without revealing them."""
    return hashlib.sha256(b"clusterip-key-id-v1\0" + key).digest()[:ID_BYTES]


def agent_fields(cfg: VipConfig) -> dict[str, Any]:
    """The cluster fields agents compare: `cluster_fields()` minus `total_nodes`."""
    fields = dict(cfg.cluster_fields())
    for name in AGENT_EXCLUDED_FIELDS:
        fields.pop(name, None)
    return fields


def canonical(fields: Mapping[str, Any]) -> bytes:
    """Canonical JSON: sorted keys, no spaces, ASCII; identical on every node."""
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def fingerprint_fields(cfg: VipConfig, *, buckets: int, key_id: bytes) -> dict[str, Any]:
    """Everything the fingerprint covers, as shown in diagnostics."""
    return {**agent_fields(cfg), "buckets": buckets, "key_id": key_id.hex()}


def fingerprint(cfg: VipConfig, *, buckets: int, key_id: bytes) -> bytes:
    """8-byte fingerprint of the agent cluster configuration (see module doc)."""
    encoded = canonical(fingerprint_fields(cfg, buckets=buckets, key_id=key_id))
    return hashlib.sha256(b"clusterip-agent-fingerprint-v1\0" + encoded).digest()[:ID_BYTES]


def view_digest(members: Mapping[int, int]) -> bytes:
    """8-byte digest of an assignment input (node id -> weight); order-independent."""
    h = hashlib.sha256(b"clusterip-view-v1\0")
    for node, weight in sorted(members.items()):
        h.update(node.to_bytes(2, "big") + weight.to_bytes(2, "big"))
    return h.digest()[:ID_BYTES]


def differences(theirs: Mapping[str, Any] | None, ours: Mapping[str, Any]) -> str:
    """Which fingerprinted settings differ, readably ("buckets 1024 (ours 4096)"); "" when the
    other side's settings are unknown."""
    if not theirs:
        return ""
    keys = sorted(set(theirs) | set(ours))

    def value(side: Mapping[str, Any], k: str) -> Any:
        return side.get(k, IMPLICIT_FIELDS.get(k))

    diffs = [f"{k} {value(theirs, k)!r} (ours {value(ours, k)!r})" for k in keys]
    diffs = [d for k, d in zip(keys, diffs, strict=True) if value(theirs, k) != value(ours, k)]
    return ", ".join(diffs)
