"""Render the nftables ruleset of one VIP: a pure function of (config, ownership).

Tables per VIP, all named `clusterip_<vip>`, each change one transaction:

netdev  ingress on the cluster interface, before the IP stack and conntrack: packets to the
        VIP are hashed into buckets 1..N with the configured seed and looked up in the
        `buckets` map. An owned bucket is accepted with pkttype set to host (the frame came to a
        multicast MAC, which TCP would otherwise drop); everything else is dropped here. In the
        steady state that is the whole per-packet cost: one hash, one map lookup, and a check
        for a bare SYN, whose flow is remembered for SYN_TIMEOUT in the `syns` set.
arp     (IPv4) output: ARP requests and replies with the VIP as sender carry the cluster MAC
        in the payload, so no client ever learns a node's own MAC for the VIP.
ip6     (IPv6) output: the same for Neighbor Discovery (clusterip.nd): every NA for the VIP
        carries the cluster MAC as its target link-layer address, every NS from the VIP as
        its source link-layer address, checksums kept valid.
inet    agents only: the "live" table, owner-flagged, so it dies with the agent's process. It
        marks the VIP's packets just before the netdev table sees them; the netdev table drops
        every unmarked one unless the `lease` set holds the VIP (a planned restart). A killed
        agent's node therefore stops answering at once; a suspended one serves on until its
        lease runs out in the kernel.

Flow identity while buckets move, decided at ingress by (client address, client port, VIP
port): this node's flows are the `mine` set (a sock_diag snapshot of its sockets, taken in the
transaction that starts the move) and the `syns` set (every bare SYN it accepted lately, so a
SYN-cookie handshake or one in flight counts too). A draining bucket (`keep`) accepts only
those, and UDP flows the agent saw; a guarded one (gained from a live node) accepts new
connections and those, and drops the previous owner's mid-flow packets; an orphaned one
(taken from a dead node) accepts everything, so the stack's RST tells the dead node's clients
at once. No socket lookup, no conntrack: what a service binds to does not matter.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from ipaddress import IPv6Address

from clusterip import nd
from clusterip.config import HASHMODES, Address, ConfigError, VipConfig
from clusterip.core import defaults
from clusterip.core.ownership import Ownership
from clusterip.family import IPV4, Family, family
from clusterip.macmode import DEFAULT_MAC_MODE

TABLE_PREFIX = "clusterip_"
COMMENT_MAGIC = "clusterip/2"  # the version of the rules; clusterip/1 used a socket lookup
OLD_MAGIC = ("clusterip/1",)
INGRESS_PRIORITY = -500
LIVE_PRIORITY = INGRESS_PRIORITY - 1
MAX_COMMENT = 128
# ICMP errors about a flow name the client in their inner header, not in the outer one; the
# owner's stack finds the flow's socket, every other node's stack finds none and ignores them.
# Accepting them everywhere keeps path MTU discovery working (see clusterip.family).
# Put on the VIP's packets by a live agent's owner table; reset to 0 on every accepted packet.
LIVE_MARK = 0x0C1EA11E
BARE_SYN = "tcp flags & (syn | ack) == syn"
# A flow's key in `syns` and `mine` (IPv4; see Family for both).
FLOW_TYPE = "ipv4_addr . inet_service . inet_service"
FLOW = "ip saddr . th sport . th dport"
SYN_TIMEOUT = defaults.SYN_TIMEOUT
# How long a flow of `mine` lives after its last packet. Agents pass their drain timeout; in
# static mode a move lasts until the next `up`, so a kept flow may idle this long.
STATIC_FLOW_TIMEOUT = 86400
FLOWS_MAX = 262144  # per set; a full set records no more (the SYN is still accepted)
# Agents keep UDP flows of a draining bucket: the flows this node served lately, kept in a set
# that the datapath refreshes (the kernel's own conntrack UDP timeout is 30 s unreplied).
UDP_FLOW_TIMEOUT = defaults.UDP_FLOW_TIMEOUT
UDP_FLOWS_MAX = 65536
TcpFlow = tuple[str, int, int]  # client address, client port, VIP port


def table_name(cfg: VipConfig) -> str:
    return vip_table(cfg.vip)


def vip_table(vip: Address) -> str:
    """`clusterip_192_0_2_10`, `clusterip_2001_db8__10`: the address with _ for . or :."""
    return TABLE_PREFIX + str(vip).replace(".", "_").replace(":", "_")


def comment(cfg: VipConfig, modulus: int, *, mode: str = "static", extra: str = "") -> str:
    """Table comment: what status needs to show and compare, compact enough for 128 bytes."""
    text = (
        f"{COMMENT_MAGIC} mode={mode} if={cfg.interface} mac={cfg.clustermac.replace(':', '')} "
        f"hash={HASHMODES.index(cfg.hashmode)} n={modulus} seed={cfg.seed:08x} "
        f"proto={cfg.protocol} plen={cfg.prefixlen}"
    )
    if cfg.mac_mode != DEFAULT_MAC_MODE:
        text += f" mm={cfg.mac_mode}"
    if extra:
        text += " " + extra
    if len(text) > MAX_COMMENT:
        raise ConfigError(f"interface name {cfg.interface!r} too long for the table comment")
    return text


def _hash_expr(cfg: VipConfig, *, ports: bool, modulus: int) -> str:
    fields = [f"{family(cfg).ip} saddr"]
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


def checked(own: Ownership) -> frozenset[int]:
    """Buckets whose mid-flow TCP must be one of this node's flows: they need the snapshot."""
    return own.draining | own.guarded


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


