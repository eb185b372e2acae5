"""The firewall boundary: one small interface, the libnftables implementation and a fake.

Every change goes in as one nft script, which libnftables sends as one batch: one atomic
transaction, all or nothing.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from clusterip.render import TABLE_PREFIX


class FirewallError(RuntimeError):
    """The kernel refused a transaction; nothing was changed."""


class Firewall(Protocol):
    def apply(self, script: str) -> None:
        """Run an nft script as one transaction."""

    def ruleset(self) -> list[dict[str, Any]]:
        """The objects of every clusterip table (nft JSON, the `nftables` array)."""


class NftFirewall:
    """libnftables in the current network namespace.

    The netlink socket lives as long as this object: tables created with `flags owner` through
    it vanish when it is closed or the process dies (see the field notes).
    """

    def __init__(self) -> None:
        self._nft: Any = None

    def _ctx(self) -> Any:
        if self._nft is None:
            import nftables

            nft = nftables.Nftables()
            nft.set_json_output(True)
            nft.set_handle_output(False)
            self._nft = nft
        return self._nft

    def apply(self, script: str) -> None:
        rc, _out, err = self._ctx().cmd(script)
        if rc != 0:
            raise FirewallError(_first_error(err) or f"nft failed with status {rc}")

    def ruleset(self) -> list[dict[str, Any]]:
        """Our tables' objects, read piece by piece.

        nftables 1.0.6 frees a table's flags before its JSON is printed (a use-after-free that
        corrupts the heap, seen with valgrind) when the table has `flags owner`: the agent's
        live table. So tables are enumerated in text form and only their chains, counters and sets
        are read as JSON; the table objects are synthesized without flags.
        """
        nft = self._ctx()
        nft.set_json_output(False)
        try:
            rc, out, err = nft.cmd("list tables")
        finally:
            nft.set_json_output(True)
        if rc != 0:
            raise FirewallError(_first_error(err) or "nft list tables failed")
        objects: list[dict[str, Any]] = []
        for line in out.splitlines():
            words = line.split()
            if len(words) != 3 or words[0] != "table" or not words[2].startswith(TABLE_PREFIX):
                continue
            family, name = words[1], words[2]
            objects.append({"table": {"family": family, "name": name}})
            for what in _PIECES.get(family, ()):
                objects.extend(self.list_objects(what.format(family=family, name=name)))
        return objects

    def list_objects(self, what: str) -> list[dict[str, Any]]:
        """`nft -j list WHAT` as objects; none when it is absent (no port set, or the table
        vanished meanwhile)."""
        rc, out, _err = self._ctx().cmd(f"list {what}")
        if rc != 0 or not out:
            return []
        return [o for o in json.loads(out)["nftables"] if "metainfo" not in o]


# What state.parse_tables reads: the comment, the bucket map, counters, the port set.
_PIECES = {
    "netdev": (
        "chain {family} {name} ingress",
        "map {family} {name} buckets",
        "counters table {family} {name}",
        "set {family} {name} dports",
        "set {family} {name} lease",
        "set {family} {name} kept",
    ),
    "arp": ("counters table {family} {name}",),
    # The agent's live table (owner-flagged: never listed as JSON, see ruleset()): that it
    # exists is all there is to know.
    "inet": (),
}


def _first_error(err: str) -> str:
    for line in (err or "").splitlines():
        if line.startswith("Error:") or "Error:" in line:
            return line.strip()
    return (err or "").strip().splitlines()[0] if (err or "").strip() else ""


class RecordingFirewall:
    """In-memory fake: records scripts, serves a canned ruleset (for unit tests).

    `fail_with` makes every transaction fail; `refuse` maps a piece of script to the error of
    the transactions that contain it (e.g. deleting a lease the kernel has expired).
    """

    def __init__(self, objects: list[dict[str, Any]] | None = None) -> None:
        self.scripts: list[str] = []
        self.objects = list(objects or [])
        self.fail_with: str | None = None
        self.refuse: dict[str, str] = {}

    def apply(self, script: str) -> None:
        if self.fail_with:
            raise FirewallError(self.fail_with)
        for piece, error in self.refuse.items():
            if piece in script:
                raise FirewallError(error)
        self.scripts.append(script)

    def ruleset(self) -> list[dict[str, Any]]:
        return list(self.objects)
