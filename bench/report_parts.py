"""Parts of the report: table helpers and the evenness, control-plane and external sections."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any


def table(columns: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "|".join("---" for _ in columns) + "|\n"
    return head + "".join("| " + " | ".join(str(c) for c in r) + " |\n" for r in rows)


def rng(s: dict[str, Any], fmt: str = "{:,.0f}", scale: float = 1.0) -> str:
    """'median (min-max)' of a summary."""
    med, lo, hi = (fmt.format(s[k] * scale) for k in ("median", "min", "max"))
    return f"{med} ({lo}–{hi})"


def ratio_cell(r: dict[str, Any]) -> str:
    return f"{r['median']:.3f} ({r['min']:.3f}–{r['max']:.3f})"


def ci_cell(r: dict[str, Any]) -> str:
    lo, hi = r.get("ci95", (r["min"], r["max"]))
    return f"{r['median']:.3f} [{lo:.3f}–{hi:.3f}]"


EXTERNAL = {
    "failover": ("Failover", "failover.json"),
    "vrrp": ("Failover baseline: keepalived VRRP", "vrrp.json"),
    "rebalancing": ("Rebalancing", "rebalance.json"),
    "agent_idle": ("Agent CPU at idle", "idlecpu.json"),
    "falsealarm": ("False alarms under load", "falsealarm.json"),
    "macmodes": ("MAC modes", "macmodes.json"),
    "flood": ("Cost of a hostile flood", "flood.json"),
    "corecost": ("The pure core's cost per heartbeat", "corecost.json"),
    "partition": ("Partitions that heal: clusterip beside keepalived VRRP", "partition.json"),
    "ipv6": ("IPv6 beside IPv4", "ipv6.json"),
}
AGENT_KEYS = ("failover", "vrrp", "falsealarm", "rebalancing", "agent_idle", "flood",
              "corecost", "partition", "ipv6", "macmodes")  # fmt: skip


def evenness_section(results: dict[str, Any], figs: dict[str, str]) -> str:
    ev = results["evenness"]
    fl = ev["flows"]
    counts = fl["node_counts"]
    cols = ["clients", "hashmode", *(f"N={n}" for n in counts)]
    rows = []
    for label, data in fl["static"].items():
        who = "random addresses" if label == "random" else "one address (NAT)"
        for mode, values in data.items():
            rows.append([who, mode, *(f"{v:.3f}" for v in values)])
    rows.append(["(reference)", "ideal random placement", *(f"{v:.3f}" for v in fl["ideal"])])
    text = (
        f"Flows per node, max/mean over {fl['flows']:,} flows to port 80 (static mode: N "
        f"buckets, one per node; seed {ev['seed']}, computed with `clusterip.hashing`, the "
        "kernel's jhash bit for bit):\n\n" + table(cols, rows)
    )
    ag = ev["agent"]
    if ag.get("status") == "ok":
        pick = {2, 3, 4, 5, 8, 16, 31, 32, 33, 48, 63, 64}
        arows = [
            [
                r["nodes"],
                f"{r['buckets_max_over_mean']:.4f}",
                f"{r['buckets_min']}–{r['buckets_max']}",
                f"{r['flows_sourceip']:.3f}",
                f"{r['flows_sourceip-sourceport']:.3f}",
                f"{r['flows_sourceip-sourceport-destport']:.3f}",
            ]
            for r in ag["rows"]
            if r["nodes"] in pick
        ]
        worst = max(ag["rows"], key=lambda r: r["buckets_max_over_mean"])
        text += (
            f"\nWith the agent's assignment (`clusterip.core.assign.assign`, "
            f"{ag['buckets']} buckets, equal weights), all node counts 2-64 computed; the "
            f"worst is {worst['buckets_max_over_mean']:.4f} at {worst['nodes']} nodes:\n\n"
            + table(
                [
                    "nodes",
                    "buckets max/mean",
                    "buckets per node",
                    "flows sourceip",
                    "flows sourceip-sourceport",
                    "flows …-destport",
                ],
                arows,
            )
        )
    else:
        text += (
            f"\nBuckets per node with the agent's assignment: **pending** ({ag.get('reason')}).\n"
        )
    lab = ev["lab"]
    lrows = [
        [
            m,
            r["answered"],
            f"{r['as_predicted']} / {r['answered']}",
            r["per_node"],
            f"{r['max_over_mean']:.3f}",
        ]
        for m, r in lab.items()
    ]
    text += (
        f"\nConfirmed in the lab: 3 nodes, {ev['lab_sources']} client addresses, TCP requests "
        "with `Lab.probe`; every answer compared with the prediction:\n\n"
        + table(
            ["hashmode", "answered", "as predicted", "per node (n1, n2, n3)", "max/mean"], lrows
        )
    )
    if "evenness" in figs:
        text += f"\n![evenness]({os.path.basename(figs['evenness'])})\n"
    return text


def control_section(results: dict[str, Any]) -> str:
    c = results["control"]
    ms = "{:.1f}"
    rows = [
        ["`" + c["cli"]["commands"][0] + "` (whole CLI process)", rng(c["cli"]["take_s"], ms, 1e3)],
        [
            "`" + c["cli"]["commands"][1] + "` (whole CLI process)",
            rng(c["cli"]["release_s"], ms, 1e3),
        ],
    ]
    for a in c["apply"]:
        rows.append(
            [
                f"`NftFirewall().apply(render(...))`, {a['modulus']} buckets ({a['owned']} owned)",
                rng(a["apply_s"], "{:.2f}", 1e3),
            ]
        )
    rows.append(["agent CPU at idle", "see *Agent CPU at idle* below"])
    return table(["one ownership change (one nft transaction)", "ms, median (min–max)"], rows)


XDP_LABEL = {"auto": "auto (XDP pre-filter, as shipped)", "off": "off (nft alone)", "on": "on"}


def external_section(key: str, data: dict[str, Any] | None) -> str:
    title, name = EXTERNAL[key]
    if data is None:
        return (
            f"**Pending.** Measured by a later benchmark, which writes `bench/out/{name}`; this "
            "page shows it when the file is there.\n"
        )
    if "error" in data:
        return f"**Error:** {data['error']}\n"
    summary = data.get("summary")
    text = summary + "\n\n" if isinstance(summary, str) and summary else ""
    if key == "failover" and "p50_ms" in data:
        modes = data.get("modes") or {data.get("xdp", "auto"): data}
        text += table(
            [
                "agents' --xdp",
                "kills",
                "orphaned clients back",
                "configured detection",
                "p50",
                "p99",
                "max",
                "other clients' failed requests",
                "false alarms",
            ],
            [
                [
                    XDP_LABEL.get(str(mode), str(mode)),
                    d.get("kills"),
                    f"{d.get('recovered_clients')} / {d.get('orphaned_clients')}",
                    f"{d.get('detection_ms')} ms",
                    f"{d.get('p50_ms')} ms",
                    f"{d.get('p99_ms')} ms",
                    f"{d.get('max_ms')} ms",
                    d.get("other_clients_failed_requests"),
                    d.get("false_alarms"),
                ]
                for mode, d in modes.items()
            ],
        )
    if key == "vrrp" and "p50_ms" in data:
        text += table(
            ["kills", "clients back", "advert interval", "p50", "p99", "max"],
            [
                [
                    data.get("kills"),
                    f"{data.get('recovered_clients')} / {data.get('orphaned_clients')}",
                    f"{data.get('advert_int_s')} s",
                    f"{data.get('p50_ms')} ms",
                    f"{data.get('p99_ms')} ms",
                    f"{data.get('max_ms')} ms",
                ]
            ],
        )
    if key == "rebalancing" and "static_move" in data:
        rows = []
        for case in ("static_move", "agent_join"):
            for who in ("naive", "clusterip"):
                r = data.get(case, {}).get(who, {})
                rows.append(
                    [case.replace("_", " "), who, f"{r.get('broken')} / {r.get('connections')}"]
                )
        text += table(["change", "datapath", "connections broken"], rows)
    if data.get("columns") and data.get("rows"):
        text += table(data["columns"], data["rows"])
    for plot in data.get("plots", []):
        text += f"\n![{title}]({plot})\n"
    if data.get("command"):
        text += f"\nRerun: `{data['command']}`\n"
    return text
