"""What a node's datapath does with one client packet: the decision of clusterip.render's
chains, as a pure function, so the simulator can check flows for many nodes in seconds and the
lab tests can check that the kernel decides the same.

A packet is accepted, dropped, or accepted without a flow here, where the stack answers with a
RST (`RESET`): a mid-flow TCP packet in an owned bucket that is not guarded.

- `kept` (flows other live nodes announced they keep): dropped, whatever else.
- draining bucket: only this node's own flows (TCP: its sockets and the SYNs it accepted; UDP:
  the flows it answered lately); a new connection (bare SYN) is dropped.
- owned bucket: new connections accepted; mid-flow TCP of this node's flows accepted; other
  mid-flow TCP dropped while the bucket is guarded (the previous owner's flow), else it goes to
  the stack (RST: a dead node's flow, or garbage). UDP accepted.
- any other bucket: dropped.
"""

from __future__ import annotations

from enum import Enum

from clusterip.core.ownership import Ownership


class Verdict(Enum):
    DROP = "drop"
    ACCEPT = "accept"  # to a flow of this node (or a new one)
    RESET = "reset"  # to the stack without a flow: the client gets a RST


def tcp(own: Ownership, bucket: int, client: tuple[str, int], *, syn: bool, mine: bool) -> Verdict:
    """A TCP packet of `client` (address, port) hashed into `bucket`; `syn`: a bare SYN;
    `mine`: this node has the flow (a socket, or it accepted the SYN)."""
    if client in own.kept:
        return Verdict.DROP
    if bucket in own.draining:
        return Verdict.ACCEPT if mine and not syn else Verdict.DROP
    if bucket not in own.owned:
        return Verdict.DROP
    if syn or mine:
        return Verdict.ACCEPT
    return Verdict.DROP if bucket in own.guarded else Verdict.RESET


def udp(own: Ownership, bucket: int, client: tuple[str, int], *, seen: bool) -> Verdict:
    """A UDP datagram; `seen`: this node answered the flow lately (agents only)."""
    if client in own.kept:
        return Verdict.DROP
    if bucket in own.draining:
        return Verdict.ACCEPT if seen else Verdict.DROP
    return Verdict.ACCEPT if bucket in own.owned else Verdict.DROP
