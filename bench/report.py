"""docs/benchmarks.md and docs/benchmarks.json from the results of `python -m bench`.

Figures that other benchmarks measure are read from optional JSON files in the output
directory, if present (report_parts.EXTERNAL: `failover.json`, `rebalance.json`, `idlecpu.json`,
`flood.json`, `corecost.json`, `partition.json`, `ipv6.json`, ...). Some are rendered from their
own shapes (report_parts, report_agents); any file may instead (or also) carry a generic table:

    {"summary": "one paragraph", "command": "how to rerun",
     "columns": ["...", ...], "rows": [[...], ...], "plots": ["bench-failover.png"]}

A missing file leaves a marked placeholder. Data-plane sections that a run did not measure (a
run of `--only idlecpu`, say, with no earlier results.json) are kept from the previous page,
marked as such.
"""

from __future__ import annotations

import json
import os
import shlex
from typing import Any

from bench import plots, prefilter
from bench.report_agents import agent_section, kept, sections_of
from bench.report_parts import (
    AGENT_KEYS,
    EXTERNAL,
    ci_cell,
    control_section,
    evenness_section,
    ratio_cell,
    rng,
    table,
)
from bench.throughput import TARGETS

MODE_TITLES = {"keepalive": "keep-alive", "close": "one request per connection"}


def verdict(key: str, r: dict[str, Any]) -> str:
    """Met or not by the median; says whether the median's 95% interval clears the target."""
    target = TARGETS.get(key)
    if target is None:
        return ""
    text = f"≥ {target:g}: **{'met' if r['median'] >= target else 'not met'}**"
    lo, hi = r.get("ci95", (r["min"], r["max"]))
    if lo >= target:
        text += " (whole interval above)"
    elif hi < target:
        text += " (whole interval below)"
    else:
        text += " (interval spans the target)"
    return text


