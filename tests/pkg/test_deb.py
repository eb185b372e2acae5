"""`make deb`, then the package installed with apt on this machine and used as a sysadmin would.

Runs as root (CI is root; a throwaway machine). Everything the install brought (the package and
the dependencies apt pulled in for it) is purged at the end. Kernel work happens only inside
private network namespaces (`unshare -n`) that die with the command.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from clusterip.hashing import flow_bucket

pytestmark = pytest.mark.lab

ROOT = Path(__file__).parents[2]
CIP = "/usr/bin/clusterip"
UNITS = ("clusterip-agent.service", "clusterip-static.service")
UNIT_DIR = Path("/lib/systemd/system")
RA = "/usr/lib/ocf/resource.d/clusterip/clusterip"
MARKER = Path("/var/lib/clusterip-pkg-test/installed")  # a crashed run's install, to undo
APT = ["apt-get", "-y", "-q", "-o", "DPkg::Lock::Timeout=300"]
ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",  # Debian's python3, not a venv or pyenv shim
    "DEBIAN_FRONTEND": "noninteractive",
    "LC_ALL": "C.UTF-8",
}


def run(
    argv: list[str], *, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run with Debian's PATH, from / (so no checkout's `clusterip` package is importable)."""
    done = subprocess.run(
        argv, capture_output=True, text=True, env=env or ENV, cwd="/", check=False
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
    return done


def installed(pkg: str) -> bool:
    done = run(["dpkg-query", "-W", "-f=${Status}", pkg], check=False)
    return done.returncode == 0 and "install ok installed" in done.stdout


def purge(pkgs: list[str]) -> None:
    present = [p for p in pkgs if installed(p)]
    if present:
        run([*APT, "purge", *present])


def build_deb() -> Path:
    if os.geteuid() != 0:
        pytest.skip("installs a Debian package: needs root (CI runs as root)")
    missing = [t for t in ("apt-get", "dpkg-deb", "dpkg-query") if shutil.which(t) is None]
    if missing or not Path("/etc/debian_version").exists():
        pytest.skip(f"not a Debian system (missing {', '.join(missing) or '/etc/debian_version'})")
    done = subprocess.run(
        ["make", "-s", "deb"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"make deb failed:\n{done.stdout}\n{done.stderr}"
    return Path(done.stdout.strip().splitlines()[-1])


def to_install(deb: Path) -> list[str]:
    """The packages `apt-get install ./deb` would install (simulated), ours included."""
    sim = run([*APT, "-s", "install", str(deb)], check=False)
    if sim.returncode != 0:  # package lists missing or stale: fetch them once
        run([*APT, "update"])
        sim = run([*APT, "-s", "install", str(deb)])
    return re.findall(r"^Inst (\S+)", sim.stdout, re.M)


@pytest.fixture(scope="module")
def deb() -> Iterator[tuple[Path, list[str]]]:
    """The built package, installed; yields (path, packages the install added)."""
    path = build_deb()
    if MARKER.exists():  # a previous run died before its clean-up
        purge(["clusterip", *MARKER.read_text().split()])
        MARKER.unlink()
    if installed("clusterip"):
        pytest.fail("clusterip is already installed here (not by this test): remove it first")
    added = to_install(path)
    assert "clusterip" in added
    MARKER.parent.mkdir(parents=True, exist_ok=True)
    MARKER.write_text(" ".join(added))
    try:
        run([*APT, "install", "--no-install-recommends", str(path)])
        yield path, added
    finally:
        purge(["clusterip"])
        purge([p for p in added if p != "clusterip"])
        MARKER.unlink(missing_ok=True)
        shutil.rmtree(MARKER.parent, ignore_errors=True)
    # After the purge nothing of ours is left.
    assert not installed("clusterip")
    assert not Path(CIP).exists()
    assert not Path("/etc/clusterip").exists()
    assert not any((UNIT_DIR / u).exists() for u in UNITS)


def test_dependencies_come_from_debian(deb: tuple[Path, list[str]]) -> None:
    path, added = deb
    depends = run(["dpkg-deb", "-f", str(path), "Depends"]).stdout
    for pkg in ("python3-nftables", "python3-click", "python3-prometheus-client"):
        assert pkg in depends
    assert "python3-pyroute2" in depends and "nftables" in depends
    assert "rich" not in depends  # the demo's, not the package's
    assert "python3-rich" not in added
    where = run(
        ["/usr/bin/python3", "-c", "import clusterip, pyroute2; print(clusterip.__file__)"],
    )
    assert where.stdout.startswith("/usr/lib/python3/dist-packages/clusterip/")
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "clusterip"]).stdout
    assert "/etc/clusterip/clusterip.toml" in conffiles
    assert "/etc/clusterip/static.toml" in conffiles


def test_version(deb: tuple[Path, list[str]]) -> None:
    path, _ = deb
    out = run([CIP, "--version"]).stdout.strip()
    with open(ROOT / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)["project"]["version"]
    package = run(["dpkg-deb", "-f", str(path), "Version"]).stdout.strip()
    assert out == f"clusterip, version {project}"
    assert package.split("-")[0] == project, "debian/changelog and pyproject.toml disagree"


def test_which_matches_the_kernel_hash(deb: tuple[Path, list[str]]) -> None:
    flags = ["--vip", "192.0.2.10", "--interface", "eth0", "--total-nodes", "3"]
    for src, sport in (("198.51.100.7", 40312), ("203.0.113.9", 1024), ("192.0.2.77", 65535)):
        done = run([CIP, "which", *flags, "--src", src, "--sport", str(sport), "--json"])
        doc = json.loads(done.stdout)
        want = flow_bucket(
            "sourceip-sourceport",
            _seed_for("192.0.2.10"),
            3,
            ipaddress.IPv4Address(src),
            sport,
            None,
        )
        assert (doc["vip"], doc["bucket"]) == ("192.0.2.10", want), doc
    bad = run([CIP, "which", *flags, "--src", "198.51.100.7", "--sport", "70000"], check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "clusterip: error: bad source port '70000': expected a number from 1 to 65535"
    ]


def _seed_for(vip: str) -> int:
    from clusterip import config as cfgmod

    return cfgmod.build(vip=vip, interface="eth0", total_nodes=3).seed


def test_units_verify(deb: tuple[Path, list[str]], tmp_path: Path) -> None:
    for unit in UNITS:
        done = run(["systemd-analyze", "verify", "--man=no", str(UNIT_DIR / unit)], check=False)
        assert done.returncode == 0, done.stderr
        assert unit not in done.stderr, done.stderr  # no warning about our unit
    # The check is not vacuous here: a broken copy of the same unit fails it.
    broken = tmp_path / "clusterip-broken.service"
    text = (UNIT_DIR / UNITS[0]).read_text()
    broken.write_text(text.replace(f"ExecStart={CIP} ", "ExecStart=/usr/bin/clusterip-gone "))
    done = run(["systemd-analyze", "verify", "--man=no", str(broken)], check=False)
    assert done.returncode != 0 and "clusterip-gone" in done.stderr
    agent = (UNIT_DIR / UNITS[0]).read_text()
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "Restart=on-failure"):
        assert line in agent.splitlines()
    assert re.search(r"^WatchdogSec=\d", agent, re.M)
    static = (UNIT_DIR / UNITS[1]).read_text()
    assert f"ExecStop={CIP} down -c /etc/clusterip/static.toml" in static.splitlines()


