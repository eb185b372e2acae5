"""A real Pacemaker + corosync cluster on three lab nodes runs ocf:clusterip:clusterip as a clone.

Each lab node runs corosync and pacemakerd in its network namespace plus a private mount and
UTS namespace: /etc/corosync, /var/lib/pacemaker, /var/lib/corosync, the logs, /run and
/dev/shm (libqb's IPC) are the node's own directories, and /usr/lib/ocf/resource.d shows
this checkout's resource agent (and resource-agents' heartbeat ones). Nothing on the host's
file system or network is touched.
The resources are configured with the very `pcs` and `crm` commands of docs/install.md.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from clusterip.lab.agents import KEY
from clusterip.lab.net import Lab
from tests.lab.conftest import MakeLab
from tests.lab.test_ocf import answered, expected, owned, wait_all_served

RA = Path(__file__).parents[2] / "packaging" / "ocf" / "clusterip"
CLUSTERIP = str(Path(sys.executable).parent / "clusterip")
HEARTBEAT = "/usr/lib/ocf/resource.d/heartbeat"
TOOLS = ("corosync", "pacemakerd", "pcs", "crm", "crm_mon")
MISSING = [t for t in TOOLS if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"{', '.join(MISSING)} not installed (`make setup` installs them)"
)

NODE_SH = r"""
set -e
k=$1; d=$2/n$k; shared=$2
mkdir -p $d/etc-corosync $d/lib-corosync $d/log-corosync $d/log-pacemaker $d/pcsd \
         $d/lib-pacemaker/cib $d/lib-pacemaker/pengine $d/lib-pacemaker/blackbox \
         $d/lib-pacemaker/cores
cp $shared/corosync.conf $shared/authkey $d/etc-corosync/
cp $shared/cib.xml $d/lib-pacemaker/cib/cib.xml
chmod 400 $d/etc-corosync/authkey
chown -R hacluster:haclient $d/lib-pacemaker $d/log-pacemaker
mount --make-rprivate /
mount --bind $d/etc-corosync /etc/corosync
mount --bind $d/lib-corosync /var/lib/corosync
mount --bind $d/log-corosync /var/log/corosync
mount --bind $d/log-pacemaker /var/log/pacemaker
mount --bind $d/lib-pacemaker /var/lib/pacemaker
mount --bind $d/pcsd /var/lib/pcsd
mount --bind $shared/resource.d /usr/lib/ocf/resource.d
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /dev/shm
mkdir -p /run/crm /run/resource-agents /run/lock
hostname n$k
corosync -f > $d/corosync.log 2>&1 &
exec pacemakerd > $d/pacemakerd.log 2>&1
"""

# The first CIB: no fencing in a lab, and a DC elected in 2 s instead of the default 20 s.
CIB = """<cib crm_feature_set="3.16.1" validate-with="pacemaker-3.9" epoch="1" num_updates="0"
 admin_epoch="0">
  <configuration>
    <crm_config>
      <cluster_property_set id="cib-bootstrap-options">
        <nvpair id="opt-stonith" name="stonith-enabled" value="false"/>
        <nvpair id="opt-dc-deadtime" name="dc-deadtime" value="2s"/>
      </cluster_property_set>
    </crm_config>
    <nodes/>
    <resources/>
    <constraints/>
  </configuration>
  <status/>
