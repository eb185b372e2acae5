"""The README's table of agent settings is the one in clusterip/core/defaults.py."""

from __future__ import annotations

import re
from pathlib import Path

from clusterip.core.defaults import SETTINGS, Setting

README = Path(__file__).resolve().parents[2] / "README.md"


def _default(s: Setting) -> str:
    if s.default is None:
        return "(required)" if s.key in ("node_id", "key_file") else "(none)"
    if s.default == ():
        return "(none)"
    if isinstance(s.default, bool):
        return str(s.default).lower()
    return str(s.default)


def _allowed(s: Setting) -> str:
    if s.low is None or s.high is None:
        return ""
    return f"{s.low:g}..{s.high:g}"


def render_table() -> str:
    rows = ["| setting | default | allowed | what |", "|---|---|---|---|"]
    rows += [f"| `{s.key}` | {_default(s)} | {_allowed(s)} | {s.help} |" for s in SETTINGS]
    return "\n".join(rows)


def test_readme_settings_table_matches_the_defaults() -> None:
    text = README.read_text()
    found = re.search(r"<!-- agent-settings:[^\n]*-->\n(.*?)\n<!-- /agent-settings -->", text, re.S)
    assert found, "the README lost its agent settings table markers"
    assert found.group(1) == render_table(), (
        "regenerate it: python -m tests.unit.test_readme_settings"
    )


if __name__ == "__main__":
    print(render_table())
