"""The agent's live status page in a real browser (Debian's headless Chromium), during a
failover: node 3's agent is killed with -9, and node 1's page must show node 3 dead and the
survivors' new shares, as its DOM (what Chromium rendered from the page's own script) says.

The screenshot is kept in the test's directory; with CLUSTERIP_SCREENSHOT_DIR set it is copied
there too (docs/status-page.png in the README comes from such a run).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

import pytest

from clusterip.lab.agents import Agents
from clusterip.lab.net import Lab
from tests.lab.conftest import MakeLab, start_agents

PORT = 9473
CHROMIUM = shutil.which("chromium")
ROW = re.compile(r'<tr data-node="(\d+)" data-state="(\w+)" data-buckets="(\d+)">')


def chromium(lab: Lab, k: int, profile: Path, *args: str) -> str:
    """Headless Chromium in node k's namespace (the page binds to its localhost)."""
    assert CHROMIUM is not None
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--window-size=1280,1000",
        "--hide-scrollbars",
        *args,
        f"http://127.0.0.1:{PORT}/",
    ]
    done = lab.run(lab.topo.node_ns(k), argv, timeout=90)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make setup installs it)")
def test_status_page_shows_a_failover_in_chromium(
    make_lab: MakeLab, tmp_path: Path, agents: list[Agents]
) -> None:
    lab = make_lab(nodes=3, clients=30)
    a = start_agents(lab, tmp_path, agents, [1, 2, 3], "--metrics", str(PORT))
    assert lab.probe(proto="tcp", port=80, per_source=3).errors == 0
    # Before: three members, a third each.
    dom = chromium(lab, 1, tmp_path / "profile", "--dump-dom")
    rows = {int(n): (state, int(b)) for n, state, b in ROW.findall(dom)}
    assert set(rows) == {1, 2, 3} and all(s == "active" for s, _ in rows.values()), rows
    assert all(1365 <= b <= 1366 for _, b in rows.values()), rows
    a.kill(3)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the survivors' verdict (250 ms) and the new shares
        doc = a.status(1)
        if sorted(v["owned_count"] for v in doc["vips"]) == [2048]:
            break
        time.sleep(0.1)
    shot = tmp_path / "status-page.png"
    chromium(lab, 1, tmp_path / "profile", f"--screenshot={shot}")
    dom = chromium(lab, 1, tmp_path / "profile", "--dump-dom")
    rows = {int(n): (state, int(b)) for n, state, b in ROW.findall(dom)}
    assert rows == {1: ("active", 2048), 2: ("active", 2048), 3: ("dead", 0)}, rows
    assert "node 3 down (timeout)" in dom and 'class="kind-death"' in dom
    assert "dead since" in dom
    # The counters the page shows (accepted, XDP), and no secret anywhere in it.
    assert 'data-counter="accepted"' in dom and 'data-counter="XDP dropped"' in dom
    key = (tmp_path / "cluster.key").read_text().strip()
    assert key not in dom and "cluster.key" not in dom
    assert shot.stat().st_size > 20_000  # a rendered page, not an empty one
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = os.environ.get("CLUSTERIP_SCREENSHOT_DIR")
    if out:
        shutil.copy(shot, Path(out) / "status-page.png")
    # /metrics is unchanged beside it, and the JSON the page polls is the status document.
    metrics = lab.run(lab.topo.node_ns(1), ["curl", "-s", f"http://127.0.0.1:{PORT}/metrics"],
                      timeout=10).stdout  # fmt: skip
    assert "clusterip_buckets_owned" in metrics
    raw = lab.run(lab.topo.node_ns(1), ["curl", "-s", f"http://127.0.0.1:{PORT}/status.json"],
                  timeout=10).stdout  # fmt: skip
    assert '"vips"' in raw and '"events"' in raw
    # Localhost only: the node's own address does not answer.
    addr = lab.topo.node_addr(1)
    far = lab.run(lab.topo.client_ns, ["curl", "-s", "-m", "2", f"http://{addr}:{PORT}/"],
                  timeout=10)  # fmt: skip
    assert far.returncode != 0