def _uses_ports(cfg: VipConfig) -> bool:
    return cfg.uses_ports or bool(cfg.dports)


def vip_rules(cfg: VipConfig, modulus: int, *, kept: bool, live: bool = False) -> list[str]:
    """The `vip` chain. The flows other nodes keep are looked up only while there are any."""
    rules = []
    fam = family(cfg)
    if live:
        # No live agent (its owner table marks every VIP packet) and no lease: drop.
        rules.append(
            f'meta mark != {LIVE_MARK:#010x} {fam.ip} daddr != @lease counter name "down" drop'
        )
    if kept:
        rules.append(f"meta l4proto {{ tcp, udp }} {fam.ip} saddr . th sport @kept drop")
    # Then the hash: the common packet (ours or not) is decided without other checks.
    rules.append(f"{_l4_match(cfg)} {_lookup(cfg, modulus, ports=True)}")
    rules.append(f"{fam.icmp} meta mark set 0 meta pkttype set host accept")
    if cfg.protocol == "all" and not cfg.dports:
        # Protocols without ports (ICMP, GRE, ...) are hashed by source IP. A port protocol's
        # packet whose bucket is not ours must stop here, or it would fall through to that rule.
        rules.append('meta l4proto { tcp, udp, sctp } counter name "foreign" drop')
        rules.append(_lookup(cfg, modulus, ports=False))
    rules.append('counter name "foreign" drop')
    return rules


def _tracks_udp(cfg: VipConfig, mode: str) -> bool:
    """Only agents announce the flows they keep (clusterip.core.kept), so only agents can
    keep UDP: elsewhere the new owner would answer the old owner's UDP flows too."""
    return mode == "agent" and cfg.protocol in ("udp", "all")


def _accept(counter: str) -> str:
    return f'meta mark set 0 meta pkttype set host counter name "{counter}" accept'


def _ours(counter: str, fam: Family = IPV4) -> list[str]:
    """A TCP packet of one of this node's flows: a snapshot flow, or one whose SYN it took
    (which then joins `mine`, with its longer timeout). Each hit refreshes its element."""
    tcp = "meta l4proto tcp"
    flow = fam.flow
    return [
        f"{tcp} {flow} @mine update @mine {{ {flow} }} {_accept(counter)}",
        f"{tcp} {flow} @syns update @mine {{ {flow} }} {_accept(counter)}",
        # `mine` is full: the update above failed, the SYN's element keeps the flow.
        f"{tcp} {flow} @syns update @syns {{ {flow} }} {_accept(counter)}",
    ]


def _fragments(cfg: VipConfig) -> list[str]:
    """Only a datagram's first fragment carries its ports: the others are hashed (and
    port-matched) by their payload, so they land on any node. None of them is served where
    ports count. Checked after the hash, so a foreign packet costs nothing more."""
    if not _uses_ports(cfg):
        return []  # by source address alone, every fragment goes where its datagram goes
    ports = " meta l4proto { tcp, udp, sctp }" if cfg.protocol == "all" else ""
    return [f'{family(cfg).fragment}{ports} counter name "fragments" drop']


