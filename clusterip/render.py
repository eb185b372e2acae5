"""Render the nftables ruleset of one VIP: a pure function of (config, ownership).

Two tables per VIP, both named `clusterip_<vip>`, always changed together in one batch:

netdev (hooks on the cluster interface, before the IP stack and before conntrack):
  ingress  packets to the VIP are hashed into buckets 1..N with the configured seed. An owned
           bucket is accepted with pkttype set to host (the frame came to a multicast MAC, which
           the IP and TCP stacks would otherwise drop); a draining bucket lets only non-SYN TCP
           through (this node's established flows, checked against conntrack at prerouting);
           everything else is dropped here, the cheapest place in the kernel.
  egress   ARP requests and replies with the VIP as sender carry the cluster MAC in the
           payload, so no client ever learns a node's own MAC for the VIP.
ip (prerouting at priority mangle, after conntrack):
  a TCP packet to the VIP with no conntrack entry here that is not a bare SYN belongs to a flow
  of another node (a moved bucket): drop it rather than let the stack answer with a RST. Buckets
  taken from a dead node (`orphaned`) are exempt, so their orphaned clients get the RST at once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from clusterip.config import HASHMODES, ConfigError, VipConfig

TABLE_PREFIX = "clusterip_"
COMMENT_MAGIC = "clusterip/1"
INGRESS_PRIORITY = -500
MAX_COMMENT = 128
# ICMP errors about a flow name the client in their inner header, not in the outer one; the
# owner's conntrack marks them related, every other node's stack finds no socket and ignores
# them. Accepting them everywhere keeps path MTU discovery working.
ICMP_ERRORS = "destination-unreachable, time-exceeded, parameter-problem"
# Set at ingress on packets of a draining bucket; prerouting then lets only established flows
# through (a value above any bucket number, reset to 0 before the packet goes on).
KEEP_MARK = 0x0C1EA0A0
# TCP that is not a bare SYN and has no conntrack entry here: another node's flow.
MIDFLOW = "ct state { new, invalid } tcp flags & (fin | syn | rst | ack) != syn"


@dataclass(frozen=True)
class Ownership:
    """Which buckets (1..modulus) this node serves.

    owned     new connections and established flows;
    draining  only this node's established TCP flows (the bucket moved away, its flows stay);
    orphaned  subset of owned: taken over from a dead node; mid-flow TCP gets a RST at once;
    kept      (client address, client port) of flows other live nodes keep while they drain:
              dropped here whatever their bucket, never accepted nor reset.
    """

    modulus: int
    owned: frozenset[int] = field(default_factory=frozenset)
    draining: frozenset[int] = field(default_factory=frozenset)
    orphaned: frozenset[int] = field(default_factory=frozenset)
    kept: frozenset[tuple[str, int]] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name, values in (
            ("owned", self.owned),
            ("draining", self.draining),
            ("orphaned", self.orphaned),
        ):
            bad = [b for b in values if not 1 <= b <= self.modulus]
            if bad:
                raise ConfigError(f"bad {name} bucket {bad[0]}: expected 1 to {self.modulus}")
        if self.owned & self.draining:
            raise ConfigError(
                f"buckets {sorted(self.owned & self.draining)} both owned and draining"
            )
        if not self.orphaned <= self.owned:
            raise ConfigError(
                f"orphaned buckets {sorted(self.orphaned - self.owned)} are not owned"
            )

    @classmethod
    def of(
        cls,
        modulus: int,
        owned: Iterable[int] = (),
        draining: Iterable[int] = (),
        orphaned: Iterable[int] = (),
    ) -> Ownership:
        return cls(modulus, frozenset(owned), frozenset(draining), frozenset(orphaned))

    def take(self, bucket: int) -> Ownership:
        return replace(self, owned=self.owned | {bucket}, draining=self.draining - {bucket})

    def release(self, bucket: int, *, keep_flows: bool = True) -> Ownership:
        draining = (
            self.draining | {bucket} if keep_flows and bucket in self.owned else self.draining
        )
        return Ownership.of(self.modulus, self.owned - {bucket}, draining, self.orphaned - {bucket})


def table_name(cfg: VipConfig) -> str:
    return TABLE_PREFIX + str(cfg.vip).replace(".", "_")


def comment(cfg: VipConfig, modulus: int, *, mode: str = "static", extra: str = "") -> str:
    """Table comment: what status needs to show and compare, compact enough for 128 bytes."""
    text = (
        f"{COMMENT_MAGIC} mode={mode} if={cfg.interface} mac={cfg.clustermac.replace(':', '')} "
        f"hash={HASHMODES.index(cfg.hashmode)} n={modulus} seed={cfg.seed:08x} "
        f"proto={cfg.protocol} plen={cfg.prefixlen}"
    )
    if extra:
        text += " " + extra
    if len(text) > MAX_COMMENT:
        raise ConfigError(f"interface name {cfg.interface!r} too long for the table comment")
    return text


def _hash_expr(cfg: VipConfig, *, ports: bool, modulus: int) -> str:
    fields = ["ip saddr"]
    if ports and cfg.hashmode != "sourceip":
        fields.append("th sport")
        if cfg.hashmode == "sourceip-sourceport-destport":
            fields.append("th dport")
    return f"jhash {' . '.join(fields)} mod {modulus} seed 0x{cfg.seed:08x} offset 1"


def _elements(mapping: dict[int, str]) -> str:
    return ", ".join(f"{b} : {v}" for b, v in sorted(mapping.items()))


def bucket_verdicts(own: Ownership) -> dict[int, str]:
    """Contents of the `buckets` map: owned -> jump own, draining -> jump keep."""
    out = {b: "jump own" for b in own.owned}
    out.update({b: "jump keep" for b in own.draining})
    return out


def orphan_verdicts(own: Ownership) -> dict[int, str]:
    """Contents of the `orphaned` map (prerouting): let mid-flow TCP reach the stack's RST."""
    return {b: "jump rst" for b in own.orphaned}


