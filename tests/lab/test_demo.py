"""`make demo`'s agent part runs to the end and its summary holds: no request failed outside
the 2 s after the kill -9 (rejoin, planned restart, drain and resume cost none; a SYN sent in
a move's hand-over instant waits for its retransmit, as real clients do), and the planned
restart cost no request."""

from __future__ import annotations

import os
import re
import subprocess
import sys


def test_demo_agents_part() -> None:
    argv = [sys.executable, "-m", "clusterip.lab.demo", "--agents-only"]  # its own lab
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERIP_DEMO")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=240, env=env)
    out = " ".join(done.stdout.split())
    assert done.returncode == 0, out[-2000:]
    summary = re.search(r"summary: (\d+) requests, (\d+) failed .*?(\d+) outside it; the "
                        r"planned restart: (\d+) requests, (\d+) failed", out)  # fmt: skip
    assert summary, out[-2000:]
    total, _failed, outside, restart, restart_failed = map(int, summary.groups())
    print(f" [{summary.group(0)}]", end="")
    assert total > 3000 and outside == 0 and restart > 100 and restart_failed == 0