def _accepting_chains(cfg: VipConfig, mode: str) -> str:
    fam = family(cfg)
    flow = fam.flow
    seen = f"{fam.ip} saddr . udp sport"
    tcp = cfg.protocol in ("tcp", "all")
    own = _fragments(cfg)
    if tcp:
        # A separate rule: when `syns` is full the update fails and ends its rule, not this
        # packet's acceptance.
        own.append(f"{BARE_SYN} update @syns {{ {flow} }}")
    keep = _fragments(cfg)
    if tcp:
        # A new connection of a bucket that moved away is the new owner's; a client that reuses
        # a port has ended the flow this node knew by it.
        keep.append(
            f"{BARE_SYN} delete @syns {{ {flow} }} delete @mine {{ {flow} }} "
            'counter name "foreign" drop'
        )
        keep.extend(_ours("kept", fam))
    if _tracks_udp(cfg, mode):
        own.append(f"meta l4proto udp update @udp_seen {{ {seen} }}")
        keep.append(f"{seen} @udp_seen update @udp_seen {{ {seen} }} {_accept('kept')}")
    own.append(_accept("accepted"))
    keep.append('counter name "foreign" drop')
    guard = _fragments(cfg)
    if tcp:
        guard += [
            f"{BARE_SYN} goto own",
            *_ours("accepted", fam),
            'meta l4proto tcp counter name "midflow" drop',  # the previous owner's flow
        ]
    guard.append("goto own")
    chains = {
        "own": own,
        "keep": keep,
        "guard": guard,
        # A dead node's flows have no server any more: the stack's RST tells their clients.
        # Flows that live nodes keep were dropped before the hash (the `kept` set).
        "orphan": ["goto own"],
    }
    return "".join(
        f"\tchain {name} {{\n" + "".join(f"\t\t{r}\n" for r in rules) + "\t}\n"
        for name, rules in chains.items()
    )


def _drop_table(family: str, name: str, owner: bool = False) -> str:
    """Delete a table if present (`add` first makes the delete work when it is absent). Every
    table statement of an owner table's batch must carry the flag (one without it asks the
    kernel to clear `owner`, which it refuses)."""
    flags = " { flags owner; }" if owner else ""
    return f"add table {family} {name}{flags}\ndelete table {family} {name}\n"


def render_live(cfg: VipConfig) -> str:
    """The agent's owner table: it lives exactly as long as the agent's netlink socket."""
    name = table_name(cfg)
    ip = family(cfg).ip
    return f"""add table inet {name} {{ flags owner; }}
table inet {name} {{
	flags owner
	chain ingress {{
		type filter hook ingress device "{cfg.interface}" priority {LIVE_PRIORITY}; policy accept;
		{ip} daddr {cfg.vip} meta mark set {LIVE_MARK:#010x}
	}}
}}
"""


def _flow_elements(flows: Iterable[TcpFlow]) -> str:
    return ", ".join(f"{a} . {p} . {d}" for a, p, d in sorted(flows))


def render_mine(name: str, flows: Collection[TcpFlow] | None) -> str:
    """Replace the snapshot: this node's flows of the buckets that now need one (nothing for
    None). Also a transaction of its own (the agent writes it ahead of moves)."""
    if flows is None:
        return ""
    out = f"flush set netdev {name} mine\n"
    if flows:
        out += f"add element netdev {name} mine {{ {_flow_elements(flows)} }}\n"
    return out


def _set(name: str, type_: str, extra: str = "") -> str:
    return (
        f"\tset {name} {{\n\t\ttype {type_}\n"
        + "".join(f"\t\t{line}\n" for line in extra.splitlines())
        + "\t}\n"
    )


