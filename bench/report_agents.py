"""Parts of the report for the agent's own costs (idle CPU, flood, the pure core, partitions,
IPv6), and keeping the sections of parts a run did not measure from the previous page."""

from __future__ import annotations

import re
from typing import Any

from bench.report_parts import external_section, table

KEPT = (
    "*Kept from the previous page: this invocation did not measure it (its figures, commands "
    "and machine load are those of the run that did).*\n\n"
)


def sections_of(page: str) -> dict[str, str]:
    """A generated page's `## ` sections: title -> body (without the heading line)."""
    out: dict[str, str] = {}
    parts = re.split(r"^## (.+)\n", page, flags=re.MULTILINE)
    for title, body in zip(parts[1::2], parts[2::2], strict=True):
        out[title.strip()] = body.strip("\n") + "\n"
    return out


def kept(previous: dict[str, str], title: str) -> list[str]:
    """The section `title` of the previous page, marked as kept (nothing if it had none)."""
    body = previous.get(title)
    if body is None or body.startswith("**Pending.**"):
        return []
    if not body.startswith(KEPT[:20]):
        body = KEPT + body
    return [f"## {title}\n", body]


def load_line(data: dict[str, Any]) -> str:
    """The machine's load around a part's run (bench/__main__.py adds it), one line."""
    load = data.get("load")
    if not load:
        return ""
    a, b = load["loadavg"]
    by = f"\nProduced by `{data['run_by']}`.\n" if data.get("run_by") else ""
    return by + (
        f"\nMachine load during this part: load average (1, 5, 15 min) {a['1m']:.2f} "
        f"{a['5m']:.2f} {a['15m']:.2f} at the start, {b['1m']:.2f} {b['5m']:.2f} "
        f"{b['15m']:.2f} at the end; both CPUs {load['machine_busy']:.0%} busy on average.\n"
    )


def corecost_section(data: dict[str, Any]) -> str:
    rows = [
        [
            r["members"],
            f"{r['bytes']} B",
            f"{r['per_heartbeat_us']:.1f}",
            f"{r['hmac_only_us']:.1f}",
            f"{r['per_heartbeat_us'] / r['hmac_only_us']:.1f}×" if r["hmac_only_us"] else "-",
            f"{r['per_full_tick_us']:.1f}",
            f"{r['per_send_us']:.1f}",
        ]
        for r in data["rows"]
    ]
    return (
        "CPU of the pure core (`clusterip/core`, no sockets, no syscalls) per received "
        "heartbeat of a settled cluster (`receive` then `step`, as the agent calls them), "
        "beside HMAC-SHA256 verification of the same datagrams alone (the floor: every "
        f"message is verified); {data.get('seconds_recorded', '?')} s of simulated traffic "
        "recorded per size. µs of CPU, best of three for the micro-measures:\n\n"
        + table(
            [
                "members",
                "datagram",
                "µs per heartbeat",
                "HMAC alone µs",
                "vs HMAC",
                "full tick µs",
                "send µs",
            ],
            rows,
        )
    )


def ipv6_section(data: dict[str, Any]) -> str:
    from bench import ipv6

    text = (
        "A dual-stack lab (3 nodes): both VIPs up at once (static mode), wrk through each and, "
        "as the control, straight to node 1's own address of each family, interleaved round by "
        "round; ratios per round, median [95% interval]. Failover: 3 agents for the IPv6 VIP, "
        "kill -9 again and again, time from each kill to each orphaned client's first answer.\n\n"
        + ipv6.table(data)
        + "\n"
    )
    f = data.get("failover")
    if f:
        text += (
            f"\nFalse alarms during the failover runs: {f.get('false_alarms')}; other clients' "
            f"failed requests: {f.get('other_clients_failed_requests')}.\n"
        )
    return text


PARTITION = (
    "Each system serves one VIP from 3 nodes to 40 client addresses (long-lived TCP "
    "connections, UDP flows, new connections all along) while one node is cut off for {s:g} s, "
    "then healed; the partitions alternate between *cut* (the node's switch port down) and "
    "*split* (only heartbeats, or VRRP adverts, dropped in the switch: clients still reach "
    "every node). clusterip cuts node 3; VRRP (keepalived, default timers, preemption) cuts its "
    "master, the only node that serves. *heal → all answered once*: from the heal until every "
    "client's UDP flow is answered by exactly one node again; *broken on untouched nodes*: "
    "long-lived connections of nodes the partition did not touch (VRRP: the backups, which hold "
    "the connections opened while the master was away); *VIP unreachable before the partition*: "
    "the clients could not open their connections when the partition was to begin (counted, "
    "not measured). `bench/partition.py`.\n\n"
)


def agent_section(key: str, data: dict[str, Any] | None) -> str:
    """An external part's section: the special renderings, else the generic table."""
    if data is None or "error" in data:
        return external_section(key, data)
    if key == "corecost" and "rows" in data and "columns" not in data:
        text = corecost_section(data)
    elif key == "ipv6":
        text = ipv6_section(data)
    elif key == "partition":
        return (
            PARTITION.format(s=data.get("seconds", 5.0))
            + external_section(key, data)
            + (load_line(data))
        )
    else:
        return external_section(key, data) + load_line(data)
    if data.get("command"):
        text += f"\nRerun: `{data['command']}`\n"
    return text + load_line(data)