def test_man_page_covers_every_command(deb: tuple[Path, list[str]]) -> None:
    path = run(["man", "-w", "clusterip"]).stdout.strip()
    page = run(["sh", "-c", f"zcat {path} | groff -man -Tutf8 -P-c 2>/dev/null | col -b"]).stdout
    helptext = run([CIP, "--help"]).stdout
    commands = re.findall(r"^  ([a-z][a-z-]+)  ", helptext.split("Commands:")[1], re.M)
    assert {"up", "down", "take", "release", "status", "which", "agent"} <= set(commands)
    for name in commands:
        assert f"clusterip {name}" in page, name
        assert f"Usage: clusterip {name}" in page, name
    assert "/etc/clusterip/clusterip.toml" in page


def test_bash_completion(deb: tuple[Path, list[str]]) -> None:
    """bash calls the function with the command's name as $1, as here."""
    script = (
        ". /usr/share/bash-completion/completions/clusterip\n"
        "COMP_WORDS=(clusterip st); COMP_CWORD=1; _clusterip_completion clusterip\n"
        'echo "${COMPREPLY[*]}"; COMPREPLY=()\n'
        "COMP_WORDS=(clusterip release --); COMP_CWORD=2; _clusterip_completion clusterip\n"
        'echo "${COMPREPLY[*]}"\n'
    )
    out = run(["bash", "-c", script]).stdout.splitlines()
    assert out[0].split() == ["status", "stop"], out
    assert {"--now", "--vip", "--help"} <= set(out[1].split()), out