def render(
    cfg: VipConfig,
    own: Ownership,
    *,
    mode: str = "static",
    note_extra: str = "",
    mine: Collection[TcpFlow] | None = None,
    flow_timeout: int = STATIC_FLOW_TIMEOUT,
    live: bool = False,
    nic_mac: str = "",
    xdp_fast: bool = False,
) -> str:
    """The nft script that makes the kernel's state for this VIP exactly (cfg, own).

    It is applied as one transaction: the `add`/`flush` prologue makes it work both on a fresh
    ruleset and over a previous version of the same tables (named counters keep counting, and
    so do the `syns` and `mine` sets unless `mine` replaces the snapshot). `live` adds the
    agent's owner table and its check. Later ownership changes go in as `render_update`.
    `nic_mac`: the cluster interface's own MAC, which an IPv6 VIP's ND rewrite replaces.
    """
    name = table_name(cfg)
    fam = family(cfg)
    vip = str(cfg.vip)
    dev = cfg.interface
    modulus = own.modulus
    note = comment(cfg, modulus, mode=mode, extra=note_extra)
    sets = ""
    if cfg.dports:
        ports = ", ".join(str(p) for p in cfg.dports)
        sets += _set("dports", "inet_service", f"elements = {{ {ports} }}")
    sets += f"\tmap buckets {{\n\t\ttype mark : verdict\n\t\tsize {modulus}\n\t}}\n"
    sets += _set("kept", fam.pair_type)
    dyn = "flags dynamic,timeout"
    sets += _set("syns", fam.flow_type, f"{dyn}\ntimeout {SYN_TIMEOUT}s\nsize {FLOWS_MAX}")
    sets += _set("mine", fam.flow_type, f"{dyn}\ntimeout {flow_timeout}s\nsize {FLOWS_MAX}")
    if _tracks_udp(cfg, mode):
        udp = f"{dyn}\ntimeout {UDP_FLOW_TIMEOUT}s\nsize {UDP_FLOWS_MAX}"
        sets += _set("udp_seen", fam.pair_type, udp)
    if live:
        sets += _set("lease", fam.addr_type, "flags timeout")
    rules = "\n".join(f"\t\t{r}" for r in vip_rules(cfg, modulus, kept=bool(own.kept), live=live))
    fill = ""
    if own.owned or own.draining:
        fill += f"add element netdev {name} buckets {{ {_elements(bucket_verdicts(own))} }}\n"
    if own.kept:
        fill += f"add element netdev {name} kept {{ {_flows(own.kept)} }}\n"
    fill += render_mine(name, mine)
    return f"""# clusterip: VIP {vip} on {dev} (generated, do not edit)
add table netdev {name} {{ comment "{note}"; }}
flush table netdev {name}
{_neighbour_prologue(cfg)}{render_live(cfg) if live else ""}table netdev {name} {{
	counter accepted {{
	}}
	counter kept {{
	}}
	counter foreign {{
	}}
	counter midflow {{
	}}
	counter fragments {{
	}}{_down_counter(live)}
{sets}	chain ingress {{
		type filter hook ingress device "{dev}" priority {INGRESS_PRIORITY}; policy accept;
		comment "{note}"
{_ingress_rules(cfg, xdp_fast=xdp_fast, live=live)}	}}
	chain vip {{
{rules}
	}}
{_accepting_chains(cfg, mode)}}}
{_neighbour_table(cfg, nic_mac)}flush map netdev {name} buckets
flush set netdev {name} kept
{fill}"""


def _neighbour_prologue(cfg: VipConfig) -> str:
    """Create or empty the table that rewrites the VIP's ARP (IPv4) or ND (IPv6)."""
    name = table_name(cfg)
    if cfg.vip.version == 6:
        return f"add table ip6 {name}\nflush table ip6 {name}\n"
    # The ip table is clusterip/1's socket check: gone in this version.
    return f"add table arp {name}\nflush table arp {name}\n" + _drop_table("ip", name)


def _neighbour_table(cfg: VipConfig, nic_mac: str) -> str:
    name = table_name(cfg)
    if isinstance(cfg.vip, IPv6Address):
        if not nic_mac:
            raise ValueError(f"{cfg.vip}: the ND rewrite needs the interface's own MAC")
        return nd.render_table(name, cfg.vip, nic_mac, cfg.clustermac)
    return f"""table arp {name} {{
	counter arps {{
	}}
	chain output {{
		type filter hook output priority 0; policy accept;
		arp saddr ip {cfg.vip} arp saddr ether set {cfg.clustermac} counter name "arps"
	}}
}}
"""


# --- the XDP pre-filter's owned fast path (clusterip.xdp) ----------------------------------------
def fast_rule(cfg: VipConfig, *, live: bool = False) -> str:
    """Accept at once what the XDP pre-filter vouched for: a frame of a bucket this node owns
    in the steady state, whose source MAC the program set to the cluster MAC (and its
    destination to the node's own). Render it only while the
    program runs: it drops every VIP frame that arrives with a multicast source, so only its
    own rewrites carry that source. Under an agent, only while its live table marks the
    packet (the program and the live table both end with the agent's process)."""
    live_check = f"meta mark {LIVE_MARK:#010x} meta mark set 0 " if live else ""
    # pkttype host again: a driver that keeps the skb it had before XDP (veth) computes it
    # from the original, multicast destination, and TCP takes only PACKET_HOST.
    ip = family(cfg).ip
    return (
        f"{ip} daddr {cfg.vip} ether saddr {cfg.clustermac} {live_check}"
        "meta pkttype set host accept"
    )


