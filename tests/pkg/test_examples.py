"""The example configs shipped in /etc/clusterip/ parse once their tables are uncommented."""

from __future__ import annotations

from pathlib import Path

import pytest

from clusterip import config as cfgmod
from clusterip.config import ConfigError
from clusterip.reactor.settings import settings_from_toml

ETC = Path(__file__).parents[2] / "packaging" / "etc"


def uncommented(src: Path, dst: Path) -> Path:
    """Everything from the first `# [[vip]]` on, with the leading `# ` removed."""
    lines = src.read_text().splitlines()
    start = lines.index("# [[vip]]")
    body = [line.removeprefix("# ") for line in lines[start:]]
    dst.write_text("\n".join(body) + "\n")
    return dst


def test_shipped_files_have_no_active_table() -> None:
    """As shipped, nothing is configured: the services fail with one clear line."""
    for name in ("clusterip.toml", "static.toml"):
        with pytest.raises(ConfigError, match=r"expected \[\[vip\]\] tables"):
            cfgmod.load_toml(str(ETC / name))


def test_agent_example(tmp_path: Path) -> None:
    path = str(uncommented(ETC / "clusterip.toml", tmp_path / "clusterip.toml"))
    [cfg] = cfgmod.load_toml(path, known_extra=("agent",), agent=True)
    assert str(cfg.vip) == "192.0.2.10"
    assert cfg.dports == (80, 443)
    settings = settings_from_toml(path, {})
    assert settings.node_id == 1
    assert settings.key_file == "/etc/clusterip/clusterip.key"
    assert settings.peers == ("192.0.2.2", "192.0.2.3")


def test_static_example(tmp_path: Path) -> None:
    path = str(uncommented(ETC / "static.toml", tmp_path / "static.toml"))
    [cfg] = cfgmod.load_toml(path)
    assert (cfg.total_nodes, cfg.local_nodes) == (3, (1,))