</cib>
"""

COROSYNC_CONF = """totem {
    version: 2
    cluster_name: cip
    transport: knet
    crypto_cipher: none
    crypto_hash: none
    token: 1000
}
nodelist {
%s}
quorum {
    provider: corosync_votequorum
}
logging {
    to_stderr: yes
    to_syslog: no
    to_logfile: no
}
"""


class Pacemaker:
    """corosync + pacemakerd on every node of a lab; commands run on node 1."""

    def __init__(self, lab: Lab, tmp: Path) -> None:
        self.lab = lab
        self.tmp = tmp
        self.procs: dict[int, subprocess.Popen[Any]] = {}
        nodes = "".join(
            f"    node {{\n        ring0_addr: {lab.topo.node_addr(k)}\n        name: n{k}\n"
            f"        nodeid: {k}\n    }}\n"
            for k in lab.topo.node_indexes
        )
        (tmp / "corosync.conf").write_text(COROSYNC_CONF % nodes)
        (tmp / "authkey").write_bytes(os.urandom(256))
        (tmp / "cib.xml").write_text(CIB)
        (tmp / "node.sh").write_text(NODE_SH)
        ra_dir = tmp / "resource.d" / "clusterip"
        ra_dir.mkdir(parents=True)
        shutil.copy2(RA, ra_dir / "clusterip")
        # IPaddr2 too: the migration starts from a cloned IPaddr2 (never started here)
        shutil.copytree(HEARTBEAT, tmp / "resource.d" / "heartbeat", symlinks=True)

    def start(self) -> None:
        for k in self.lab.topo.node_indexes:
            argv = ["unshare", "-m", "-u", "--propagation", "private"]
            argv += ["sh", str(self.tmp / "node.sh"), str(k), str(self.tmp)]
            self.procs[k] = self.lab.spawn(self.lab.topo.node_ns(k), argv, role="pacemaker")
        self.wait(lambda mon: len(mon.findall("nodes/node[@online='true']")) == 3, 90, "online")

    def run(self, *argv: str, k: int = 1) -> str:
        env = ["env", f"HOME={self.tmp}", "LC_ALL=C.UTF-8"]
        cmd = ["nsenter", "-t", str(self.procs[k].pid), "-n", "-m", "-u", *env, *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 0, (argv, done.stdout, done.stderr)
        return done.stdout

    def sh(self, script: str) -> None:
        """A docs/install.md snippet, as one shell script stopping at the first error."""
        self.run("sh", "-e", "-c", script)

    def mon(self) -> ET.Element:
        return ET.fromstring(self.run("crm_mon", "-1", "--output-as=xml"))

    def wait(self, ok: Any, timeout: float, what: str) -> float:
        start = time.monotonic()
        while True:
            try:
                mon = self.mon()
                if ok(mon):
                    return time.monotonic() - start
            except AssertionError:
                mon = None
            if time.monotonic() - start > timeout:
                text = "" if mon is None else ET.tostring(mon, encoding="unicode")
                pytest.fail(f"pacemaker: not {what} within {timeout} s\n{text}")
            time.sleep(0.3)

    def placement(self, mon: ET.Element, rsc: str) -> dict[int, str]:
        """Started instance -> node name: RSC:0 -> n1 ... (an anonymous clone's instances are
        all called RSC in crm_mon: numbered here in their order)."""
        out: dict[int, str] = {}
        for res in mon.iter("resource"):
            rid = res.get("id", "")
            node = res.find("node")
            if res.get("role") != "Started" or node is None:
                continue
            if rid.startswith(f"{rsc}:"):
                out[int(rid.split(":")[1])] = node.get("name", "")
            elif rid == rsc:
                out[len(out)] = node.get("name", "")
        return out

    def wait_placed(self, rsc: str, nodes: set[str], timeout: float = 60.0) -> dict[int, str]:
        def ok(mon: ET.Element) -> bool:
            placed = self.placement(mon, rsc)
            failed = any(r.get("failed") == "true" for r in mon.iter("resource"))
            return set(placed) == {0, 1, 2} and set(placed.values()) == nodes and not failed

        self.wait(ok, timeout, f"3 instances of {rsc} started on {sorted(nodes)}")
        return self.placement(self.mon(), rsc)

    def delete(self, rsc: str) -> None:
        self.run("pcs", "resource", "delete", rsc, "--force")
        self.wait(lambda mon: not any(mon.iter("resource")), 60, f"{rsc} gone")

    def stop(self) -> None:
        for proc in self.procs.values():  # pacemakerd stops its resources, then exits
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        for proc in self.procs.values():
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        for proc in self.procs.values():  # corosync shares the process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def holders(placement: dict[int, str]) -> dict[int, int]:
    """Bucket (node number) -> lab node index, from the instances' placement."""
    return {clone + 1: int(node[1:]) for clone, node in placement.items()}


def docs_snippet(name: str) -> str:
    """A ```sh block of docs/install.md that follows a line `<!-- test: NAME -->`."""
    text = (Path(__file__).parents[2] / "docs" / "install.md").read_text()
    after = text.split(f"<!-- test: {name} -->", 1)[1]
    return after.split("```sh\n", 1)[1].split("```", 1)[0]


def lab_values(text: str) -> str:
    """The docs' example values made this lab's: its VIP and prefix, hashmode sourceip (each
    client address is one bucket, so every answer can be checked)."""
    return (
        text.replace("192.0.2.10", "198.18.0.100")
        .replace("cidr_netmask=24", "cidr_netmask=16")
        .replace("clusterip_hash=sourceip-sourceport", "clusterip_hash=sourceip")
    )