def _l4_match(cfg: VipConfig) -> str:
    protos = "tcp, udp, sctp" if cfg.protocol == "all" else cfg.protocol
    match = f"meta l4proto {{ {protos} }}" if cfg.protocol == "all" else f"meta l4proto {protos}"
    if cfg.dports:
        match += " th dport @dports"
    return match


def _lookup(cfg: VipConfig, modulus: int, *, ports: bool, map_name: str = "buckets") -> str:
    # nft cannot key a named map by the jhash expression itself (`typeof jhash` maps crash
    # `nft list` in nftables 1.0.6), so the bucket goes through the packet mark, a 32-bit
    # register that is free at netdev ingress; the accepting chains reset it to 0.
    return (
        f"meta mark set {_hash_expr(cfg, ports=ports, modulus=modulus)} meta mark vmap @{map_name}"
    )


def _vip_rules(cfg: VipConfig, modulus: int) -> list[str]:
    # Flows another live node keeps (it drains their bucket): nobody else may answer them.
    rules = ["meta l4proto { tcp, udp } ip saddr . th sport @kept drop"]
    # Then the hash: the common packet (ours or not) is decided without other checks.
    rules.append(f"{_l4_match(cfg)} {_lookup(cfg, modulus, ports=True)}")
    rules.append(f"icmp type {{ {ICMP_ERRORS} }} meta pkttype set host accept")
    if cfg.protocol == "all" and not cfg.dports:
        # Protocols without ports (ICMP, GRE, ...) are hashed by source IP. A port protocol's
        # packet whose bucket is not ours must stop here, or it would fall through to that rule.
        # (A non-first fragment has no ports: it stops here too.)
        rules.append('meta l4proto { tcp, udp, sctp } counter name "foreign" drop')
        rules.append(_lookup(cfg, modulus, ports=False))
    rules.append('counter name "foreign" drop')
    return rules


