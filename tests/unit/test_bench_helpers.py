"""Pure helpers of the benchmarks (bench/): parsers, statistics, rulesets, report. No root."""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import pytest

from bench import evenness, foreign, report, setups, stats, wrk
from clusterip.config import HASHMODES
from clusterip.hashing import flow_bucket
from clusterip.lab.topo import LabTopo

WRK_OUT = """Running 3s test @ http://198.18.0.100/
  2 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.52ms    2.01ms  30.12ms   91.00%
    Req/Sec    16.20k     1.10k   18.00k    70.00%
  Latency Distribution
     50%  834.00us
     75%    1.55ms
     90%    3.10ms
     99%   11.99ms
  96722 requests in 3.00s, 14.48MB read
  Socket errors: connect 0, read 3, write 0, timeout 2
  Non-2xx or 3xx responses: 1
Requests/sec:  32240.05
Transfer/sec:      4.83MB
"""


def test_parse_wrk() -> None:
    r = wrk.parse_wrk(WRK_OUT)
    assert r.rps == pytest.approx(32240.05)
    assert r.requests == 96722
    assert r.p50_ms == pytest.approx(0.834)
    assert r.p75_ms == pytest.approx(1.55)
    assert r.p99_ms == pytest.approx(11.99)
    assert r.socket_errors == 5 and r.non_2xx == 1


def test_parse_wrk_rejects_garbage() -> None:
    with pytest.raises(wrk.WrkParseError):
        wrk.parse_wrk("unable to connect to 198.18.0.100:http Connection refused\n")


def test_wrk_argv() -> None:
    argv = wrk.wrk_argv("http://x/", mode="close", duration=8, threads=2, connections=64)
    assert argv == [
        "wrk",
        "-t2",
        "-c64",
        "-d8s",
        "--latency",
        "-H",
        "Connection: close",
        "http://x/",
    ]
    assert "-H" not in wrk.wrk_argv(
        "http://x/", mode="keepalive", duration=1, threads=1, connections=1
    )
    with pytest.raises(ValueError):
        wrk.wrk_argv("http://x/", mode="keepalive", duration=0.2, threads=1, connections=1)
    with pytest.raises(ValueError):
        wrk.wrk_argv("http://x/", mode="pipelined", duration=1, threads=1, connections=1)


def test_stats() -> None:
    s = stats.summarize([3.0, 1.0, 2.0])
    assert (s.median, s.low, s.high, s.n) == (2.0, 1.0, 3.0, 3)
    assert s.spread == pytest.approx(1.0)
    assert stats.paired_ratios([2.0, 3.0], [1.0, 2.0]) == [2.0, 1.5]
    assert stats.max_over_mean([1, 1, 2]) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        stats.paired_ratios([1.0], [1.0, 2.0])


@pytest.mark.parametrize("mode", HASHMODES)
def test_evenness_buckets_equal_flow_bucket(mode: str) -> None:
    flows = evenness.make_flows(200)
    hashes = evenness.hashes_of(flows, mode, 0xAA6F48BC)
    for n in (1, 3, 64, 4096):
        got = evenness.buckets_of(hashes, n)
        want = [flow_bucket(mode, 0xAA6F48BC, n, s, sp, dp) for s, sp, dp in flows]
        assert got == want


def test_flows_table_nat_sourceip_is_one_node() -> None:
    table = evenness.flows_table(0x1234, 500)
    nat = table["static"]["nat"]["sourceip"]
    assert nat == [float(n) for n in evenness.NODE_COUNTS]  # everything on one node
    assert all(v < 1.5 for v in table["static"]["random"]["sourceip-sourceport"][:3])
    assert evenness.make_flows(5) == evenness.make_flows(5)  # deterministic
    assert all(
        s == ipaddress.IPv4Address("100.64.0.1")
        for s, _, _ in evenness.make_flows(5, one_source=True)
    )


def _cfg() -> Any:
    return LabTopo("x", 4, 1).vip_config([1], total_nodes=3)


def test_variants_render() -> None:
    cfg = _cfg()
    for key, (_title, fn) in setups.VARIANTS.items():
        text = fn(cfg, 1)
        assert "198.18.0.100" in text, key
    assert "counter name" not in setups.VARIANTS["no-counters"][1](cfg, 1)
    assert "ct state" not in setups.VARIANTS["rendered"][1](cfg, 1)
    assert "pkttype set host accept" in setups.ceiling_script("198.18.0.100", "eth0", accept=True)
    assert "198.18.0.100 drop" in setups.ceiling_script("198.18.0.100", "eth0", accept=False)
    spread = [setups.spread_script(cfg, k, 3) for k in (1, 2, 3)]
    ranges = [re.search(r"& 0x3e (\d+)-(\d+) ", text) for text in spread]
    covered = [v for m in ranges if m for v in range(int(m[1]), int(m[2]) + 1, 2)]
    assert sorted(covered) == list(range(0, 63, 2))  # every value once: a partition