UP_DOWN = """
set -e
ip link add eth0 type veth peer name eth1
ip link set lo up; ip link set eth0 up; ip link set eth1 up
ip addr add 198.18.0.1/16 dev eth0
clusterip up --vip 198.18.0.100 --interface eth0 --total-nodes 3 --local-node 2
clusterip status --json > "$OUT"
ip -o -4 addr show dev eth0
clusterip take 3 --vip 198.18.0.100
clusterip release 3 --now --vip 198.18.0.100
clusterip down --vip 198.18.0.100
echo "tables after down: $(nft list tables | grep -c clusterip || true)"
"""


def test_static_mode_with_debian_pyroute2(deb: tuple[Path, list[str]], tmp_path: Path) -> None:
    """The installed command against the kernel, with Debian's python3-pyroute2 (0.7.2)."""
    version = run(["dpkg-query", "-W", "-f=${Version}", "python3-pyroute2"]).stdout
    out = run(
        ["unshare", "-n", "sh", "-c", UP_DOWN], env={**ENV, "OUT": str(tmp_path / "o")}
    ).stdout
    doc = json.loads((tmp_path / "o").read_text())
    [vip] = doc["vips"]
    assert (vip["vip"], vip["mode"], vip["owned"], vip["total_nodes"]) == (
        "198.18.0.100",
        "static",
        [2],
        3,
    )
    assert "198.18.0.100/32" in out
    assert "took 3" in out and "released 3" in out
    assert "tables after down: 0" in out, (version, out)


AGENT = """
set -e
ip link add eth0 type veth peer name eth1
ip link set lo up; ip link set eth0 up; ip link set eth1 up
ip addr add 198.18.0.1/16 dev eth0
printf 'a-shared-secret-of-32-bytes-----' > "$KEY"
chmod 600 "$KEY"
clusterip agent --vip 198.18.0.100 --interface eth0 --node-id 1 --key-file "$KEY" \
    --metrics 127.0.0.1:9473 2>"$LOG" &
pid=$!
for i in $(seq 50); do
    clusterip status --json > "$OUT" 2>/dev/null && grep -q '"owned_count": 4096' "$OUT" && break
    sleep 0.2
done
curl -sS http://127.0.0.1:9473/metrics > "$MET"
kill -TERM $pid; wait $pid || true
"""


def test_agent_with_debian_pyroute2(deb: tuple[Path, list[str]], tmp_path: Path) -> None:
    env = {name: str(tmp_path / name) for name in ("KEY", "LOG", "OUT", "MET")}
    run(["unshare", "-n", "sh", "-c", AGENT], env={**ENV, **env})
    metrics = (tmp_path / "MET").read_text()  # Debian's python3-prometheus-client
    assert 'clusterip_buckets_owned{vip="198.18.0.100"} 4096.0' in metrics, metrics
    log = (tmp_path / "LOG").read_text()
    doc = json.loads((tmp_path / "OUT").read_text())
    assert doc["agent"]["node_id"] == 1, log
    [vip] = doc["vips"]
    assert vip["vip"] == "198.18.0.100" and vip["owned_count"] == 4096, (vip, log)
    assert "Traceback" not in log, log


def test_lab_command_with_debian_pyroute2(deb: tuple[Path, list[str]]) -> None:
    name = "pk" + secrets.token_hex(3)
    try:
        done = run(
            [CIP, "lab", "up", "--nodes", "2", "--clients", "1", "--name", name], check=False
        )
        assert done.returncode == 0, done.stderr
        probe = run([CIP, "lab", "exec", "--name", name, "n1", "--", "ip", "-br", "addr"])
        assert "198.18.0.1/" in probe.stdout
    finally:
        run([CIP, "lab", "down", "--name", name], check=False)
    left = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [ns for ns in left if ns.startswith(name)]


OCF = """
set -e
ip link add eth0 type veth peer name eth1
ip link set lo up; ip link set eth0 up; ip link set eth1 up
ip addr add 198.18.0.1/16 dev eth0
ocf-tester -n vip -o ip=198.18.0.100 -o nic=eth0 -o CRM_meta_clone=1 -o CRM_meta_clone_max=3 \
    /usr/lib/ocf/resource.d/clusterip/clusterip
"""


def test_resource_agent_passes_ocf_tester(deb: tuple[Path, list[str]], tmp_path: Path) -> None:
    if shutil.which("ocf-tester") is None or shutil.which("xmllint") is None:
        pytest.fail("ocf-tester/xmllint missing: `make setup` installs resource-agents")
    assert os.access(RA, os.X_OK)
    env = {**ENV, "HA_RSCTMP": str(tmp_path)}  # its lock file, not in /run/resource-agents
    done = run(["unshare", "-n", "sh", "-c", OCF], check=False, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{RA} passed all tests" in done.stdout