def render(
    cfg: VipConfig,
    own: Ownership,
    *,
    mode: str = "static",
    owner: bool = False,
    note_extra: str = "",
) -> str:
    """The nft script that makes the kernel's state for this VIP exactly (cfg, own).

    It is applied as one transaction: the `add`/`flush` prologue makes it work both on a fresh
    ruleset and over a previous version of the same tables (named counters keep counting).
    Later ownership changes can go in as `render_update`, which only touches map elements.
    """
    name = table_name(cfg)
    vip = str(cfg.vip)
    dev = cfg.interface
    modulus = own.modulus
    note = comment(cfg, modulus, mode=mode, extra=note_extra)
    flags = " flags owner;" if owner else ""
    # Every table statement of the batch must carry the flag: one without it asks the kernel to
    # clear `owner`, which it refuses.
    block_flags = "\n\tflags owner" if owner else ""
    dports = ""
    if cfg.dports:
        dports = (
            "\n\tset dports {\n\t\ttype inet_service\n\t\telements = { "
            + ", ".join(str(p) for p in cfg.dports)
            + " }\n\t}"
        )
    vip_rules = "\n".join(f"\t\t{r}" for r in _vip_rules(cfg, modulus))
    # Only agents announce the flows they keep (clusterip.reactor.kept), so only agents can
    # keep UDP: elsewhere the new owner would answer the old owner's UDP flows too.
    kept_protos = "{ tcp, udp }" if mode == "agent" else "tcp"
    fill = ""
    if own.owned or own.draining:
        fill += f"add element netdev {name} buckets {{ {_elements(bucket_verdicts(own))} }}\n"
    if own.orphaned:
        fill += f"add element ip {name} orphaned {{ {_elements(orphan_verdicts(own))} }}\n"
    if own.kept:
        fill += f"add element netdev {name} kept {{ {_flows(own.kept)} }}\n"
    return f"""# clusterip: VIP {vip} on {dev} (generated, do not edit)
add table netdev {name} {{ comment "{note}";{flags} }}
flush table netdev {name}
add table ip {name} {{ comment "{note}";{flags} }}
flush table ip {name}
table netdev {name} {{{block_flags}
	counter accepted {{
	}}
	counter kept {{
	}}
	counter foreign {{
	}}
	counter arps {{
	}}{dports}
	map buckets {{
		type mark : verdict
	}}
	set kept {{
		type ipv4_addr . inet_service
	}}
	chain ingress {{
		type filter hook ingress device "{dev}" priority {INGRESS_PRIORITY}; policy accept;
		ip daddr {vip} jump vip comment "{note}"
	}}
	chain vip {{
{vip_rules}
	}}
	chain own {{
		meta mark set 0 meta pkttype set host counter name "accepted" accept
	}}
	chain keep {{
		meta mark set 0
		tcp flags & (syn | ack) == syn counter name "foreign" drop
		meta l4proto != {kept_protos} counter name "foreign" drop
		meta mark set {KEEP_MARK:#010x} meta pkttype set host counter name "kept" accept
	}}
	chain egress {{
		type filter hook egress device "{dev}" priority 0; policy accept;
		arp saddr ip {vip} arp saddr ether set {cfg.clustermac} counter name "arps"
	}}
}}
table ip {name} {{{block_flags}
	counter midflow {{
	}}
	map orphaned {{
		type mark : verdict
	}}
	chain prerouting {{
		type filter hook prerouting priority mangle; policy accept;
		iif "{dev}" ip daddr {vip} {MIDFLOW} jump midflow
		iif "{dev}" ip daddr {vip} meta mark {KEEP_MARK:#010x} jump drained
	}}
	chain midflow {{
		meta l4proto tcp {_lookup(cfg, modulus, ports=True, map_name="orphaned")}
		counter name "midflow" drop
	}}
	chain rst {{
		meta mark set 0 accept
	}}
	chain drained {{
		ct state new counter name "midflow" drop
		meta mark set 0
	}}
}}
flush map netdev {name} buckets
flush set netdev {name} kept
flush map ip {name} orphaned
{fill}"""