def ingress_rules(cfg: VipConfig, *, xdp_fast: bool, live: bool) -> list[str]:
    """The ingress chain's rules. In MAC mode unicast, a frame to the cluster MAC is not to the
    NIC's own MAC: the stack sees PACKET_OTHERHOST and drops it. Every accepted VIP packet gets
    pkttype host (as in every mode), and so does ARP to the cluster MAC (a client's unicast
    reachability probe, which every node answers, as it does in the multicast modes)."""
    rules = [fast_rule(cfg, live=live)] if xdp_fast else []
    if cfg.mac_mode == "unicast" and cfg.vip.version == 4:
        rules.append(f"ether type arp ether daddr {cfg.clustermac} meta pkttype set host accept")
    rules.append(f"{family(cfg).ip} daddr {cfg.vip} jump vip")
    return rules


def _ingress_rules(cfg: VipConfig, *, xdp_fast: bool, live: bool) -> str:
    return "".join(f"\t\t{r}\n" for r in ingress_rules(cfg, xdp_fast=xdp_fast, live=live))


def render_ingress(cfg: VipConfig, *, xdp_fast: bool, live: bool = False) -> str:
    """Add or remove the fast-path rule: the ingress chain's rules anew (one transaction)."""
    name = table_name(cfg)
    rules = ingress_rules(cfg, xdp_fast=xdp_fast, live=live)
    return f"flush chain netdev {name} ingress\n" + "".join(
        f"add rule netdev {name} ingress {r}\n" for r in rules
    )


def _down_counter(live: bool) -> str:
    return "\n\tcounter down {\n\t}" if live else ""


def render_update(
    cfg: VipConfig,
    old: Ownership,
    new: Ownership,
    *,
    mine: Collection[TcpFlow] | None = None,
    live: bool = False,
) -> str:
    """Only what differs between `old` and `new`: one small transaction.

    Empty when nothing changes. A bucket whose verdict changes is deleted and re-added in the
    same batch, so no packet ever sees it missing. `mine`, when given, replaces the snapshot in
    the same batch (buckets that start to move need it from their first packet). The `vip`
    chain is rewritten when the kept flows come or go.
    """
    if old.modulus != new.modulus:
        raise ValueError(f"bucket count changed ({old.modulus} -> {new.modulus}): render anew")
    name = table_name(cfg)
    out = [render_mine(name, mine)]
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
            for r in vip_rules(cfg, new.modulus, kept=bool(new.kept), live=live)
        )
    return "".join(out)


def _flows(flows: frozenset[tuple[str, int]]) -> str:
    return ", ".join(f"{addr} . {port}" for addr, port in sorted(flows))


def render_lease(cfg: VipConfig, grace_ms: int, note: str) -> str:
    """Hand the node over to a successor: it serves on for `grace_ms` without a live table
    (0: not at all). Replaces any earlier lease."""
    name = table_name(cfg)
    out = f"flush set netdev {name} lease\n"
    if grace_ms > 0:
        out += (
            f"add element netdev {name} lease "
            f'{{ {cfg.vip} timeout {grace_ms}ms comment "{note}" }}\n'
        )
    return out


def render_adopt(cfg: VipConfig) -> str:
    """A successor takes over a suspended agent's tables: its own live table, no lease. The
    delete fails (and with it the batch) if the kernel has expired the lease meanwhile."""
    return render_live(cfg) + f"delete element netdev {table_name(cfg)} lease {{ {cfg.vip} }}\n"


def render_drop_all(cfg: VipConfig) -> str:
    """Stop answering for the VIP at once, tables kept (the first step of a removal)."""
    return f"flush map netdev {table_name(cfg)} buckets\n"


LEGACY_GUARD_PREFIX = TABLE_PREFIX + "guard_"  # clusterip/1 agents' fail-safe tables


def render_legacy_delete(vip: Address) -> str:
    """Remove the guard tables a clusterip/1 agent left, if present (IPv4 only: clusterip/1
    served no IPv6 VIP)."""
    if vip.version == 6:
        return ""
    guard = LEGACY_GUARD_PREFIX + str(vip).replace(".", "_")
    return _drop_table("netdev", guard) + _drop_table("arp", guard)


def render_delete(cfg: VipConfig, *, owner: bool = False) -> str:
    """Remove the tables of a VIP (and nothing else) in one transaction, if present: also the
    socket-check table and guard tables of clusterip/1. `owner`: this process owns the live
    table (otherwise it must be gone, or the kernel refuses the whole batch)."""
    name = table_name(cfg)
    if cfg.vip.version == 6:
        tables = _drop_table("ip6", name)
    else:
        tables = _drop_table("arp", name) + _drop_table("ip", name)
    return (
        _drop_table("netdev", name)
        + tables
        + _drop_table("inet", name, owner)
        + render_legacy_delete(cfg.vip)
    )
