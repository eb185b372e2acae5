"""The doctor's decisions for `--client` (pure): a host of the segment that talks to the VIP."""

from __future__ import annotations

from clusterip.doctor.checks import FAIL, OK, WARN, Check
from clusterip.doctor.facts import ClientFacts


def client_checks(c: ClientFacts) -> list[Check]:
    out = []
    advertised = sorted({adv for _src, adv in c.answers})
    name = f"{c.vip} arp" if ":" not in c.vip else f"{c.vip} nd"
    if len(advertised) > 1:
        out.append(
            Check(
                FAIL,
                name,
                f"answers carry {len(advertised)} MACs: {', '.join(advertised)}: an address "
                "conflict or nodes configured differently",
                "run clusterip doctor on the nodes",
            )
        )
    elif not advertised:
        out.append(
            Check(
                FAIL,
                name,
                "nobody answers for the VIP",
                "clusterip up / the agents on the nodes; same segment?",
            )
        )
    else:
        out.append(Check(OK, name, f"every answer carries {advertised[0]}"))
    usable = c.neighbour is not None and c.neighbour_state not in ("failed", "incomplete", "none")
    name = f"{c.vip} neighbour"
    if usable and advertised and c.neighbour not in advertised:
        out.append(
            Check(
                FAIL,
                name,
                f"entry {c.neighbour} ({c.neighbour_state}) is not what the cluster answers "
                f"({advertised[0]}): a node's own MAC leaked, or a stale entry",
                f"ip neigh del {c.vip} dev {c.interface}",
            )
        )
    elif usable:
        out.append(Check(OK, name, f"{c.neighbour} ({c.neighbour_state})"))
    elif len(advertised) == 1 and int(advertised[0][:2], 16) & 1:
        mac = advertised[0]
        out.append(
            Check(
                FAIL,
                name,
                f"no usable entry ({c.neighbour_state}) though answers carry {mac}: "
                "this host refuses a "
                "multicast MAC for a unicast address (RFC 1812 3.3.2, routers do)",
                f"--mac-mode unicast on the cluster, or: ip neigh replace {c.vip} lladdr {mac} dev "
                f"{c.interface} nud permanent",
            )
        )
    else:
        out.append(
            Check(FAIL, name, f"no usable entry ({c.neighbour_state})", "see the check above")
        )
    out.extend(_flows(c))
    return out


def _flows(c: ClientFacts) -> list[Check]:
    name = f"{c.vip} flows"
    if not c.flows:
        return []
    none = [p for p, macs in c.flows if not macs]
    twice = [(p, macs) for p, macs in c.flows if len(macs) > 1]
    out = []
    if twice:
        p, macs = twice[0]
        out.append(
            Check(
                FAIL,
                name,
                f"{len(twice)} of {len(c.flows)} test flows answered by several nodes "
                f"(port {p}: {', '.join(macs)}): the nodes disagree on the hash",
                "the same seed, node count and hashmode on every node (clusterip status on each)",
            )
        )
    if none:
        out.append(
            Check(
                FAIL if len(none) == len(c.flows) or twice else WARN,
                name,
                f"{len(none)} of {len(c.flows)} test flows answered by no node (port {c.port})",
                "a node misses its share, or nothing listens there: clusterip status on each node",
            )
        )
    by_bucket: dict[int, set[str]] = {}
    for p, macs in c.flows:
        if len(macs) == 1 and p in c.predicted:
            by_bucket.setdefault(c.predicted[p], set()).update(macs)
    split = {b: m for b, m in by_bucket.items() if len(m) > 1}
    if split:
        b, split_macs = next(iter(sorted(split.items())))
        out.append(
            Check(
                FAIL,
                name,
                f"bucket {b} (as `which` computes it) answered by {', '.join(sorted(split_macs))}",
                "the same seed, node count and hashmode on every node",
            )
        )
    if not out:
        nodes = len({m for _p, macs in c.flows for m in macs})
        out.append(
            Check(
                OK,
                name,
                f"{len(c.flows)} test flows, each answered by exactly one of {nodes} nodes",
            )
        )
    return out
