"""scripts/setup-debs.sh: what it leaves on the host when apt-get fails (nothing)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "setup-debs.sh"


def _tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("apt_status", [0, 100])
def test_policy_rc_d_is_removed_whatever_apt_does(tmp_path: Path, apt_status: int) -> None:
    if os.geteuid() != 0:
        pytest.skip("the script installs only as root")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    policy = tmp_path / "policy-rc.d"
    _tool(bindir, "dpkg-query", "exit 1")  # every package missing
    # apt-get sees the policy file while it runs (that is its point), then fails or not.
    _tool(bindir, "apt-get", f'[ -x "{policy}" ] || exit 3\nexit {apt_status}')
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "POLICY_RC_D": str(policy)}
    done = subprocess.run(["sh", str(SCRIPT), "nonexistent-pkg"], env=env, capture_output=True)
    assert done.returncode == (0 if apt_status == 0 else apt_status), done.stderr
    assert not policy.exists()


def test_an_existing_policy_file_is_left_alone(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the script installs only as root")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    policy = tmp_path / "policy-rc.d"
    policy.write_text("#!/bin/sh\nexit 0\n")
    _tool(bindir, "dpkg-query", "exit 1")
    _tool(bindir, "apt-get", "exit 100")
    env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "POLICY_RC_D": str(policy)}
    subprocess.run(["sh", str(SCRIPT), "nonexistent-pkg"], env=env, capture_output=True)
    assert policy.read_text() == "#!/bin/sh\nexit 0\n"
