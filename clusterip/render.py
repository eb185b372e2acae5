"""Render the nftables ruleset of one VIP: a pure function of (config, ownership).

Tables per VIP, all named `clusterip_<vip>` and always changed together in one batch:

netdev  ingress on the cluster interface, before the IP stack and before conntrack: packets to
        the VIP are hashed into buckets 1..N with the configured seed and looked up in the
        `buckets` map. An owned bucket is accepted with pkttype set to host (the frame came to a
        multicast MAC, which the IP and TCP stacks would otherwise drop); everything else is
        dropped here, the cheapest place in the kernel. In the steady state that is the whole
        per-packet cost: no conntrack, no other hook.
arp     output: ARP requests and replies with the VIP as sender carry the cluster MAC in the
        payload, so no client ever learns a node's own MAC for the VIP (an arp-family hook sees
        ARP only; a netdev egress hook would cost every packet the node sends).
ip      only while a bucket is in transition. A TCP packet that is not a bare SYN, in a bucket
        that is draining (moved away, our flows stay), guarded (moved here, the previous owner's
        flows stay there) or orphaned (taken from a dead node), must find a socket on this node
        (a socket lookup at prerouting); without one it belongs to another node's flow and is
        dropped, or, in an orphaned bucket, goes on to the stack, whose RST tells the dead
        node's client at once. Conntrack is never switched on.
"""

from __future__ import annotations

from ipaddress import IPv4Address

from clusterip.config import HASHMODES, ConfigError, VipConfig
from clusterip.core import defaults
from clusterip.core.ownership import Ownership

TABLE_PREFIX = "clusterip_"
COMMENT_MAGIC = "clusterip/1"
INGRESS_PRIORITY = -500
MAX_COMMENT = 128
# ICMP errors about a flow name the client in their inner header, not in the outer one; the
# owner's stack finds the flow's socket, every other node's stack finds none and ignores them.
# Accepting them everywhere keeps path MTU discovery working.
ICMP_ERRORS = "destination-unreachable, time-exceeded, parameter-problem"
# Set at ingress on non-SYN TCP of a bucket in transition; prerouting then asks for a socket.
# CHECK_MARK: no socket here -> drop (another node's flow). ORPHAN_MARK: no socket -> the
# stack's RST (a dead node's flow). Values above any bucket number; reset to 0 on acceptance.
CHECK_MARK = 0x0C1EA0A0
ORPHAN_MARK = 0x0C1EA0A1
BARE_SYN = "tcp flags & (syn | ack) == syn"
# Agents keep UDP flows of a draining bucket: the flows this node served lately, kept in a set
# that the datapath refreshes (the kernel's own conntrack UDP timeout is 30 s unreplied).
UDP_FLOW_TIMEOUT = defaults.UDP_FLOW_TIMEOUT
UDP_FLOWS_MAX = 65536


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
    """Contents of the `buckets` map: the chain each bucket's packets go to."""
    out = {}
    for b in own.owned:
        chain = "orphan" if b in own.orphaned else "guard" if b in own.guarded else "own"
        out[b] = f"jump {chain}"
    out.update({b: "jump keep" for b in own.draining})
    return out


def _l4_match(cfg: VipConfig) -> str:
    protos = "tcp, udp, sctp" if cfg.protocol == "all" else cfg.protocol
    match = f"meta l4proto {{ {protos} }}" if cfg.protocol == "all" else f"meta l4proto {protos}"
    if cfg.dports:
        match += " th dport @dports"
    return match


def _lookup(cfg: VipConfig, modulus: int, *, ports: bool) -> str:
    # nft cannot key a named map by the jhash expression itself (`typeof jhash` maps crash
    # `nft list` in nftables 1.0.6), so the bucket goes through the packet mark, a 32-bit
    # register that is free at netdev ingress; the accepting chains reset it to 0. The map is
    # declared with its size, so the kernel picks its fixed hash for 4-byte keys (a plain
    # lookup) rather than the resizable one.
    return f"meta mark set {_hash_expr(cfg, ports=ports, modulus=modulus)} meta mark vmap @buckets"


def vip_rules(cfg: VipConfig, modulus: int, *, kept: bool) -> list[str]:
    """The `vip` chain. The flows other nodes keep are looked up only while there are any."""
    rules = []
    if kept:
        rules.append("meta l4proto { tcp, udp } ip saddr . th sport @kept drop")
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


def _tracks_udp(cfg: VipConfig, mode: str) -> bool:
    """Only agents announce the flows they keep (clusterip.core.kept), so only agents can
    keep UDP: elsewhere the new owner would answer the old owner's UDP flows too."""
    return mode == "agent" and cfg.protocol in ("udp", "all")


