"""Throughput and latency: wrk against nginx, every set-up measured in every round.

Rounds are interleaved: each round measures every set-up once in each mode, starting from a
different set-up each time, so drift and background load hit all of them alike. Ratios are
taken per round (back to back) and summarized by their median, with a 95% confidence interval
of that median (the request rate of two shared cores moves by about 10% from one run of a few
seconds to the next, so it takes many short rounds to pin a ratio down to a few percent).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bench.setups import Setup
from bench.stats import paired_ratios, summarize
from bench.sysinfo import Meter
from bench.wrk import MODES, WrkResult, parse_wrk, wrk_argv
from clusterip.lab.net import Lab, LabError

RATIOS = (
    ("vip", "ceiling"),
    ("vip", "haproxy"),
    ("vip", "direct"),
    ("vip", "spread"),
    ("spread", "ceiling"),
)
TARGETS = {"vip/ceiling": 0.97, "vip/haproxy": 1.6}


@dataclass(frozen=True)
class WrkParams:
    duration: float
    threads: int
    connections: int
    warmup: float
    nice: int
    quiet: float = 0.15  # a sample with more background CPU than this (share of all CPUs) ...
    retries: int = 1  # ... is measured again, at most this many times; the quietest is kept

    def argv(self, url: str, mode: str, duration: float | None = None) -> list[str]:
        argv = wrk_argv(
            url,
            mode=mode,
            duration=self.duration if duration is None else duration,
            threads=self.threads,
            connections=self.connections,
        )
        return with_nice(argv, self.nice)


def with_nice(argv: list[str], nice: int) -> list[str]:
    return ["nice", "-n", str(nice), *argv] if nice else argv


def run_wrk(lab: Lab, argv: Sequence[str], duration: float) -> WrkResult:
    done = lab.run(lab.topo.client_ns, argv, timeout=duration + 30)
    if done.returncode != 0:
        raise LabError(f"wrk failed (exit {done.returncode}): {done.stderr.strip()[:300]}")
    return parse_wrk(done.stdout)


def rotate(items: Sequence[Setup], start: int) -> list[Setup]:
    k = start % len(items) if items else 0
    return [*items[k:], *items[:k]]


def wait_quiet(lab_inodes: Sequence[int], threshold: float, max_wait: float) -> float:
    """Wait (at most `max_wait` s) for a second with background CPU below `threshold`."""
    end = time.monotonic() + max_wait
    while True:
        meter = Meter(lab_inodes)
        time.sleep(1.0)
        bg = meter.stop()["background"]
        if bg <= threshold or time.monotonic() >= end:
            return bg


def sample_once(
    lab: Lab, url: str, mode: str, params: WrkParams, lab_inodes: Sequence[int]
) -> dict[str, Any]:
    meter = Meter(lab_inodes)
    res = run_wrk(lab, params.argv(url, mode), params.duration)
    cpu = meter.stop()
    ncpu = os.cpu_count() or 1
    norm = res.requests / cpu["lab_cpu_s"] * ncpu if cpu["lab_cpu_s"] > 0 else 0.0
    return {"url": url, **res.to_dict(), "norm_rps": norm, "cpu": cpu}


def measure(
    lab: Lab,
    setups: Sequence[Setup],
    params: WrkParams,
    rounds: int,
    lab_inodes: Sequence[int],
    log: Callable[[str], None],
    modes: Sequence[str] = MODES,
) -> list[dict[str, Any]]:
    """Every (round, mode, set-up) sample, in the order measured.

    All set-ups are live at once (each on its own address); a round measures each of them once
    per mode, back to back, starting from a different set-up each round. A sample taken while
    other processes used more than `params.quiet` of the CPUs is retried (after waiting up to
    10 s for a quiet second) up to `params.retries` times; the quietest attempt is kept."""
    samples: list[dict[str, Any]] = []
    urls: dict[str, str] = {}
    entered: list[Setup] = []
    try:
        for setup in setups:
            urls[setup.name] = setup.enter(lab)
            entered.append(setup)
        for rnd in range(rounds):
            for mode in modes:
                line = []
                for setup in rotate(setups, rnd):
                    best = _sample(lab, urls[setup.name], mode, params, lab_inodes)
                    samples.append({"round": rnd, "setup": setup.name, "mode": mode, **best})
                    line.append(f"{setup.name} {best['rps']:.0f}")
                log(f"  round {rnd + 1}/{rounds} {mode:<9} req/s: " + ", ".join(line))
    finally:
        for setup in reversed(entered):
            setup.leave(lab)
    return samples


def _sample(
    lab: Lab, url: str, mode: str, params: WrkParams, lab_inodes: Sequence[int]
) -> dict[str, Any]:
    if params.warmup > 0:
        run_wrk(lab, params.argv(url, mode, params.warmup), params.warmup)
    best = sample_once(lab, url, mode, params, lab_inodes)
    tries = 1
    while best["cpu"]["background"] > params.quiet and tries <= params.retries:
        wait_quiet(lab_inodes, params.quiet, 10.0)
        again = sample_once(lab, url, mode, params, lab_inodes)
        tries += 1
        if again["cpu"]["background"] < best["cpu"]["background"]:
            best = again
    return {"tries": tries, **best}


def _series(samples: Sequence[dict[str, Any]], setup: str, mode: str, key: str) -> list[float]:
    rows = sorted(
        (s for s in samples if s["setup"] == setup and s["mode"] == mode), key=lambda s: s["round"]
    )
    return [float(s["cpu"][key[4:]] if key.startswith("cpu.") else s[key]) for s in rows]


METRICS = ("rps", "norm_rps")


def analyze(
    samples: Sequence[dict[str, Any]], setups: Sequence[Setup], modes: Sequence[str] = MODES
) -> dict[str, Any]:
    """Per mode: each set-up's summaries, and per-round ratios (for the request rate and the
    CPU-normalised rate) of every set-up to the ceiling and of the VIP to each baseline."""
    out: dict[str, Any] = {}
    names = [s.name for s in setups]
    for mode in modes:
        table: dict[str, Any] = {}
        for name in names:
            if not _series(samples, name, mode, "rps"):
                continue
            row: dict[str, Any] = {
                key: summarize(_series(samples, name, mode, key)).to_dict()
                for key in (*METRICS, "p50_ms", "p99_ms", "cpu.busy", "cpu.background")
            }
            row["errors"] = int(
                sum(_series(samples, name, mode, "socket_errors"))
                + sum(_series(samples, name, mode, "non_2xx"))
            )
            if name != "ceiling" and "ceiling" in names:
                row["vs_ceiling"] = {
                    m: summarize(
                        paired_ratios(
                            _series(samples, name, mode, m), _series(samples, "ceiling", mode, m)
                        )
                    ).to_dict()
                    for m in METRICS
                }
            table[name] = row
        ratios: dict[str, Any] = {}
        for num, den in RATIOS:
            if num in table and den in table:
                ratios[f"{num}/{den}"] = {
                    m: summarize(
                        paired_ratios(
                            _series(samples, num, mode, m), _series(samples, den, mode, m)
                        )
                    ).to_dict()
                    for m in METRICS
                }
        out[mode] = {"setups": table, "ratios": ratios}
    return out
