"""Fixtures for tests that build real labs in network namespaces (root only)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterip.lab.agents import Agents, write_key
from clusterip.lab.net import Lab
from clusterip.lab.topo import LabTopo

HERE = Path(__file__).parent
NOT_ROOT = "lab tests need root to create network namespaces (CI runs them as root)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in item.path.parents:
            item.add_marker(pytest.mark.lab)
            if os.geteuid() != 0:
                item.add_marker(pytest.mark.skip(reason=NOT_ROOT))


def _netns_names() -> list[str]:
    try:
        return os.listdir("/run/netns")
    except FileNotFoundError:
        return []


@pytest.fixture(scope="session")
def lab_names() -> Iterator[list[str]]:
    """Every lab name this session used; at the end none of their namespaces may remain."""
    names: list[str] = []
    yield names
    left = sorted(ns for ns in _netns_names() for n in names if ns.startswith(f"{n}-"))
    assert not left, f"namespaces left behind by lab tests: {left}"


def _namer(lab_names: list[str]) -> Callable[[], str]:
    def make() -> str:
        while True:
            name = "t" + secrets.token_hex(3)[:5]
            if name not in lab_names and not any(
                ns.startswith(f"{name}-") for ns in _netns_names()
            ):
                lab_names.append(name)
                return name

    return make


@pytest.fixture
def new_lab_name(lab_names: list[str]) -> Callable[[], str]:
    """A fresh, unused lab name (t + 5 hex digits), registered for the session-end check."""
    return _namer(lab_names)


MakeLab = Callable[..., Lab]


def _labs(namer: Callable[[], str]) -> Iterator[MakeLab]:
    built: list[Lab] = []

    def make(
        nodes: int = 3,
        clients: int = 10,
        servers: bool = True,
        ipv6: bool = False,
        *,
        snooping: bool = False,
        router: bool = False,
        **kwargs: Any,
    ) -> Lab:
        topo = LabTopo(namer(), nodes, clients, ipv6, snooping=snooping, router=router)
        lab = Lab.build(topo, servers=servers, **kwargs)
        built.append(lab)
        return lab

    yield make
    for lab in reversed(built):
        lab.teardown()


@pytest.fixture
def make_lab(new_lab_name: Callable[[], str]) -> Iterator[MakeLab]:
    """make_lab(nodes=3, clients=10, servers=True, ipv6=False, snooping=False, router=False)
    -> a built Lab (clusterip.lab.topo), torn down after the test."""
    yield from _labs(new_lab_name)


@pytest.fixture(scope="module")
def make_module_lab(lab_names: list[str]) -> Iterator[MakeLab]:
    """As make_lab, for labs that a module's tests share (torn down after the module)."""
    yield from _labs(_namer(lab_names))


@pytest.fixture
def agents() -> Iterator[list[Agents]]:
    """Agent runners a test appends to; every agent they started is stopped afterwards."""
    made: list[Agents] = []
    yield made
    for a in made:
        a.stop_all()


def start_agents(
    lab: Lab, tmp_path: Path, made: list[Agents], nodes: list[int], *extra: str
) -> Agents:
    """Agents with a shared key on `nodes` (more can be started later), converged."""
    keyfile = tmp_path / "cluster.key"
    write_key(keyfile)
    a = Agents(lab, keyfile, *extra)
    made.append(a)
    for k in nodes:
        a.start(k)
    a.wait_converged(nodes)
    return a