def render_update(cfg: VipConfig, old: Ownership, new: Ownership) -> str:
    """Only the map elements that differ between `old` and `new`: one small transaction.

    Empty when nothing changes. A bucket whose verdict changes is deleted and re-added in the
    same batch, so no packet ever sees it missing.
    """
    if old.modulus != new.modulus:
        raise ValueError(f"bucket count changed ({old.modulus} -> {new.modulus}): render anew")
    name = table_name(cfg)
    out = []
    for family, map_name, verdicts in (
        ("netdev", "buckets", bucket_verdicts),
        ("ip", "orphaned", orphan_verdicts),
    ):
        before, after = verdicts(old), verdicts(new)
        gone = sorted(b for b, v in before.items() if after.get(b) != v)
        added = {b: v for b, v in after.items() if before.get(b) != v}
        if gone:
            items = ", ".join(str(b) for b in gone)
            out.append(f"delete element {family} {name} {map_name} {{ {items} }}")
        if added:
            out.append(f"add element {family} {name} {map_name} {{ {_elements(added)} }}")
    gone_flows, new_flows = old.kept - new.kept, new.kept - old.kept
    if gone_flows:
        out.append(f"delete element netdev {name} kept {{ {_flows(gone_flows)} }}")
    if new_flows:
        out.append(f"add element netdev {name} kept {{ {_flows(new_flows)} }}")
    return "".join(line + "\n" for line in out)


def _flows(flows: frozenset[tuple[str, int]]) -> str:
    return ", ".join(f"{addr} . {port}" for addr, port in sorted(flows))


def render_delete(cfg: VipConfig, *, owner: bool = False) -> str:
    """Remove both tables of a VIP (and nothing else) in one transaction, if present.

    `add` first makes the delete work when a table is absent; for the agent's own tables the
    `add` must repeat the owner flag (see render).
    """
    name = table_name(cfg)
    flags = " { flags owner; }" if owner else ""
    return "".join(
        f"add table {fam} {name}{flags}\ndelete table {fam} {name}\n" for fam in ("netdev", "ip")
    )


GUARD_PREFIX = TABLE_PREFIX + "guard_"
GUARD_PRIORITY = INGRESS_PRIORITY + 100


def guard_name(cfg: VipConfig) -> str:
    return GUARD_PREFIX + str(cfg.vip).replace(".", "_")


def render_guard(cfg: VipConfig, note_extra: str = "") -> str:
    """The agent's fail-safe, a table that outlives the agent.

    The agent's own tables carry the `owner` flag and vanish with its process. This one stays:
    it drops every packet to the VIP that no owner claimed (the owner chain, which runs first,
    sets pkttype to host on what it accepts; an unclaimed frame to the cluster MAC is still
    `multicast`), and keeps rewriting ARP, so a node whose agent died never answers for the
    VIP, not even UDP, and never teaches a client its own MAC for it.
    """
    name = guard_name(cfg)
    vip = str(cfg.vip)
    dev = cfg.interface
    note = comment(cfg, 0, mode="guard", extra=note_extra)
    return f"""add table netdev {name}
delete table netdev {name}
table netdev {name} {{
	chain ingress {{
		type filter hook ingress device "{dev}" priority {GUARD_PRIORITY}; policy accept;
		ip daddr {vip} meta pkttype != host drop comment "{note}"
	}}
	chain egress {{
		type filter hook egress device "{dev}" priority 0; policy accept;
		arp saddr ip {vip} arp saddr ether set {cfg.clustermac}
	}}
}}
"""


def render_guard_delete(cfg: VipConfig) -> str:
    name = guard_name(cfg)
    return f"add table netdev {name}\ndelete table netdev {name}\n"
