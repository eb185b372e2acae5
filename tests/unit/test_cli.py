"""The command line without a kernel: import-iptables, which with explicit flags, errors."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib

from clusterip import config
from clusterip.hashing import flow_bucket


def cip(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clusterip", *args], capture_output=True, text=True, timeout=60
    )


LINE = (
    "iptables -I INPUT -d 192.0.2.10 -i eth0 -p tcp --dport 80 -j CLUSTERIP --new "
    "--hashmode sourceip-sourceport --clustermac 01:00:5E:00:00:20 --total-nodes 3 "
    "--local-node 2 --hash-init 7"
)


def test_import_iptables_prints_loadable_toml(tmp_path: object) -> None:
    res = cip("import-iptables", LINE.replace("--", "\u2013"))
    assert res.returncode == 0, res.stderr
    doc = tomllib.loads(res.stdout)
    (cfg,) = config.parse_document(doc)
    assert str(cfg.vip) == "192.0.2.10" and cfg.local_nodes == (2,) and cfg.seed == 7
    assert cfg.dports == (80,) and cfg.protocol == "tcp" and cfg.total_nodes == 3


def test_import_rejects_other_rules() -> None:
    res = cip("import-iptables", "iptables -A INPUT -p tcp --dport 22 -j ACCEPT")
    assert res.returncode == 2
    assert len(res.stderr.strip().splitlines()) == 1
    assert "CLUSTERIP" in res.stderr and res.stdout == ""


def test_which_with_explicit_config() -> None:
    args = ["which", "--vip", "192.0.2.10", "--interface", "eth0", "--total-nodes", "5"]
    res = cip(*args, "--src", "198.51.100.7", "--sport", "40000", "--json")
    assert res.returncode == 0, res.stderr
    cfg = config.build(vip="192.0.2.10", interface="eth0", total_nodes=5)
    expected = flow_bucket(cfg.hashmode, cfg.seed, 5, config.parse_ip("198.51.100.7", "src"), 40000)
    assert json.loads(res.stdout) == {"vip": "192.0.2.10", "bucket": expected, "node": expected}


def test_which_needs_the_port_for_port_modes() -> None:
    res = cip("which", "--vip", "192.0.2.10", "--interface", "eth0", "--total-nodes", "5",
              "--src", "198.51.100.7")  # fmt: skip
    assert res.returncode == 2 and "needs --sport" in res.stderr


def test_usage_errors_are_one_line_exit_2() -> None:
    for args in (["up", "--bogus"], ["take"], ["nosuchcommand"]):
        res = cip(*args)
        assert res.returncode == 2, (args, res)
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
