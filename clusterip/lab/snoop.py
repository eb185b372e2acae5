"""The lab switch's IGMP/MLD snooping, as switches that snoop into their MAC tables do it.

The Linux bridge snoops (`mcast_snooping 1`, with `mcast_querier 1` it is the segment's
querier): it learns from the hosts' own IGMP/MLD reports which port joined which group, and
answers for nobody. But it forwards a multicast *frame* by the IP destination inside it: a frame
to a group's MAC that carries a unicast IP packet (what a cluster MAC carries) matches no group
and is flooded. Many hardware switches instead program the group's MAC into their MAC table
(Microsoft NLB's IGMP mode relies on it): every frame to that MAC goes to the member ports only.

Worse, once the bridge's querier is established (about 10 s after the bridge comes up, checked
here), a frame to *any* multicast MAC that carries a unicast IP packet goes to multicast-router
ports only: a Linux bridge that snoops with a querier delivers neither multicast nor igmp
mode's VIP frames to the nodes (unicast mode is unaffected). So the lab's snooping switch makes
every port a permanent router port (`multicast_router 2`: the bridge hands such frames to all
ports) and does the MAC-table part itself.

This process models those switches: in the switch namespace it reads the bridge's group memberships
(its mdb, every POLL seconds) and keeps an nft `bridge` table in step, which drops a frame to a
joined group's MAC on every port that did not join (one transaction per change). Frames to a
multicast MAC that no port joined (multicast mode's 03:bf:...) are flooded, as by any switch.
Membership reports and leaves go to no other host (RFC 4541 2.1.1: only to router ports, and
the switch is the querier here): a host that heard another member's IGMPv2 report would not
report, and then not send a leave either.

    python -m clusterip.lab.snoop --bridge br0     (in the switch namespace; the lab starts it)

The decisions (`members`, `render_sync`) are pure. Reading the mdb uses iproute2's `bridge -j
mdb show` (pyroute2 has no mdb messages); this is lab code, never the product's.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from clusterip.lab.errors import LabError
from clusterip.macmode import group_mac

if TYPE_CHECKING:
    from clusterip.lab.net import Lab

TABLE = "lab_snoop"
POLL = 0.1

Members = dict[str, frozenset[str]]  # group MAC -> ports that joined a group with that MAC


def render_table() -> str:
    """The switch's table: frames to a joined group's MAC leave by member ports only."""
    return f"""add table bridge {TABLE}
