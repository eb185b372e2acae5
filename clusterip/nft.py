"""The firewall boundary: one small interface, the libnftables implementation and a fake.

Every change goes in as one nft script, which libnftables sends as one batch: one atomic
transaction, all or nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

from clusterip.render import TABLE_PREFIX


class FirewallError(RuntimeError):
    """The kernel refused a transaction; nothing was changed."""


class Firewall(Protocol):
    def apply(self, script: str) -> None:
        """Run an nft script as one transaction."""

    def ruleset(self, *, counters: bool = True) -> list[dict[str, Any]]:
        """The objects of every clusterip table (nft JSON, the `nftables` array); the
        counters only if asked for."""


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

    def ruleset(self, *, counters: bool = True) -> list[dict[str, Any]]:
        """Our tables' objects, read piece by piece, each piece as cheaply as nft allows.

        nftables 1.0.6 fills its cache with the elements of every set before it lists a
        table, a chain's rules or counters: with 50,000 flows in `syns` that is 0.2-0.8 s per
        command (measured). `list chains`, or `list ruleset` in terse form (no elements),
        reads no element, nor does listing one map or one set. So tables, the ingress chain's
        comment (the VIP's settings) and counters come from those in text (the JSON of
        1.0.6 has no chain comments), the bucket map and the small sets as JSON, each command
        in a context of its own (a context's cache, once filled, is refilled in full for the
        next command). Table and chain objects are synthesized. (Table JSON is avoided anyway:
        for a table with `flags owner`, the agent's live table, nftables 1.0.6 frees the
        flags before printing them, a use-after-free seen with valgrind.)
        """
        nft = _reader(json=False)
        nft.set_terse_output(True)
        rc, out, err = nft.cmd("list ruleset" if counters else "list chains")
        if rc != 0:
            raise FirewallError(_first_error(err) or "nft list failed")
        objects: list[dict[str, Any]] = []
        for t in parse_text(out):
            family, name = t.family, t.name
            if not name.startswith(TABLE_PREFIX):
                continue
            objects.append({"table": {"family": family, "name": name}})
            note = t.comments.get("ingress")
            if family == "netdev" and note is None:  # clusterip/1: the comment is on a rule
                objects.extend(self.list_objects(f"chain netdev {name} ingress"))
            elif note is not None:
                chain = {"family": family, "table": name, "name": "ingress", "comment": note}
                objects.append({"chain": chain})
            for counter, (packets, octets) in t.counters.items():
                body = {"family": family, "table": name, "name": counter}
                objects.append({"counter": {**body, "packets": packets, "bytes": octets}})
            for what in _PIECES.get(family, ()):
                objects.extend(self.list_objects(what.format(family=family, name=name)))
        return objects

    def list_text(self, what: str) -> str:
        """`nft list WHAT` as text ("" when it is absent)."""
        rc, out, _err = _reader(json=False).cmd(f"list {what}")
        return str(out) if rc == 0 and out else ""

    def list_objects(self, what: str) -> list[dict[str, Any]]:
        """`nft -j list WHAT` as objects; none when it is absent (no port set, or the table
        vanished meanwhile)."""
        rc, out, _err = _reader(json=True).cmd(f"list {what}")
        if rc != 0 or not out:
            return []
        return [o for o in json.loads(out)["nftables"] if "metainfo" not in o]


def _reader(*, json: bool) -> Any:
    """A fresh libnftables context for one listing (its netlink socket closes with it)."""
    import nftables

    nft = nftables.Nftables()
    nft.set_json_output(json)
    nft.set_handle_output(False)
    return nft


@dataclass
class TextTable:
    family: str
    name: str
    comments: dict[str, str | None] = field(default_factory=dict)  # chain -> its comment
    counters: dict[str, tuple[int, int]] = field(default_factory=dict)  # -> (packets, bytes)


def parse_text(text: str) -> list[TextTable]:
    """Tables, their chains' comments and their named counters, from the text of
    `nft list chains` or `nft -t list ruleset` (one tab per level of nesting)."""
    out: list[TextTable] = []
    block: tuple[str, str] | None = None  # ("chain" or "counter", name) at depth 1
    for line in text.splitlines():
        depth = len(line) - len(line.lstrip("\t"))
        words = line.split()
        # An owner table's line goes on: `table inet NAME { # progname python`.
        if depth == 0 and len(words) >= 4 and words[0] == "table" and words[3] == "{":
            out.append(TextTable(words[1], words[2]))
            block = None
        elif not out or not words:
            continue
        elif depth == 1:
            block = (words[0], words[1]) if len(words) == 3 and words[2] == "{" else None
            if block is not None and block[0] == "chain":
                out[-1].comments[block[1]] = None
        elif depth == 2 and block is not None:
            kind, name = block
            if kind == "chain" and words[0] == "comment":
                value = line.strip()[len("comment") :].strip()
                if len(value) >= 2 and value[0] == value[-1] == '"':
                    out[-1].comments[name] = value[1:-1]
            elif kind == "counter" and len(words) == 4 and words[0] == "packets":
                out[-1].counters[name] = (int(words[1]), int(words[3]))
    return out


# What state.parse_tables reads besides the comment and the counters: the bucket map and the
# small sets (the live table's existence is all there is to know of it).
_PIECES = {
    "netdev": (
        "map {family} {name} buckets",
        "set {family} {name} dports",
        "set {family} {name} lease",
        "set {family} {name} kept",
    ),
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

    def ruleset(self, *, counters: bool = True) -> list[dict[str, Any]]:
        return list(self.objects)
