"""Collect the doctor's facts: thin I/O (libnftables, pyroute2, /proc, raw sockets, the agent's
control socket). Every decision is in clusterip.doctor.checks."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import time
from contextlib import suppress
from typing import Any

from clusterip.config import Address, VipConfig
from clusterip.doctor import rules, wire
from clusterip.doctor.facts import AgentDoc, ClientFacts, KernelFacts, VipFacts
from clusterip.state import VipState

IFA_F_NODAD, IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x02, 0x08, 0x40
TEST = "clusterip_doctor"
PROBES = {
    "netdev ingress": f"add table netdev {TEST}\nadd chain netdev {TEST} c "
    '{ type filter hook ingress device "lo" priority 0; }\n',
    "jhash": "meta mark set jhash ip saddr . th sport mod 4 seed 0x1 offset 1",
    "pkttype": "meta pkttype set host",
    "arp output": f"add table arp {TEST}\n"
    f"add chain arp {TEST} o {{ type filter hook output priority 0; }}\n"
    f"add rule arp {TEST} o arp saddr ether set 03:bf:00:00:00:01\n",
    "owner flag": f"add table inet {TEST} {{ flags owner; }}\n",
    "socket": f"add table inet {TEST}\n"
    f"add chain inet {TEST} p {{ type filter hook prerouting priority -150; }}\n"
    f"add rule inet {TEST} p socket transparent 1 accept\n",
}


def _try(script: str) -> str:
    """ "" if the kernel takes `script`. It runs as one transaction that also deletes the test
    tables it made: the kernel checks every object (and loads the modules it needs), and
    nothing stays. (nft's --check validates in user space only: it would not tell.)"""
    import nftables  # type: ignore[import-not-found,unused-ignore]

    tables = sorted(set(re.findall(r"add table (\w+) " + TEST + r"\b", script)))
    cleanup = "".join(f"delete table {family} {TEST}\n" for family in tables)
    rc, _out, err = nftables.Nftables().cmd(script + cleanup)
    return "" if rc == 0 else " ".join(str(err).split())[:200] or f"nft exit {rc}"


def kernel() -> KernelFacts:
    release = os.uname().release
    try:
        import nftables  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
    except ImportError as exc:
        return KernelFacts(release, libnftables=f"cannot import nftables: {exc}")
    chain = PROBES["netdev ingress"]
    probes = {}
    for name, text in PROBES.items():
        if name in ("jhash", "pkttype"):
            text = chain + f"add rule netdev {TEST} c {text}\n"
        probes[name] = _try(text)
    return KernelFacts(release, "", probes)


def _sysctl(path: str) -> int:
    try:
        with open("/proc/sys/" + path) as fh:
            return int(fh.read().strip())
    except (OSError, ValueError):
        return 0


def _conf(key: str, ifname: str) -> int:
    return max(_sysctl(f"net/ipv4/conf/all/{key}"), _sysctl(f"net/ipv4/conf/{ifname}/{key}"))


def rp_drops_total() -> int:
    """TcpExt IPReversePathFilter of /proc/net/netstat: packets rp_filter dropped."""
    try:
        with open("/proc/net/netstat") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return 0
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        if head.startswith("TcpExt:"):
            named = dict(zip(head.split()[1:], values.split()[1:], strict=False))
            return int(named.get("IPReversePathFilter", 0))
    return 0


def _addr_flags(ifname: str, vip: Address) -> frozenset[str]:
    from pyroute2 import IPRoute

    out: set[str] = set()
    with IPRoute() as ipr:
        for msg in ipr.get_addr(
            family=socket.AF_INET6, label=None, index=ipr.link_lookup(ifname=ifname)[0]
        ):
            if msg.get_attr("IFA_ADDRESS") == str(vip):
                flags = msg.get_attr("IFA_FLAGS") or msg["flags"]
                for bit, name in (
                    (IFA_F_NODAD, "nodad"),
                    (IFA_F_DADFAILED, "dadfailed"),
                    (IFA_F_TENTATIVE, "tentative"),
                ):
                    if flags & bit:
                        out.add(name)
    return frozenset(out)


def foreign_xdp(ifname: str) -> tuple[str, ...]:
    """An XDP program on the interface that is not clusterip's: it sees every frame before the
    ingress hook (what it redirects or drops never reaches it)."""
    try:
        from clusterip.xdp import filter as xdpf
        from clusterip.xdp import libbpf as bpf
        from clusterip.xdp.spec import PROG_NAME

        found = xdpf._attached(ifname)
        if found is None:
            return ()
        fd, how = found
        try:
            name = bpf.prog_info(fd)[0]
        finally:
            os.close(fd)
    except Exception:  # no libbpf here, no XDP: nothing to report
        return ()
    if name == PROG_NAME:
        return ()
    return (f"XDP program {name!r} ({how}) on {ifname}, not clusterip's",)


def _promiscuous(ifname: str) -> bool:
    from pyroute2 import IPRoute

    iff_promisc = 0x100
    with IPRoute() as ipr:
        return bool(ipr.get_links(ipr.link_lookup(ifname=ifname)[0])[0]["flags"] & iff_promisc)


def own_address(ifname: str, version: int, skip: Address | None = None) -> Address | None:
    """The interface's first address of that family (not `skip`, the VIP; IPv6: link-local
    first, as ND uses it)."""
    from pyroute2 import IPRoute

    family = socket.AF_INET6 if version == 6 else socket.AF_INET
    found: list[Address] = []
    with IPRoute() as ipr:
        for msg in ipr.get_addr(family=family, index=ipr.link_lookup(ifname=ifname)[0]):
            addr = ipaddress.ip_address(msg.get_attr("IFA_ADDRESS"))
            if addr != skip and not addr.is_multicast:
                found.append(addr)
    found.sort(key=lambda a: not a.is_link_local)
    return found[0] if found else None


def node(st: VipState | None, cfg: VipConfig, window: float = 1.0) -> VipFacts:
    """This node's facts for one VIP (`st`: its tables as read, None if absent)."""
    from clusterip.link import NetlinkLink, holds_mac
    from clusterip.nft import NftFirewall
    from clusterip.state import parse_tables

    link = NetlinkLink()
    ifname = cfg.interface
    fw = NftFirewall()

    def counters() -> dict[str, int]:
        for s in parse_tables(fw.ruleset(counters=True)):
            if s.config.vip == cfg.vip:
                return {k: int(c["packets"]) for k, c in s.counters.items()}
        return {}

    drops0 = rp_drops_total()
    before = counters()
    time.sleep(window)
    after = counters()
    drops = rp_drops_total() - drops0
    found = rules.scan(fw.list_objects("ruleset"), str(cfg.vip), cfg.version, ifname)
    own_mac = link.own_mac(ifname)
    names = {
        str(o["table"]["family"])
        for o in fw.ruleset(counters=False)
        if "table" in o
        and o["table"]["name"] == f"clusterip_{str(cfg.vip).replace('.', '_').replace(':', '_')}"
    }
    answers: list[tuple[str, str]] = []
    probed = True
    try:
        answers = wire.who_answers(
            ifname, own_mac, own_address(ifname, cfg.version, cfg.vip), cfg.vip
        )
    except OSError:
        probed = False
    plan = cfg.mac_plan
    return VipFacts(
        vip=str(cfg.vip),
        interface=ifname,
        version=cfg.version,
        mac_mode=cfg.mac_mode,
        clustermac=cfg.clustermac,
        group=str(plan.group) if plan.group is not None else None,
        mode=st.mode if st is not None else "none",
        own_mac=own_mac,
        tables="netdev" in names,
        neighbour_table=("arp" if cfg.version == 4 else "ip6") in names,
        has_address=link.has_address(ifname, cfg.vip),
        addr_flags=_addr_flags(ifname, cfg.vip) if cfg.version == 6 else frozenset(),
        mac_held=holds_mac(link, cfg),
        promiscuous=_promiscuous(ifname),
        counters_before=before,
        counters_after=after,
        window=window,
        rp_filter=_conf("rp_filter", ifname) if cfg.version == 4 else None,
        rp_drops=drops,
        arp_ignore=_conf("arp_ignore", ifname),
        arp_announce=_conf("arp_announce", ifname),
        other_drops=found.drops,
        other_policies=found.policies,
        offloads=found.offloads + foreign_xdp(ifname),
        answers=tuple(answers),
        probed=probed,
    )


def agent_docs() -> list[AgentDoc]:
    """This namespace's agent's VIPs (none when no agent runs)."""
    from clusterip.reactor.control import NoAgent, request

    try:
        doc: dict[str, Any] = request("status")
    except (NoAgent, OSError):
        return []
    return list(doc.get("vips", []))


def _neighbour(ifname: str, vip: Address) -> tuple[str | None, str]:
    from pyroute2 import IPRoute

    states = {
        0x01: "incomplete",
        0x02: "reachable",
        0x04: "stale",
        0x08: "delay",
        0x10: "probe",
        0x20: "failed",
        0x40: "noarp",
        0x80: "permanent",
    }
    with IPRoute() as ipr:
        for msg in ipr.get_neighbours(dst=str(vip), ifindex=ipr.link_lookup(ifname=ifname)[0]):
            state = states.get(msg["state"], str(msg["state"]))
            return msg.get_attr("NDA_LLADDR"), state
    return None, "none"


def client(vip: Address, ifname: str, port: int, flows: int = 16) -> ClientFacts:
    """This host as a client: make the kernel resolve the VIP (a datagram to its discard
    port), ask the segment ourselves, then open a few test flows."""
    from clusterip.link import NetlinkLink

    family = socket.AF_INET6 if vip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s, suppress(OSError):
        s.sendto(b"clusterip doctor", (str(vip), 9))
    own_mac = NetlinkLink().own_mac(ifname)
    answers = wire.who_answers(ifname, own_mac, own_address(ifname, vip.version), vip, wait=1.5)
    lladdr, state = _neighbour(ifname, vip)
    tested = wire.flow_answers(ifname, vip, port, count=flows)
    return ClientFacts(
        vip=str(vip),
        interface=ifname,
        neighbour=lladdr,
        neighbour_state=state,
        answers=tuple(answers),
        port=port,
        flows=tuple((p, tuple(sorted(m))) for p, m in sorted(tested.items())),
    )