flush table bridge {TABLE}
table bridge {TABLE} {{
	set groups {{
		type ether_addr
	}}
	set members {{
		type ether_addr . ifname
	}}
	counter constrained {{
	}}
	chain forward {{
		type filter hook forward priority 0; policy accept;
		ip protocol igmp drop
		icmpv6 type {{ mld-listener-report, mld-listener-done, mld2-listener-report }} drop
		ether daddr @groups ether daddr . oifname != @members counter name "constrained" drop
	}}
}}
"""


def members(entries: Iterable[Mapping[str, Any]]) -> Members:
    """Group MAC -> member ports, from the mdb entries (`bridge -j mdb show`'s "mdb" list)."""
    out: dict[str, set[str]] = {}
    for e in entries:
        port, grp = e.get("port"), e.get("grp")
        if not port or not grp:
            continue
        try:
            mac = group_mac(ipaddress.ip_address(grp))
        except ValueError:  # an L2 entry names its MAC itself
            mac = str(grp).lower()
        out.setdefault(mac, set()).add(str(port))
    return {mac: frozenset(ports) for mac, ports in out.items()}


def render_sync(new: Members) -> str:
    """One transaction that makes the table's sets `new`."""
    out = [f"flush set bridge {TABLE} groups\n", f"flush set bridge {TABLE} members\n"]
    if new:
        out.append(f"add element bridge {TABLE} groups {{ {', '.join(sorted(new))} }}\n")
        pairs = sorted(f'{mac} . "{p}"' for mac, ports in new.items() for p in ports)
        out.append(f"add element bridge {TABLE} members {{ {', '.join(pairs)} }}\n")
    return "".join(out)


def parse_mdb(text: str) -> list[dict[str, Any]]:
    """The mdb entries of `bridge -j mdb show` (a list of {"mdb": [...], "router": ...})."""
    doc = json.loads(text or "[]")
    out: list[dict[str, Any]] = []
    for part in doc if isinstance(doc, list) else [doc]:
        out.extend(part.get("mdb", []) or [])
    return out


def read_mdb(bridge: str) -> list[dict[str, Any]]:
    done = subprocess.run(
        ["bridge", "-j", "mdb", "show", "dev", bridge], capture_output=True, text=True, check=True
    )
    return parse_mdb(done.stdout)


PORT_TABLE = "lab_ports"


def render_port_counters(ports: Iterable[str], vips: Iterable[str]) -> str:
    """Count, per switch port, the frames to the VIPs the switch sends out of it (after the
    snooping's drop: what the port's host receives). Loading it again starts from zero."""
    names = sorted(ports)
    matches = [f"{'ip6' if ':' in v else 'ip'} daddr {v}" for v in vips]
    counters = "".join(f"\tcounter port_{p} {{\n\t}}\n" for p in names)
    rules = "".join(
        f'\t\toifname "{p}" {m} counter name "port_{p}"\n' for p in names for m in matches
    )
    return (
        f"add table bridge {PORT_TABLE}\ndelete table bridge {PORT_TABLE}\n"
        f"table bridge {PORT_TABLE} {{\n{counters}\tchain forward {{\n"
        "\t\ttype filter hook forward priority 10; policy accept;\n"
        f"{rules}\t}}\n}}\n"
    )


def parse_port_counters(text: str) -> dict[str, int]:
    """Port -> frames, from `nft -j list table bridge lab_ports`."""
    out: dict[str, int] = {}
    for obj in json.loads(text)["nftables"]:
        counter = obj.get("counter")
        if counter and str(counter["name"]).startswith("port_"):
            out[str(counter["name"])[len("port_") :]] = int(counter["packets"])
    return out


# --- the lab's side (clusterip.lab.net.Lab builds with it; tests and benches read it) --------
def start_snooping(lab: Lab) -> None:
    """The switch's MAC-table snooping, this module as a process of the lab, once its table
    is in."""
    argv = [sys.executable, "-m", "clusterip.lab.snoop", "--bridge", lab.topo.bridge]
    proc = lab.spawn(
        lab.topo.switch_ns, argv, role="snoop", stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
        raise LabError(f"the lab switch's snooping did not start: {err.strip()[-300:]}")
    proc.stdout.close()


def count_port_frames(lab: Lab, vips: Iterable[str] | None = None) -> None:
    """Start counting, per switch port, the frames to the VIPs the switch delivers there
    (from zero; `port_frames()` reads them)."""
    ports = [p for p, _ in lab.topo.ports()]
    lab.ops.nft(lab.topo.switch_ns, render_port_counters(ports, vips or [lab.topo.vip]))


def port_frames(lab: Lab) -> dict[str, int]:
    """Switch port -> frames to the VIPs delivered there since `count_port_frames()`."""
    argv = ["nft", "-j", "list", "table", "bridge", PORT_TABLE]
    done = lab.run(lab.topo.switch_ns, argv, timeout=10, check=True)
    return parse_port_counters(done.stdout)


def mdb_ports(lab: Lab, group: str) -> set[str]:
    """The switch ports that joined `group`, as the bridge's snooping learnt them."""
    done = lab.run(lab.topo.switch_ns, ["bridge", "-j", "mdb", "show"], timeout=10, check=True)
    return {e["port"] for e in parse_mdb(done.stdout) if e.get("grp") == group}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bridge", default="br0")
    args = ap.parse_args(argv)
    from clusterip.nft import NftFirewall

    apply = NftFirewall().apply
    apply(render_table())
    current: Members = {}
    print("ready", flush=True)
    while True:
        now = members(read_mdb(args.bridge))
        if now != current:
            apply(render_sync(now))
            current = now
        time.sleep(POLL)


if __name__ == "__main__":
    sys.exit(main())
