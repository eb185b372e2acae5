"""The doctor's decisions: pure functions from facts (clusterip.doctor.facts) to checks.

Each check has a status (OK, WARN, FAIL), a one-line finding and, unless OK, a one-line fix.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from clusterip.doctor.facts import AgentDoc, Answer, KernelFacts, VipFacts

OK, WARN, FAIL = "OK", "WARN", "FAIL"
EXIT = {OK: 0, WARN: 1, FAIL: 2}
MIN_KERNEL = (5, 12)


@dataclass(frozen=True)
class Check:
    status: str
    name: str
    message: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix and self.status != OK else ""
        return f"{self.status:<4}  {self.name}: {self.message}{fix}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def exit_code(checks: Iterable[Check]) -> int:
    return max((EXIT[c.status] for c in checks), default=0)


def _version(release: str) -> tuple[int, int]:
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


# --- kernel and tools -------------------------------------------------------------------------
PROBE_FIX = {
    "netdev ingress": "a kernel >= 5.12 with CONFIG_NF_TABLES_NETDEV (modprobe nf_tables)",
    "jhash": "modprobe nft_hash (CONFIG_NFT_HASH)",
    "pkttype": "a kernel with nft meta set pkttype (CONFIG_NF_TABLES, nft_meta)",
    "arp output": "modprobe nf_tables with CONFIG_NF_TABLES_ARP",
    "owner flag": "a kernel >= 5.12 (agents need owner-flagged tables)",
    "socket": "modprobe nft_socket (only clusterip/1 rules used it)",
}
OPTIONAL_PROBES = {"socket"}


def kernel_checks(k: KernelFacts) -> list[Check]:
    out = []
    if _version(k.release) >= MIN_KERNEL:
        out.append(Check(OK, "kernel", f"Linux {k.release} (>= 5.12)"))
    else:
        out.append(
            Check(FAIL, "kernel", f"Linux {k.release} is older than 5.12", "Linux 5.12 or later")
        )
    if k.libnftables:
        out.append(
            Check(FAIL, "libnftables", k.libnftables, "apt install python3-nftables (libnftables)")
        )
    else:
        out.append(Check(OK, "libnftables", "the python3-nftables binding loads"))
    for feature, error in sorted(k.probes.items()):
        if not error:
            out.append(Check(OK, f"nft {feature}", "the kernel accepts it"))
        else:
            status = WARN if feature in OPTIONAL_PROBES else FAIL
            out.append(Check(status, f"nft {feature}", error, PROBE_FIX.get(feature, "")))
    return out


# --- this node --------------------------------------------------------------------------------
def _mac_fix(v: VipFacts) -> str:
    if v.mac_mode == "unicast":
        fdb = f"bridge fdb add {v.clustermac} dev {v.interface} self permanent"
        return f"clusterip up again, or: {fdb}"
    if v.mac_mode == "igmp":
        plen = 32 if v.version == 4 else 128
        return f"clusterip up again, or: ip addr add {v.group}/{plen} dev {v.interface} autojoin"
    return f"clusterip up again, or: ip maddr add {v.clustermac} dev {v.interface}"


def node_checks(v: VipFacts) -> list[Check]:
    out: list[Check] = []
    name = f"{v.vip}"
    if not v.tables or not v.neighbour_table:
        what = "netdev" if not v.tables else ("arp" if v.version == 4 else "ip6")
        out.append(
            Check(
                FAIL,
                f"{name} tables",
                f"the VIP's {what} table is missing",
                "clusterip up (or restart the agent)",
            )
        )
    else:
        out.append(
            Check(
                OK,
                f"{name} tables",
                f"netdev and {'arp' if v.version == 4 else 'ip6'} tables present ({v.mode})",
            )
        )
    if v.has_address:
        out.append(Check(OK, f"{name} address", f"on {v.interface}"))
    else:
        out.append(
            Check(
                FAIL,
                f"{name} address",
                f"not on {v.interface}: the stack answers nothing",
                "clusterip up again",
            )
        )
    if v.version == 6 and v.has_address:
        if "dadfailed" in v.addr_flags or "tentative" in v.addr_flags:
            bad = "dadfailed" if "dadfailed" in v.addr_flags else "tentative"
            out.append(
                Check(
                    FAIL,
                    f"{name} nodad",
                    f"the address is {bad}: duplicate address detection ran on it",
                    f"ip -6 addr replace {v.vip}/128 dev {v.interface} nodad preferred_lft 0",
                )
            )
        elif "nodad" not in v.addr_flags:
            out.append(
                Check(
                    WARN,
                    f"{name} nodad",
                    "the address was added without nodad: DAD fails on all but one node",
                    f"ip -6 addr replace {v.vip}/128 dev {v.interface} nodad preferred_lft 0",
                )
            )
        else:
            out.append(Check(OK, f"{name} nodad", "added nodad"))
    where = "unicast filter" if v.mac_mode == "unicast" else "multicast list"
    group = f" (group {v.group} joined)" if v.group else ""
    if v.mac_held:
        out.append(
            Check(
                OK,
                f"{name} mac filter",
                f"{v.clustermac} in {v.interface}'s {where}{group} ({v.mac_mode} mode)",
            )
        )
    else:
        out.append(
            Check(
                FAIL,
                f"{name} mac filter",
                f"{v.clustermac} is not in {v.interface}'s {where}"
                f"{' or the group is not joined' if v.group else ''}: "
                "the NIC drops the VIP's frames",
                _mac_fix(v),
            )
        )
    if v.mac_held and v.mac_mode == "unicast" and v.promiscuous:
        out.append(
            Check(WARN, f"{name} promiscuous",
                  f"{v.interface} is promiscuous (a NIC without a unicast filter: the kernel "
                  "turned it on for the cluster MAC): it takes every frame of the segment",
                  "a NIC with a unicast filter, or --mac-mode multicast/igmp")
        )  # fmt: skip
    out.append(_counters(v))
    out.extend(_sysctls(v))
    out.extend(_others(v))
    return out


VIP_COUNTERS = ("accepted", "foreign", "kept", "midflow", "fragments", "down")


def _counters(v: VipFacts) -> Check:
    seen = sum(v.counters_after.get(c, 0) - v.counters_before.get(c, 0) for c in VIP_COUNTERS)
    mine = v.counters_after.get("accepted", 0) - v.counters_before.get("accepted", 0)
    name = f"{v.vip} counters"
    if not v.tables:
        return Check(FAIL, name, "no tables, no counters", "clusterip up")
    down = v.counters_after.get("down", 0) - v.counters_before.get("down", 0)
    if down > 0:
        return Check(
            FAIL,
            name,
            f"{down} VIP packets dropped in {v.window:g} s: the agent is gone and no lease",
            "start the agent (clusterip agent ...), or clusterip down",
        )
    if seen == 0:
        ever = sum(v.counters_after.get(c, 0) for c in VIP_COUNTERS)
        if ever:  # an idle cluster: packets did reach this node before
            idle = f"idle: no VIP packet in {v.window:g} s, {ever} since the tables were made"
            return Check(OK, name, idle)
        return Check(
            WARN,
            name,
            f"no VIP packet has ever reached this node ({v.window:g} s watched)",
            "no client traffic yet, or the switch does not deliver the cluster MAC here",
        )
    return Check(OK, name, f"{seen} VIP packets in {v.window:g} s, {mine} accepted here")


def _sysctls(v: VipFacts) -> list[Check]:
    out = []
    name = f"{v.vip} rp_filter"
    if v.rp_filter is not None:
        if v.rp_drops > 0 and v.rp_filter:
            out.append(
                Check(
                    FAIL,
                    name,
                    f"rp_filter={v.rp_filter} on {v.interface} dropped {v.rp_drops} packets in "
                    f"{v.window:g} s "
                    "(their source routes out of another interface)",
                    "sysctl -w net.ipv4.conf.all.rp_filter=2 "
                    f"net.ipv4.conf.{v.interface}.rp_filter=2 (loose)",
                )
            )
        else:
            out.append(
                Check(
                    OK, name, f"rp_filter={v.rp_filter}, no packet dropped by it in {v.window:g} s"
                )
            )
    if v.version == 4:
        name = f"{v.vip} arp_ignore"
        if v.arp_ignore == 8:
            out.append(
                Check(
                    FAIL,
                    name,
                    f"arp_ignore=8 on {v.interface}: ARP for the VIP is never answered",
                    f"sysctl -w net.ipv4.conf.{v.interface}.arp_ignore=0",
                )
            )
        elif v.arp_ignore == 2:
            out.append(
                Check(
                    FAIL,
                    name,
                    f"arp_ignore=2 on {v.interface}: the VIP ({v.vip}/32) is answered only to "
                    "senders in its own subnet: it hides the VIP",
                    f"sysctl -w net.ipv4.conf.{v.interface}.arp_ignore=1",
                )
            )
        else:
            out.append(
                Check(
                    OK,
                    name,
                    f"arp_ignore={v.arp_ignore}, arp_announce={v.arp_announce} "
                    "(ARP with the VIP as sender carries the cluster MAC: rewritten)",
                )
            )
    return out


def _others(v: VipFacts) -> list[Check]:
    out = []
    name = f"{v.vip} other tables"
    if v.other_drops:
        out.append(
            Check(
                FAIL,
                name,
                f"drops the VIP's traffic: {v.other_drops[0]}"
                + (f" (and {len(v.other_drops) - 1} more)" if len(v.other_drops) > 1 else ""),
                "accept the VIP's traffic there, before that rule",
            )
        )
    elif v.other_policies:
        out.append(
            Check(
                WARN,
                name,
                f"policy drop on the VIP's path: {', '.join(v.other_policies)}",
                "make sure a rule there accepts the VIP's service",
            )
        )
    else:
        out.append(Check(OK, name, "no other table drops the VIP's traffic"))
    if v.offloads:
        out.append(
            Check(
                WARN,
                f"{v.vip} offloads",
                f"may bypass the ingress hook: {', '.join(v.offloads)}",
                "remove them from the cluster interface",
            )
        )
    else:
        out.append(Check(OK, f"{v.vip} offloads", "nothing bypasses the ingress hook"))
    return out


# --- the segment --------------------------------------------------------------------------------
CLUSTER_PREFIXES = ("03:bf:", "03:b6:", "02:bf:", "02:b6:", "01:00:5e:", "33:33:")


def _who(mac: str) -> str:
    if mac.startswith(CLUSTER_PREFIXES) or int(mac[:2], 16) & 1:
        return "a node with another cluster MAC (another --mac-mode or --clustermac)"
    return "another host holds the VIP (address conflict)"


def segment_checks(
    vip: str, clustermac: str, answers: Sequence[Answer], *, probed: bool = True
) -> list[Check]:
    """Who answered our ARP request (NS) for the VIP: only the cluster MAC is right."""
    name = f"{vip} segment"
    if not probed:
        return [
            Check(WARN, name, "could not probe the segment (no raw socket)", "run doctor as root")
        ]
    strangers = sorted({adv for _src, adv in answers if adv != clustermac})
    if strangers:
        sources = sorted({src for src, adv in answers if adv in strangers})
        return [
            Check(
                FAIL,
                name,
                f"{', '.join(strangers)} answers for {vip} (from {', '.join(sources)}): "
                f"{_who(strangers[0])}",
                "find that host (its MAC above): remove the VIP there, or align its settings",
            )
        ]
    if not answers:
        return [Check(OK, name, "no other host answers for the VIP (no other node either)")]
    nodes = len({src for src, _ in answers})
    return [Check(OK, name, f"{nodes} other node(s) answer with {clustermac}, nothing else does")]


# --- the agent ----------------------------------------------------------------------------------
def agent_checks(doc: AgentDoc) -> list[Check]:
    vip = doc["vip"]
    out = []
    counted = [m for m in doc.get("members", []) if m.get("counted")]
    ids = ", ".join(str(m["id"]) for m in counted) or "none"
    state = doc.get("state", "?")
    if state in ("passive", "isolated"):
        out.append(
            Check(
                FAIL,
                f"{vip} agent",
                f"this node is {state}: {doc.get('reason', '')}",
                "fix what the reason names; `clusterip resume --force` ends an isolation",
            )
        )
    else:
        out.append(Check(OK, f"{vip} agent", f"{state}, members heard: {ids}"))
    for r in doc.get("refused", []):
        cause = r.get("cause", "")
        who = f"node {r.get('node_id')} ({r.get('address')})"
        if cause == "foreign_fingerprint":
            differs = r.get("detail", "").partition("differs in ")[2]
            what = f"differs in {differs}" if differs else r.get("detail", "")
            out.append(
                Check(
                    FAIL,
                    f"{vip} peers",
                    f"foreign-fingerprint peer {who}: {what}",
                    "give every node the same settings (the values named above)",
                )
            )
        elif cause == "duplicate_node_id":
            out.append(
                Check(
                    FAIL,
                    f"{vip} peers",
                    f"duplicate node id: {who}",
                    "give every node its own --node-id",
                )
            )
        elif cause == "bad_mac":
            out.append(
                Check(
                    FAIL,
                    f"{vip} peers",
                    f"{who} sends with another key or forged: {r.get('detail', '')}",
                    "the same --key-file on every node",
                )
            )
        else:
            out.append(
                Check(
                    WARN,
                    f"{vip} peers",
                    f"{who}: {cause} x{r.get('count')}: {r.get('detail', '')}",
                    "look at that sender",
                )
            )
    if not any(c.name == f"{vip} peers" for c in out):
        out.append(Check(OK, f"{vip} peers", "no refused sender"))
    return out
