"""Pure helpers of the agent benchmarks (bench/procstat, idlecpu, flood, report_agents). No root."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from bench import flood, idlecpu, procstat, report, report_agents
from bench.__main__ import LAB_PARTS, PARTS, parse_args

STAT = (
    "4242 (python3 -m (x) y) S 1 4242 4242 0 -1 4194560 2783 0 0 0 "
    "1234 567 0 0 20 0 1 0 8049 31457280 2419 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 "
    "1 0 0 0 0 0"
)


def test_stat_ticks_counts_after_the_last_parenthesis() -> None:
    assert procstat.stat_ticks(STAT) == 1234 + 567


def test_percent_of_core() -> None:
    assert procstat.percent_of_core(0.6, 60.0) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        procstat.percent_of_core(1.0, 0.0)


def test_loadavg_and_cpu_totals() -> None:
    la = procstat.loadavg("0.52 0.58 0.59 2/103 4711\n")
    assert la == {"1m": 0.52, "5m": 0.58, "15m": 0.59, "tasks": "2/103"}
    assert procstat.load_text(la) == "0.52 0.58 0.59"
    a = procstat.cpu_totals("cpu  100 0 50 800 50 0 0 0 0 0")
    b = procstat.cpu_totals("cpu  200 0 100 1650 50 0 0 0 0 0")
    assert a == (150, 1000) and b == (300, 2000)
    assert procstat.busy_share(a, b) == pytest.approx(0.15)
    assert procstat.busy_share(a, a) == 0.0


def test_cpu_seconds_of_this_process() -> None:
    import os

    t0 = procstat.cpu_seconds(os.getpid())
    end = time.process_time() + 0.05
    while time.process_time() < end:
        pass
    assert procstat.cpu_seconds(os.getpid()) >= t0


def test_gaps() -> None:
    assert procstat.gaps([]) == {"count": 0, "max_ms": None, "p99_ms": None}
    assert procstat.gaps([1.0])["max_ms"] is None
    times = [i * 0.05 for i in range(200)] + [10.0 + 0.2]  # one gap of 250 ms at the end
    g = procstat.gaps(reversed(times))  # order does not matter
    assert g["count"] == 201 and g["max_ms"] == pytest.approx(250.0)
    assert g["p99_ms"] == pytest.approx(50.0)


def test_split_by_window_and_udp_counters() -> None:
    arr = {"a": [1.0, 2.0, 3.0], "b": [5.0]}
    assert procstat.split_by_window(arr, 2.0, 4.0) == {"a": [2.0, 3.0], "b": []}
    snmp = (
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors\nUdp: 10 1 2 3 2\n"
    )
    assert procstat.udp_counters(snmp)["RcvbufErrors"] == 2
    with pytest.raises(ValueError):
        procstat.udp_counters("Ip: 1\n")


LOG = """\
2026-11-30 14:17:13,686 clusterip-agent[7] INFO agent up: node 1, 1 VIP(s)
2026-11-30 14:17:14,000 clusterip-agent[7] INFO 198.18.0.100: node 2 up at 198.18.0.2
2026-11-30 14:17:20,100 clusterip-agent[7] WARNING 198.18.0.100: node 2 down (timeout)
2026-11-30 14:17:20,200 clusterip-agent[7] WARNING 198.18.0.100: ACTIVE -> ISOLATED (quorum)
2026-11-30 14:17:20,300 clusterip-agent[7] INFO 198.18.0.100: 2048 buckets now (+0, 0, -2048)
2026-11-30 14:17:21,000 clusterip-agent[7] WARNING a loop step took 80 ms (heartbeat every 50 ms)
"""


def stamp(text: str) -> float:
    return time.mktime(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def test_log_events_in_a_window() -> None:
    lines = LOG.splitlines()
    ev = procstat.log_events(lines, stamp("2026-11-30 14:17:15"))
    assert ev.counts == {"peer_down": 1, "state_changes": 1, "peer_up": 0,
                         "ownership_changes": 1, "slow_steps": 1}  # fmt: skip
    assert ev.false_alarms == 3 and len(ev.lines) == 3
    quiet = procstat.log_events(lines, stamp("2026-11-30 14:17:15"), stamp("2026-11-30 14:17:20"))
    assert quiet.false_alarms == 0
    assert procstat.log_events(lines, 0.0).counts["peer_up"] == 1


def measured(per: dict[int, float], alarms: int = 0) -> dict[str, Any]:
    lines = LOG.splitlines()[2:3] if alarms else []
    events = {k: procstat.log_events(lines, 0.0) for k in per}
    load = procstat.loadavg("1.00 0.50 0.25 1/1 1")
    return {"wall_s": 60.0, "per_agent": per, "busy": 0.2, "load": [load, load], "events": events}


def test_idlecpu_summary_and_rows() -> None:
    r = idlecpu.summarize(3, 60.0, 1.5, measured({1: 0.8, 2: 0.9, 3: 1.2}), True)
    assert r["cpu_percent"] == {"median": 0.9, "max": 1.2, "min": 0.8}
    assert r["target_percent"] == 1.0 and r["met"] is False  # the max is over the target
    assert r["heartbeats_heard_per_s"] == 40.0
    assert r["us_per_heartbeat_heard"] == pytest.approx(0.009 / 40 * 1e6, rel=1e-3)
    assert r["false_alarms"] == 0
    r32 = idlecpu.summarize(32, 60.0, 40.0, measured({k: 5.0 for k in range(1, 33)}, 1), False)
    assert r32["target_percent"] is None and r32["met"] is None and r32["false_alarms"] == 32
    failed = {"nodes": 64, "converged": False, "start_s": 148.0, "error": "x"}
    never = {**r32, "converged": False, "start_s": 91.0}
    rows = idlecpu.rows([r, r32, failed, never])
    assert rows[0][2] == "0.90%" and "not met" in rows[0][4] and rows[0][6] == "0"
    assert rows[1][4] == "(none set)" and rows[1][7] == "**no**"
    assert "did not converge in 148.0 s" in rows[2][2]
    assert rows[3][2] == "5.00%" and "never converged** (waited 91.0 s)" in rows[3][7]
    assert all(len(row) == len(idlecpu.COLUMNS) for row in rows)


def flood_result() -> dict[str, Any]:
    load = procstat.loadavg("1.00 0.50 0.25 1/1 1")

    def phase(n1: float, gap: float) -> dict[str, Any]:
        return {
            "cpu_percent": {"n1": n1, "n2": 1.0, "n3": 1.1},
            "gaps_of_n1": {
                "heard by n2": {"count": 400, "max_ms": gap, "p99_ms": 55.0},
                "heard by n3": {"count": 400, "max_ms": gap - 5, "p99_ms": 60.0},
            },
            "machine_busy": 0.5,
            "loadavg": [load, load],
        }

    fl = phase(21.0, 104.0)
    fl["forger"] = {"sent": 200000, "failed": 0, "rate": 10000}
    fl["refused_per_s"] = 9999
    fl["udp_n1"] = {"InDatagrams": 200000, "RcvbufErrors": 3}
    return {"idle": phase(1.2, 70.0), "flood": fl, "false_alarms": 0, "owned_unchanged": True}


def test_flood_rows_and_verdict() -> None:
    r = flood_result()
    assert flood.worst_gap(r["flood"]) == 104.0 and flood.p99_gap(r["flood"]) == 60.0
    rows = flood.rows(r)
    assert [row[0] for row in rows] == ["idle", "flood"]
    assert rows[0][2] == "1.20%" and rows[1][2] == "21.00%"
    assert "10,000/s sent" in rows[1][1] and "3 dropped" in rows[1][1]
    assert all(len(row) == len(flood.COLUMNS) for row in rows)
    v = flood.verdict(r)
    assert "False alarms: 0 (target 0: **met**)" in v and "under 100%: **met**" in v
    r["false_alarms"] = 2
    assert "**not met**" in flood.verdict(r)


def test_bench_parts_wired() -> None:
    for part in ("idlecpu", "flood", "corecost", "partition", "ipv6"):
        assert part in PARTS and part not in LAB_PARTS
        args = parse_args(["--only", part, "--quick"])
        assert args.parts == (part,)
    args = parse_args(["--only", "idlecpu", "--idle-nodes", "3", "16", "--idle-seconds", "5"])
    assert args.idle_nodes == [3, 16] and args.idle_seconds == 5.0
    full = parse_args([])
    assert (full.idle_seconds, full.flood_seconds, full.partitions) == (60.0, 20.0, 10)


PAGE = """# Benchmarks

