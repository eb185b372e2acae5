"""PNG plots for the report (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

SETUP_COLORS = {"direct": "#7f7f7f", "ceiling": "#2ca02c", "vip": "#1f77b4", "haproxy": "#d62728"}
MODE_TITLES = {"keepalive": "keep-alive", "close": "one request per connection"}


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _setup_order(analysis: dict[str, Any]) -> list[str]:
    names: list[str] = []
    for mode in analysis.values():
        for name in mode["setups"]:
            if name not in names:
                names.append(name)
    return names


def throughput(analysis: dict[str, Any], titles: dict[str, str], path: str) -> str:
    """Request rate per set-up, one panel per mode: median bars, min-max whiskers."""
    plt = _plt()
    modes = list(analysis)
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    names = _setup_order(analysis)
    for ax, mode in zip(axes[0], modes, strict=True):
        rows = analysis[mode]["setups"]
        shown = [n for n in names if n in rows]
        med = [rows[n]["rps"]["median"] for n in shown]
        lo = [rows[n]["rps"]["median"] - rows[n]["rps"]["min"] for n in shown]
        hi = [rows[n]["rps"]["max"] - rows[n]["rps"]["median"] for n in shown]
        colors = [SETUP_COLORS.get(n, "#9467bd") for n in shown]
        ax.bar(range(len(shown)), med, yerr=[lo, hi], color=colors, capsize=4)
        ax.set_xticks(
            range(len(shown)), [n.replace("var:", "") for n in shown], rotation=30, ha="right"
        )
        ax.set_ylabel("requests per second (median, min-max)")
        ax.set_title(MODE_TITLES.get(mode, mode))
        for i, v in enumerate(med):
            ax.annotate(
                f"{v:,.0f}",
                (i, v),
                ha="center",
                va="bottom",
                fontsize=8,
                xytext=(0, 2),
                textcoords="offset points",
            )
    fig.suptitle("wrk against nginx: request rate")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def latency(analysis: dict[str, Any], path: str) -> str:
    plt = _plt()
    modes = list(analysis)
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    names = _setup_order(analysis)
    for ax, mode in zip(axes[0], modes, strict=True):
        rows = analysis[mode]["setups"]
        shown = [n for n in names if n in rows]
        x = range(len(shown))
        p50 = [rows[n]["p50_ms"]["median"] for n in shown]
        p99 = [rows[n]["p99_ms"]["median"] for n in shown]
        ax.bar([i - 0.2 for i in x], p50, width=0.4, label="p50", color="#1f77b4")
        ax.bar([i + 0.2 for i in x], p99, width=0.4, label="p99", color="#ff7f0e")
        ax.set_xticks(list(x), [n.replace("var:", "") for n in shown], rotation=30, ha="right")
        ax.set_ylabel("latency, ms (median of runs)")
        ax.set_title(MODE_TITLES.get(mode, mode))
        ax.legend()
    fig.suptitle("wrk against nginx: latency")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def foreign(analysis: dict[str, Any], path: str) -> str:
    plt = _plt()
    keys = [k for k in analysis if k != "nobody"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    pps = [analysis[k]["pps"]["median"] / 1e6 for k in keys]
    ax1.bar(range(len(keys)), pps, color="#1f77b4")
    ax1.set_xticks(range(len(keys)), keys)
    ax1.set_ylabel("million packets per second dropped (one sender CPU)")
    ax1.set_title("drop rate")
    own = [analysis[k].get("receiver_ns_per_packet", {}).get("median", 0.0) for k in keys]
    ax2.bar(range(len(keys)), own, color="#ff7f0e")
    ax2.set_xticks(range(len(keys)), keys)
    ax2.set_ylabel("receiver CPU ns per packet")
    ax2.set_title("cost of a foreign packet at the receiver")
    fig.suptitle("foreign traffic: UDP to the VIP that is not the node's")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def evenness(flows: dict[str, Any], agent: dict[str, Any], path: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    counts: Sequence[int] = flows["node_counts"]
    for mode, values in flows["static"]["random"].items():
        ax.plot(counts, values, marker="o", label=f"flows, static, {mode}")
    ax.plot(counts, flows["ideal"], "k--", label="flows, ideal random placement")
    if agent.get("status") == "ok":
        rows = agent["rows"]
        ax.plot(
            [r["nodes"] for r in rows],
            [r["buckets_max_over_mean"] for r in rows],
            color="#2ca02c",
            label=f"buckets, agent ({agent['buckets']} buckets)",
        )
        ax.plot(
            [r["nodes"] for r in rows],
            [r["flows_sourceip-sourceport"] for r in rows],
            color="#9467bd",
            alpha=0.7,
            label="flows, agent, sourceip-sourceport",
        )
    ax.set_xscale("log", base=2)
    ax.set_xlabel("nodes")
    ax.set_ylabel("max / mean per node (1.0 = perfectly even)")
    ax.set_title(f"evenness over {flows['flows']:,} flows")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def make_all(results: dict[str, Any], docs: str) -> dict[str, str]:
    """Every plot the results allow; returns {name: path}."""
    out: dict[str, str] = {}
    tp = results.get("throughput")
    if tp:
        titles = {s["name"]: s["title"] for s in tp["setups"]}
        out["throughput"] = throughput(
            tp["analysis"], titles, os.path.join(docs, "bench-throughput.png")
        )
        out["latency"] = latency(tp["analysis"], os.path.join(docs, "bench-latency.png"))
    if results.get("foreign"):
        out["foreign"] = foreign(
            results["foreign"]["analysis"], os.path.join(docs, "bench-foreign.png")
        )
    ev = results.get("evenness")
    if ev:
        out["evenness"] = evenness(
            ev["flows"], ev["agent"], os.path.join(docs, "bench-evenness.png")
        )
    return out