def this_checkout(text: str) -> str:
    """... and the resource agent runs this checkout's clusterip."""
    return lab_values(text).replace(" nic=eth0", f" nic=eth0 clusterip_bin={CLUSTERIP}")


def test_real_pacemaker_runs_the_clone(make_lab: MakeLab, tmp_path: Path) -> None:
    lab = make_lab(nodes=3, clients=60)
    pcmk = Pacemaker(lab, tmp_path)
    all3 = {"n1", "n2", "n3"}
    try:
        pcmk.start()

        # Migration: the IPaddr2 clone of docs/install.md (created stopped: this kernel has no
        # ipt_CLUSTERIP), switched in place with the docs' commands, then started.
        pcmk.sh(lab_values(docs_snippet("pcs-before")).rstrip() + " --disabled")
        pcmk.sh(docs_snippet("migrate"))
        pcmk.run("pcs", "resource", "update", "ClusterIP", f"clusterip_bin={CLUSTERIP}")
        pcmk.run("pcs", "resource", "enable", "ClusterIP-clone")
        placed = pcmk.wait_placed("ClusterIP", all3)
        res = lab.probe(proto="tcp", port=80)
        assert res.errors == 0 and answered(res) == expected(lab, holders(placed))

        # Node 3 goes into standby: Pacemaker stops its instance and starts it on a survivor,
        # clone-max unchanged, so that node holds two node numbers (`take`).
        pcmk.run("pcs", "node", "standby", "n3", "--wait=60")
        placed = pcmk.wait_placed("ClusterIP", {"n1", "n2"})
        assert owned(lab, 3) == []
        assert sorted(owned(lab, 1) + owned(lab, 2)) == [1, 2, 3]
        res = lab.probe(proto="tcp", port=80)
        assert res.errors == 0 and answered(res) == expected(lab, holders(placed))
        pcmk.run("pcs", "node", "unstandby", "n3", "--wait=60")
        pcmk.delete("ClusterIP")
        assert [owned(lab, k) for k in (1, 2, 3)] == [[], [], []]

        # The crm commands of docs/install.md, before (created stopped) and after.
        pcmk.sh(
            lab_values(docs_snippet("crm-before")).replace(
                "op monitor interval=10s", "op monitor interval=10s meta target-role=Stopped"
            )
        )
        pcmk.delete("ClusterIP")
        pcmk.sh(this_checkout(docs_snippet("crm-after")))
        placed = pcmk.wait_placed("vip", all3)
        res = lab.probe(proto="tcp", port=80)
        assert res.errors == 0 and answered(res) == expected(lab, holders(placed))
        pcmk.delete("vip")

        # Agent mode (docs/install.md): one agent per node shares the buckets by itself.
        key = tmp_path / "clusterip.key"
        key.write_text(KEY)
        key.chmod(0o600)
        agent_mode = this_checkout(docs_snippet("pcs-agent")).replace(
            "/etc/clusterip/clusterip.key", str(key)
        )
        pcmk.sh(agent_mode)
        pcmk.wait_placed("vip", all3)
        wait_all_served(lab, {"n1", "n2", "n3"})
        pcmk.delete("vip")
        assert [owned(lab, k) for k in (1, 2, 3)] == [[], [], []]

        # The pcs command of docs/install.md; then a node fails (its link goes down): corosync
        # notices, Pacemaker recovers its instance on a survivor.
        pcmk.sh(this_checkout(docs_snippet("pcs-after")))
        placed = pcmk.wait_placed("vip", all3)
        victim = placed[1] if placed[1] != "n1" else placed[2]  # commands run on n1
        failed_at = time.monotonic()
        lab.run(
            lab.topo.node_ns(int(victim[1:])), ["ip", "link", "set", "eth0", "down"], timeout=10
        )
        placed = pcmk.wait_placed("vip", all3 - {victim})
        res = lab.probe(proto="tcp", port=80)
        recovered = time.monotonic() - failed_at
        assert res.errors == 0 and answered(res) == expected(lab, holders(placed))
        print(
            f"link down on {victim} -> Pacemaker moved its instance, all served: {recovered:.1f} s"
        )
    finally:
        pcmk.stop()