def test_foreign_parsers() -> None:
    dev = (
        "Inter-|   Receive   |  Transmit\n face |bytes    packets errs\n"
        "    lo:       0       0    0    0    0     0          0         0 0 0\n"
        "  eth0: 9000 150 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n"
    )
    assert foreign.rx_packets(dev, "eth0") == 150
    assert foreign.parse_trafgen("\n  1000 packets outgoing\n  60000 bytes outgoing\n") == 1000
    conf = foreign.trafgen_conf(
        "03:bf:c6:12:00:64", "02:c1:00:00:01:00", "198.18.1.1", "198.18.0.100"
    )
    assert "da=03:bf:c6:12:00:64" in conf and "drnd()" in conf


def _summary(v: float) -> dict[str, float]:
    return {"median": v, "min": v * 0.9, "max": v * 1.1, "q1": v, "q3": v, "n": 3}


def _fake_results() -> dict[str, Any]:
    row = {
        "rps": _summary(30000),
        "norm_rps": _summary(31000),
        "p50_ms": _summary(1.0),
        "p99_ms": _summary(9.0),
        "errors": 0,
        "vs_ceiling": {"rps": _summary(0.98), "norm_rps": _summary(0.97)},
    }
    ratios = {
        k: {"rps": _summary(v), "norm_rps": _summary(v)}
        for k, v in (("vip/ceiling", 0.98), ("vip/haproxy", 1.7), ("vip/direct", 0.9))
    }
    analysis = {
        m: {
            "setups": {"ceiling": {**row, "vs_ceiling": None} and row, "vip": row},
            "ratios": ratios,
        }
        for m in ("keepalive", "close")
    }
    machine = {
        k: "x"
        for k in ("uname", "cpu_model", "nft", "nginx", "haproxy", "wrk", "trafgen", "python")
    }
    return {
        "version": 1,
        "started": "2026-01-01T00:00:00+00:00",
        "duration_s": 1.0,
        "machine": {**machine, "nproc": 2, "mem_gib": 24},
        "command": "python -m bench --quick",
        "params": {"duration": 3},
        "throughput": {
            "setups": [{"name": "ceiling", "title": "ceiling"}, {"name": "vip", "title": "VIP"}],
            "wrk": {"keepalive": ["wrk", "URL"], "close": ["wrk", "URL"]},
            "samples": [{"cpu": {"background": 0.1}}],
            "analysis": analysis,
        },
    }


def test_report_writes_page_and_summary(tmp_path: Path) -> None:
    results = _fake_results()
    out = tmp_path / "out"
    out.mkdir()
    (out / "failover.json").write_text(
        json.dumps(
            {
                "kills": 2,
                "p50_ms": 100,
                "p99_ms": 200,
                "max_ms": 250,
                "detection_ms": 300,
                "orphaned_clients": 4,
                "recovered_clients": 4,
                "other_clients_failed_requests": 0,
            }
        )
    )
    written = report.write(results, str(tmp_path / "docs"), str(out))
    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "VIP/ceiling" in page and "**met**" in page
    assert "## Rebalancing" in page and "**Pending.**" in page
    assert "250 ms" in page  # the failover file was read
    summary = json.loads((tmp_path / "docs" / "benchmarks.json").read_text())
    assert summary["targets"]["vip/ceiling keepalive"]["met"] is True
    assert summary["external"]["rebalancing"] == {"status": "pending"}
    assert any(p.endswith("bench-throughput.png") for p in written)


def test_vrrp_baseline_configuration() -> None:
    from bench import vrrp

    confs = [vrrp.keepalived_conf(k, "eth0", vrrp.VRRP_VIP) for k in (1, 2, 3)]
    prios = [int(re.search(r"priority (\d+)", c)[1]) for c in confs]  # type: ignore[index]
    assert prios == sorted(prios, reverse=True) and len(set(prios)) == 3  # n1 is the master
    assert all(f"{vrrp.VRRP_VIP}/32 dev eth0" in c and "advert_int 1" in c for c in confs)


def test_median_interval_by_order_statistics() -> None:
    # The textbook ranks: n=10 -> x(2), x(9); n=30 -> x(10), x(21) (95%).
    assert stats.median_ci(range(1, 11)) == (2.0, 9.0)
    assert stats.median_ci(range(1, 31)) == (10.0, 21.0)
    assert stats.median_ci([5, 1, 3]) == (1.0, 5.0)  # too few values for 95%: the whole range
    s = stats.summarize([float(v) for v in range(1, 31)])
    assert s.to_dict()["ci95"] == [10.0, 21.0]