def _accepting_chains(cfg: VipConfig, mode: str) -> str:
    host = "meta pkttype set host counter name"
    seen = "ip saddr . udp sport"
    own = [f'meta mark set 0 {host} "accepted" accept']
    keep = [
        f'{BARE_SYN} counter name "foreign" drop',
        f'meta l4proto tcp meta mark set {CHECK_MARK:#010x} {host} "kept" accept',
    ]
    if _tracks_udp(cfg, mode):
        own.insert(0, f"meta l4proto udp update @udp_seen {{ {seen} }}")
        keep.append(
            f'{seen} @udp_seen update @udp_seen {{ {seen} }} meta mark set 0 {host} "kept" accept'
        )
    keep.append('counter name "foreign" drop')
    chains = {"own": own, "keep": keep}
    for name, mark in (("guard", CHECK_MARK), ("orphan", ORPHAN_MARK)):
        chains[name] = [
            f"{BARE_SYN} goto own",
            f'meta l4proto tcp meta mark set {mark:#010x} {host} "accepted" accept',
            "goto own",
        ]
    return "".join(
        f"\tchain {name} {{\n" + "".join(f"\t\t{r}\n" for r in rules) + "\t}\n"
        for name, rules in chains.items()
    )


def _table_flags(owner: bool) -> str:
    """For `add table`: every table statement of an owner table's batch must carry the flag
    (one without it asks the kernel to clear `owner`, which it refuses)."""
    return " { flags owner; }" if owner else ""


def _drop_table(family: str, name: str, owner: bool = False) -> str:
    """Delete a table if present (`add` first makes the delete work when it is absent)."""
    return f"add table {family} {name}{_table_flags(owner)}\ndelete table {family} {name}\n"


def _ip_table(cfg: VipConfig, owner: bool) -> str:
    """The socket check, present only while buckets are in transition."""
    name = table_name(cfg)
    block_flags = "\tflags owner\n" if owner else ""
    return f"""add table ip {name}{_table_flags(owner)}
flush table ip {name}
table ip {name} {{
{block_flags}	counter midflow {{
	}}
	chain prerouting {{
		type filter hook prerouting priority mangle; policy accept;
		ip daddr {cfg.vip} meta mark {{ {CHECK_MARK:#010x}, {ORPHAN_MARK:#010x} }} jump check
	}}
	chain check {{
		socket wildcard 0 meta mark set 0 accept
		socket wildcard 1 goto nosock
		socket transparent {{ 0, 1 }} meta mark set 0 accept
		goto nosock
	}}
	chain nosock {{
		meta mark {ORPHAN_MARK:#010x} meta mark set 0 accept
		counter name "midflow" drop
	}}
}}
"""


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
    Later ownership changes can go in as `render_update`, a few lines.
    """
    name = table_name(cfg)
    vip = str(cfg.vip)
    dev = cfg.interface
    modulus = own.modulus
    note = comment(cfg, modulus, mode=mode, extra=note_extra)
    flags = " flags owner;" if owner else ""  # see _table_flags
    block_flags = "\n\tflags owner" if owner else ""
    dports = ""
    if cfg.dports:
        dports = (
            "\n\tset dports {\n\t\ttype inet_service\n\t\telements = { "
            + ", ".join(str(p) for p in cfg.dports)
            + " }\n\t}"
        )
    udp_seen = ""
    if _tracks_udp(cfg, mode):
        udp_seen = (
            "\n\tset udp_seen {\n\t\ttype ipv4_addr . inet_service\n"
            f"\t\tflags dynamic,timeout\n\t\ttimeout {UDP_FLOW_TIMEOUT}s\n"
            f"\t\tsize {UDP_FLOWS_MAX}\n\t}}"
        )
    rules = "\n".join(f"\t\t{r}" for r in vip_rules(cfg, modulus, kept=bool(own.kept)))
    ip = _ip_table(cfg, owner) if own.in_transition else _drop_table("ip", name, owner)
    fill = ""
    if own.owned or own.draining:
        fill += f"add element netdev {name} buckets {{ {_elements(bucket_verdicts(own))} }}\n"
    if own.kept:
        fill += f"add element netdev {name} kept {{ {_flows(own.kept)} }}\n"
    return f"""# clusterip: VIP {vip} on {dev} (generated, do not edit)