def load_external(out_dir: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, (_, name) in EXTERNAL.items():
        path = os.path.join(out_dir, name)
        try:
            with open(path) as fh:
                found[key] = json.load(fh)
        except FileNotFoundError:
            continue
        except (OSError, ValueError) as exc:
            found[key] = {"error": f"unreadable {name}: {exc}"}
    return found


# --- sections -----------------------------------------------------------------------------------
def summary_section(results: dict[str, Any]) -> str:
    tp = results.get("throughput")
    if not tp:
        return "Throughput was not measured in this run.\n"
    rows = []
    for mode, data in tp["analysis"].items():
        for key, r in data["ratios"].items():
            rows.append(
                [
                    key.replace("vip", "VIP").replace("haproxy", "HAProxy"),
                    MODE_TITLES[mode],
                    ci_cell(r["rps"]),
                    ratio_cell(r["rps"]),
                    ci_cell(r["norm_rps"]),
                    verdict(key, r["rps"]),
                ]
            )
    text = table(
        [
            "ratio",
            "mode",
            "request rate: median [95% interval]",
            "min–max of rounds",
            "CPU-normalised",
            "target",
        ],
        rows,
    )
    bg = [s["cpu"]["background"] for s in tp["samples"]]
    bg.sort()
    text += (
        f"\nRatios are taken per round (set-ups measured back to back, {len(bg)} runs in all) "
        f"and summarised by their median, with the median's 95% confidence interval (order "
        f"statistics, no assumption about the distribution). *spread* is the control with no "
        f"hash at all (see *Method*). Other work on the machine used a median "
        f"{bg[len(bg) // 2]:.0%} of the CPUs during the runs (max {bg[-1]:.0%}); see *Method* "
        "for what that does to the numbers.\n"
    )
    return text


def machine_section(results: dict[str, Any]) -> str:
    m = results["machine"]
    rows = [
        ["uname -a", f"`{m['uname']}`"],
        ["CPUs", f"{m['nproc']} × {m['cpu_model']}"],
        ["memory", f"{m['mem_gib']} GiB"],
        ["nft", m["nft"]],
        ["nginx", m["nginx"]],
        ["HAProxy", m["haproxy"]],
        ["wrk", m["wrk"]],
        ["trafgen", m["trafgen"]],
        ["Python", m["python"]],
        ["run", f"{results['started']}, {results.get('duration_s', '?')} s"],
    ]
    return table(["", ""], rows)


SETUP_COMMANDS = """\
# servers: nginx on n1..n3, HAProxy on n4 (configurations below)
NAME-nK  /usr/sbin/nginx -p DIR/nK -c DIR/nK/nginx.conf
NAME-n4  /usr/sbin/haproxy -db -f DIR/haproxy.cfg
NAME-sw  ip link set dev n4 type bridge_slave mcast_flood off    # n4: no VIP copies
NAME-c   sysctl net.ipv4.tcp_tw_reuse=1 net.ipv4.ip_local_port_range='1024 65535'
# direct: wrk against http://198.18.0.1/ (no rules anywhere)
# all set-ups below are configured at once, each on its own address; CLUSTERMAC = 03:bf:<VIP>
# ceiling, on its own VIP 198.18.0.101:
NAME-n1  ip addr add 198.18.0.101/32 dev eth0; ip maddr add CLUSTERMAC dev eth0
NAME-n1  nft: netdev ingress, priority -500: ip daddr 198.18.0.101 meta pkttype set host accept
NAME-n2  nft: netdev ingress, priority -500: ip daddr 198.18.0.101 drop     (and NAME-n3)
NAME-c   ip neigh replace 198.18.0.101 lladdr CLUSTERMAC dev eth0 nud permanent
# spread, on VIP 198.18.0.102, address and CLUSTERMAC on NAME-n1..n3, static neighbour as above:
NAME-nK  nft: netdev ingress, priority -500: ip daddr 198.18.0.102 th sport RANGE_K \\
           meta pkttype set host accept; ip daddr 198.18.0.102 drop   (RANGE_K: K-th third)
# vip, on NAME-nK for K = 1, 2, 3 (the client learns the cluster MAC by ARP):
NAME-nK  python -m clusterip up --vip 198.18.0.100 --interface eth0 --total-nodes 3 \\
           --local-node K --hashmode sourceip-sourceport
# haproxy: wrk against http://198.18.0.4/"""


def rerun_section(results: dict[str, Any]) -> str:
    p = results["params"]
    lines = [
        "As root, from the repository:",
        "",
        "```sh",
        "make bench                       # = .venv/bin/python -m bench",
        f"{results['command']}   # this run",
        ".venv/bin/python -m bench --quick                # fewer rounds, wider intervals",
        ".venv/bin/python -m bench --investigate all      # plus the variants' cost per packet",
        ".venv/bin/python -m bench --report-only          # rewrite this page from bench/out/",
        "```",
        "",
        "The lab: `Lab.build(LabTopo(NAME, 4, 100))` (namespaces NAME-sw, NAME-n1..n4, NAME-c);",
        "nodes 1-3 serve, node 4 is the director. Each command runs in the namespace named first.",
        "",
        "```sh",
    ]
    tp = results.get("throughput")
    if tp:
        lines += SETUP_COMMANDS.splitlines()
        for mode, argv in tp["wrk"].items():
            lines.append(f"NAME-c   {shlex.join(argv)}   # {MODE_TITLES[mode]}")
    fo = results.get("foreign")
    if fo:
        lines.append(f"NAME-c   {fo['trafgen']}   # foreign traffic")
    lines += [
        "```",
        "",
        "Parameters of this run: "
        + ", ".join(f"{k}={p[k]}" for k in sorted(p) if p[k] not in (None, "", []))
        + ".",
    ]
    if fo and fo.get("trafgen_conf"):
        lines += [
            "",
            "DIR/foreign.trafgen (CLUSTERMAC is derived from the VIP):",
            "",
            "```",
            fo["trafgen_conf"].rstrip(),
            "```",
        ]
    cfg = results.get("configs")
    if cfg:
        lines += [
            "",
            "<details><summary>nginx.conf (n1) and haproxy.cfg</summary>",
            "",
            "```nginx",
            cfg["nginx"].rstrip(),
            "```",
            "",
            "```",
            cfg["haproxy"].rstrip(),
            "```",
            "",
            "</details>",
        ]
    return "\n".join(lines) + "\n"


def throughput_section(results: dict[str, Any], figs: dict[str, str]) -> str:
    tp = results["throughput"]
    titles = {s["name"]: s["title"] for s in tp["setups"]}
    out = []
    for mode, data in tp["analysis"].items():
        rows = []
        for name, r in data["setups"].items():
            if name.startswith("var:"):
                continue
            vs = r.get("vs_ceiling", {}).get("rps")
            rows.append(
                [
                    titles[name],
                    rng(r["rps"]),
                    f"{r['norm_rps']['median']:,.0f}",
                    rng(r["p50_ms"], "{:.2f}"),
                    rng(r["p99_ms"], "{:.2f}"),
                    ratio_cell(vs) if vs else "1",
                    r["errors"],
                ]
            )
        out.append(f"### {MODE_TITLES[mode]}\n")
        out.append(
            table(
                [
                    "set-up",
                    "req/s",
                    "CPU-normalised req/s",
                    "p50 ms",
                    "p99 ms",
                    "vs ceiling",
                    "errors",
                ],
                rows,
            )
        )
        out.append("")
    for key in ("throughput", "latency"):
        if key in figs:
            out.append(f"![{key}]({os.path.basename(figs[key])})\n")
    return "\n".join(out)


def variants_section(results: dict[str, Any]) -> str:
    """The datapath variants' cost per packet (`--investigate`), if measured."""
    pp = results.get("perpacket")
    if not pp:
        return ""
    titles = {s["name"]: s["title"] for s in pp.get("setups", [])}
    rows = [
        [
            f"`{name}` {titles.get(name, '')}",
            rng(r["ns_per_packet"]),
            rng(r["extra_ns"]) if "extra_ns" in r else "(reference)",
        ]
        for name, r in pp["analysis"].items()
    ]
    return (
        "## Where the datapath's cost goes (variants)\n\n"
        "Measured with `--investigate` (rulesets loaded by hand on nodes 1-3: `bench/setups.py`, "
        "`VARIANTS`). Cost per packet, flooded to nodes 1-3 (`perpacket.py`: trafgen, 256 UDP "
        "flows to the VIP; whole path CPU time per packet, sender and switch included):\n\n"
        + table(["set-up", "ns per packet", "extra over the ceiling (same round)"], rows)
        + f"\nCommand: `{pp['trafgen']}`.\n"
    )


def foreign_section(results: dict[str, Any], figs: dict[str, str]) -> str:
    fo = results["foreign"]
    an = fo["analysis"]
    none = an.get("none", {}).get("receiver_ns_per_packet", {}).get("median")
    rows = []
    for key, r in an.items():
        own = r.get("receiver_ns_per_packet")
        rel = f"{own['median'] / none:.2f}" if own and none and none > 0 else ""
        rows.append(
            [
                f"`{key}` {r['title']}",
                rng(r["pps"]),
                rng(r["ns_per_packet"]),
                rng(own) if own else "(baseline)",
                rel,
            ]
        )
    text = (
        f"trafgen sends {fo['frame_bytes']}-byte UDP frames to the VIP from random source ports; "
        "the switch floods them to one receiver at a time. The receiver's cost is the whole "
        "path's CPU time per packet minus that of the same round with no receiver.\n\n"
        + table(
            ["receiver", "packets/s", "whole path ns/packet", "receiver ns/packet", "vs no rules"],
            rows,
        )
        + "\nSet-up: "
        + "; ".join(f"`{c}`" for c in fo["commands"])
        + ".\n"
    )
    if "foreign" in figs:
        text += f"\n![foreign]({os.path.basename(figs['foreign'])})\n"
    return text


METHOD = """\
* **Where.** One machine, network namespaces joined by a Linux bridge with multicast snooping
  off (the switch floods the cluster MAC to every port, as a real switch does). Nodes, client,
  director and switch all share the same CPUs: on one host every node's copy of a flooded
  frame costs the same CPUs, which is why the *ceiling* (the VIP with the cluster MAC, one
  node accepting everything with no hashing, the other two dropping their copies at ingress)
  is the fair upper bound for a flooding datapath here. HAProxy runs on node 4, whose switch
  port gets no flooded VIP frames.
* **Servers.** Debian's nginx, one worker per node, `return 200 "nK\\n"`, no logs; HAProxy in
  TCP mode (its cheapest mode: no HTTP parsing), round robin over nodes 1-3, two threads.
* **Client.** wrk in the client namespace, all connections from one address (wrk cannot bind
  others); the port-aware default hashmode spreads them by source port. The client allows
  TIME_WAIT reuse and a wide port range (behind HAProxy wrk closes first and would otherwise
  run out of ports).
* **Control.** *spread* serves from the same three nginx as the VIP, flooded the same way,
  but splits the clients by a source-port range match instead of a hash: the cost of three
  servers instead of one on two cores, apart from any datapath. VIP/spread is the cost of the
  cluster's datapath itself.
* **Noise.** The request rate of two shared cores moves by about 10% between runs of a few
  seconds (host noise: the same set-up, run back to back, spans ±10%), more than the
  differences measured here. So all set-ups are live at once, each on its own address, and
  wrk alternates between them in short runs: nothing is reconfigured between samples, and
  many rounds narrow the median. Set-ups are interleaved round by round, starting each round
  at a different one; ratios are per round. A run during which other work used more than
  the `quiet` share of the CPUs is retried (after waiting up to 10 s for a quiet second) and
  the quieter run kept. The *CPU-normalised* rate divides the requests by the CPU time of the
  lab's own processes (nginx, HAProxy, wrk, ksoftirqd) and multiplies by the CPU count: what
  the set-up would do with the machine to itself. It is less sensitive to other work, but not
  immune (shared caches). Nothing is pinned.
"""


def render_page(
    results: dict[str, Any],
    figs: dict[str, str],
    external: dict[str, Any],
    previous: str | None = None,
) -> str:
    old = sections_of(previous) if previous else {}
    tp = bool(results.get("throughput"))
    parts = [
        "# Benchmarks\n",
        "Generated by `make bench` (`bench/`); do not edit by hand. Raw samples: "
        "`bench/out/results.json`; summary: `docs/benchmarks.json`.\n",
    ]
    parts += ["## Summary\n", summary_section(results)] if tp or "Summary" not in old else []
    parts += kept(old, "Summary") if not tp else []
    parts += ["## Machine\n", machine_section(results)]
    if tp:
        parts += ["## How to rerun\n", rerun_section(results)]
    else:  # the set-up of the kept sections' run, and this run's command
        body = old.get("How to rerun") or rerun_section(results)
        earlier = [ln for ln in body.splitlines() if not ln.startswith("This run: `")]
        parts += ["## How to rerun\n", "\n".join(earlier).rstrip() + "\n"]
        parts.append(f"This run: `{results['command']}`.\n")
    if tp:
        parts += ["## Throughput and latency\n", throughput_section(results, figs)]
    else:
        parts += kept(old, "Throughput and latency")
    variants = variants_section(results)
    parts += [variants] if variants else kept(old, "Where the datapath's cost goes (variants)")
    if results.get("prefilter") or results.get("xdp"):
        parts += [
            "## The XDP pre-filter\n",
            prefilter.section(results.get("prefilter", {}), results.get("xdp")),
        ]
    else:
        parts += kept(old, "The XDP pre-filter")
    fo, ev, co = (bool(results.get(k)) for k in ("foreign", "evenness", "control"))
    parts += ["## Foreign traffic\n", foreign_section(results, figs)] if fo else []
    parts += [] if fo else kept(old, "Foreign traffic")
    parts += ["## Evenness\n", evenness_section(results, figs)] if ev else kept(old, "Evenness")
    parts += ["## Control plane\n", control_section(results)] if co else kept(old, "Control plane")
    for key in AGENT_KEYS:
        title = EXTERNAL[key][0]
        earlier = kept(old, title) if external.get(key) is None else []
        if earlier:
            parts += earlier
        else:
            parts += [f"## {title}\n", agent_section(key, external.get(key))]
    parts += ["## Method\n", METHOD]
    return "\n".join(p for p in parts if p)


def summary_json(results: dict[str, Any], external: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {
        k: results[k]
        for k in ("version", "started", "machine", "command", "params", "duration_s")
        if k in results
    }
    if results.get("throughput"):
        out["throughput"] = results["throughput"]["analysis"]
        out["targets"] = {
            f"{key} {mode}": {
                "target": TARGETS[key],
                "median": r["rps"]["median"],
                "met": r["rps"]["median"] >= TARGETS[key],
            }
            for mode, d in results["throughput"]["analysis"].items()
            for key, r in d["ratios"].items()
            if key in TARGETS
        }
    if results.get("foreign"):
        out["foreign"] = results["foreign"]["analysis"]
    if results.get("prefilter"):
        out["prefilter"] = results["prefilter"]["analysis"]
    if results.get("xdp"):
        out["xdp"] = {k: results["xdp"][k]["analysis"] for k in ("foreign", "owned")}
    for key in ("evenness", "control"):
        if results.get(key):
            out[key] = results[key]
    out["external"] = {k: external.get(k, {"status": "pending"}) for k in EXTERNAL}
    return out


def _read(path: str) -> str | None:
    try:
        with open(path) as fh:
            return fh.read()
    except OSError:
        return None


def write(results: dict[str, Any], docs: str, out_dir: str) -> list[str]:
    os.makedirs(docs, exist_ok=True)
    figs = plots.make_all(results, docs)
    external = load_external(out_dir)
    page = os.path.join(docs, "benchmarks.md")
    previous = _read(page)
    summary = os.path.join(docs, "benchmarks.json")
    doc = summary_json(results, external)
    try:  # the figures of parts this run did not measure stay as they were
        old = json.loads(_read(summary) or "{}")
    except ValueError:
        old = {}
    for key, value in old.items():
        doc.setdefault(key, value)
    for key, value in old.get("external", {}).items():
        if doc["external"].get(key, {"status": "pending"}) == {"status": "pending"}:
            doc["external"][key] = value
    with open(page, "w") as fh:
        fh.write(render_page(results, figs, external, previous))
    with open(summary, "w") as fh:
        json.dump(doc, fh, indent=1)
        fh.write("\n")
    return [page, summary, *figs.values()]