## Summary

old summary table

## Throughput and latency

old throughput

## Agent CPU at idle

old idle figures
"""


def test_sections_of_and_kept() -> None:
    s = report_agents.sections_of(PAGE)
    assert list(s) == ["Summary", "Throughput and latency", "Agent CPU at idle"]
    assert s["Summary"] == "old summary table\n"
    k = report_agents.kept(s, "Summary")
    assert k[0] == "## Summary\n" and k[1].startswith("*Kept") and k[1].endswith("table\n")
    assert report_agents.kept({"Summary": k[1]}, "Summary") == k  # marked once
    assert report_agents.kept(s, "Evenness") == []
    assert report_agents.kept({"x": "**Pending.** later"}, "x") == []


def test_agent_sections_render() -> None:
    cc = {
        "rows": [
            {
                "members": 3,
                "bytes": 177,
                "per_heartbeat_us": 7.2,
                "hmac_only_us": 1.4,
                "per_full_tick_us": 14.2,
                "per_send_us": 15.6,
            }
        ],
        "seconds_recorded": 2.0,
        "command": "python -m bench.corecost",
        "load": {"loadavg": [procstat.loadavg("0.1 0.2 0.3 1/1 1")] * 2, "machine_busy": 0.05},
    }
    text = report_agents.agent_section("corecost", cc)
    assert "| 3 | 177 B | 7.2 | 1.4 | 5.1× | 14.2 | 15.6 |" in text
    assert "Rerun: `python -m bench.corecost`" in text and "0.10 0.20 0.30" in text
    generic = {"summary": "S", "columns": ["a"], "rows": [["1"]], "command": "C"}
    assert "| a |\n|---|\n| 1 |" in report_agents.agent_section("flood", generic)
    assert "Pending" in report_agents.agent_section("partition", None)


def test_report_keeps_sections_a_run_did_not_measure(tmp_path: Path) -> None:
    from bench.sysinfo import machine

    docs, out = tmp_path / "docs", tmp_path / "out"
    docs.mkdir()
    out.mkdir()
    (docs / "benchmarks.md").write_text(PAGE)
    (docs / "benchmarks.json").write_text('{"throughput": {"old": 1}}')
    (out / "flood.json").write_text('{"summary": "flooded", "columns": ["a"], "rows": [["1"]]}')
    results = {"version": 1, "started": "now", "machine": machine(),
               "command": "python -m bench --only flood", "params": {}}  # fmt: skip
    report.write(results, str(docs), str(out))
    page = (docs / "benchmarks.md").read_text()
    assert "old throughput" in page and "old summary table" in page and "old idle figures" in page
    assert "flooded" in page and page.count("*Kept from the previous page") == 3
    assert '"old": 1' in (docs / "benchmarks.json").read_text()
    report.write(results, str(docs), str(out))
    assert (docs / "benchmarks.md").read_text() == page  # a second run changes nothing