add table netdev {name} {{ comment "{note}";{flags} }}
flush table netdev {name}
add table arp {name}{_table_flags(owner)}
flush table arp {name}
{ip}table netdev {name} {{{block_flags}
	counter accepted {{
	}}
	counter kept {{
	}}
	counter foreign {{
	}}{dports}
	map buckets {{
		type mark : verdict
		size {modulus}
	}}
	set kept {{
		type ipv4_addr . inet_service
	}}{udp_seen}
	chain ingress {{
		type filter hook ingress device "{dev}" priority {INGRESS_PRIORITY}; policy accept;
		ip daddr {vip} jump vip comment "{note}"
	}}
	chain vip {{
{rules}
	}}
{_accepting_chains(cfg, mode)}}}
table arp {name} {{{block_flags}
	counter arps {{
	}}
	chain output {{
		type filter hook output priority 0; policy accept;
		arp saddr ip {vip} arp saddr ether set {cfg.clustermac} counter name "arps"
	}}
}}
flush map netdev {name} buckets
flush set netdev {name} kept
{fill}"""


def render_update(cfg: VipConfig, old: Ownership, new: Ownership, *, owner: bool = False) -> str:
    """Only what differs between `old` and `new`: one small transaction.

    Empty when nothing changes. A bucket whose verdict changes is deleted and re-added in the
    same batch, so no packet ever sees it missing. The `vip` chain is rewritten when the kept
    flows come or go, and the ip table (the socket check) when transitions begin or end.
    """
    if old.modulus != new.modulus:
        raise ValueError(f"bucket count changed ({old.modulus} -> {new.modulus}): render anew")
    name = table_name(cfg)
    out = []
    if new.in_transition and not old.in_transition:
        out.append(_ip_table(cfg, owner))
    before, after = bucket_verdicts(old), bucket_verdicts(new)
    gone = sorted(b for b, v in before.items() if after.get(b) != v)
    added = {b: v for b, v in after.items() if before.get(b) != v}
    if gone:
        items = ", ".join(str(b) for b in gone)
        out.append(f"delete element netdev {name} buckets {{ {items} }}\n")
    if added:
        out.append(f"add element netdev {name} buckets {{ {_elements(added)} }}\n")
    gone_flows, new_flows = old.kept - new.kept, new.kept - old.kept
    if gone_flows:
        out.append(f"delete element netdev {name} kept {{ {_flows(gone_flows)} }}\n")
    if new_flows:
        out.append(f"add element netdev {name} kept {{ {_flows(new_flows)} }}\n")
    if bool(old.kept) != bool(new.kept):
        out.append(f"flush chain netdev {name} vip\n")
        out.extend(
            f"add rule netdev {name} vip {r}\n"
            for r in vip_rules(cfg, new.modulus, kept=bool(new.kept))
        )
    if old.in_transition and not new.in_transition:
        out.append(_drop_table("ip", name, owner))
    return "".join(out)


def _flows(flows: frozenset[tuple[str, int]]) -> str:
    return ", ".join(f"{addr} . {port}" for addr, port in sorted(flows))


FAMILIES = ("netdev", "arp", "ip")


def render_delete(cfg: VipConfig, *, owner: bool = False) -> str:
    """Remove the tables of a VIP (and nothing else) in one transaction, if present."""
    return "".join(_drop_table(f, table_name(cfg), owner) for f in FAMILIES)


GUARD_PREFIX = TABLE_PREFIX + "guard_"
GUARD_PRIORITY = INGRESS_PRIORITY + 100


def guard_name(vip: IPv4Address) -> str:
    return GUARD_PREFIX + str(vip).replace(".", "_")


def render_guard(cfg: VipConfig, note_extra: str = "") -> str:
    """The agent's fail-safe, tables that outlive the agent.

    The agent's own tables carry the `owner` flag and vanish with its process. These stay: the
    netdev one drops every packet to the VIP that no owner claimed (the owner chain, which runs
    first, sets pkttype to host on what it accepts; an unclaimed frame to the cluster MAC is
    still `multicast`), the arp one keeps rewriting ARP, so a node whose agent died never
    answers for the VIP, not even UDP, and never teaches a client its own MAC for it.
    """
    name = guard_name(cfg.vip)
    vip = str(cfg.vip)
    dev = cfg.interface
    note = comment(cfg, 0, mode="guard", extra=note_extra)
    return f"""{render_guard_delete(cfg.vip)}table netdev {name} {{
	chain ingress {{
		type filter hook ingress device "{dev}" priority {GUARD_PRIORITY}; policy accept;
		ip daddr {vip} meta pkttype != host drop comment "{note}"
	}}
}}
table arp {name} {{
	chain output {{
		type filter hook output priority 0; policy accept;
		arp saddr ip {vip} arp saddr ether set {cfg.clustermac}
	}}
}}
"""


def render_guard_delete(vip: IPv4Address) -> str:
    """Remove the guard tables of `vip`, if present (also what a killed agent left)."""
    return "".join(_drop_table(f, guard_name(vip)) for f in ("netdev", "arp"))
