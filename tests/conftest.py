"""Shared test helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden"


def check_golden(relpath: str, actual: str) -> None:
    """Compare with tests/golden/RELPATH; UPDATE_GOLDEN=1 rewrites it instead."""
    path = GOLDEN / relpath
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual)
        return
    if not path.exists():
        pytest.fail(f"missing golden file {path}: run with UPDATE_GOLDEN=1 and review it")
    assert actual == path.read_text(), f"output differs from {path}"
