"""The XDP pre-filter of an agent: one program for the agent's interface, every VIP on it.

Attached through a bpf_link that the agent's process holds: it goes when the agent goes,
however it ends (kill -9 included), as the owner-flagged live table does. Then nft alone
serves: after a planned stop, the lease keeps the node serving exactly as it was, every packet
through the full nft chains (the fast-path rule needs the live table's mark, which is gone
too); the successor attaches its own program and sets its buckets after it adopted the tables.

    x = AgentXdp("eth0", "auto")
    x.open(configs)                 # load, attach; every bucket passes until told otherwise
    x.set(cfg, ownership)           # after the datapath's start or adoption
    x.change(cfg, ownership, nft)   # every apply: XDP opens, nft changes, XDP closes
    x.reconfigure(configs)          # SIGHUP changed the VIPs: a new program, swapped in
    x.counters()                    # {vip: {dropped, passed, owned, forged}}
    x.close()

`active` is whether the program runs (the datapath renders the fast-path rule only then);
`describe()` is the line for status, e.g. `native (driver veth; bpf_link held by this
process)` or `off: driver virtio_net of eth0 has no native XDP: auto falls back to nft alone`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from clusterip.config import VipConfig
from clusterip.core.ownership import Ownership
from clusterip.xdp.spec import Buckets, XdpError, XdpVip, buckets_for

log = logging.getLogger("clusterip.agent")
# Agents keep the UDP flows they serve in nft's `udp_seen` set (the own chain refreshes it):
# UDP must go through nft. TCP bare SYNs do too (the `syns` set); the program passes them.
AGENT_OWNED = ("tcp", "sctp")
Factory = Callable[[str, list[XdpVip]], Any]


class AgentXdp:
    def __init__(self, ifname: str, mode: str, *, make: Factory | None = None) -> None:
        self.ifname = ifname
        self.mode = mode  # auto | on | off
        self._make = make
        self.filter: Any = None
        self.opened = False
        self.reason = "--xdp off" if mode == "off" else "not started"

    @property
    def active(self) -> bool:
        att = self.filter.attachment if self.filter is not None else None
        return att is not None and att.mode is not None

    def describe(self) -> str:
        if self.active:
            return str(self.filter.attachment.describe())
        return f"off: {self.reason}"

    def _new(self, vips: list[XdpVip]) -> Any:
        if self._make is not None:
            return self._make(self.ifname, vips)
        from clusterip.xdp.filter import XdpFilter

        return XdpFilter(self.ifname, vips)

    @staticmethod
    def vip_of(cfg: VipConfig) -> XdpVip:
        return XdpVip.from_config(cfg, owned_protos=AGENT_OWNED)

    def open(self, configs: Sequence[VipConfig]) -> None:
        """Load and attach (bpf_link). `on`: XdpError when the kernel refuses; `auto`: nft
        alone where the driver has no native XDP or the kernel refuses, with the reason."""
        self.opened = True
        self._clear_static(configs)
        if self.mode == "off":
            return
        f = self._new([self.vip_of(c) for c in configs])
        try:
            f.load()
            att = f.attach("on" if self.mode == "on" else "auto")
        except XdpError as exc:
            f.close()
            if self.mode == "on":
                raise
            self.reason = f"{exc}: auto falls back to nft alone"
            log.warning("XDP pre-filter off: %s", self.reason)
            return
        except BaseException:
            f.close()
            raise
        if att.mode is None:
            f.close()
            self.reason = att.reason
            log.warning("XDP pre-filter off: %s", self.reason)
            return
        self.filter = f
        log.info("XDP pre-filter on %s: %s", self.ifname, att.describe())

    def _clear_static(self, configs: Sequence[VipConfig]) -> None:
        """A static `up`'s program (netlink) must not filter the VIPs this agent takes over
        (it replaces their tables): they leave it; with no VIP left it is detached. (With
        other static VIPs still in it, it stays, and this agent runs without XDP.)"""
        if self._make is not None:
            return  # fakes: no kernel to clear
        from clusterip.xdp.static import StaticXdp

        static = StaticXdp()
        for cfg in configs:
            try:
                static.forget(cfg)
            except XdpError as exc:
                log.warning("%s: cannot remove it from the static XDP program: %s", cfg.vip, exc)

    def serves(self, cfg: VipConfig) -> bool:
        """Whether the running program filters this VIP (then its tables get the fast rule)."""
        return self.active and self.vip_of(cfg) in self.filter.vips

    _has = serves

    def set(self, cfg: VipConfig, own: Ownership) -> None:
        """XDP to `own` at once: only when nft already holds `own` (start, adoption)."""
        if self._has(cfg):
            self.filter.set_buckets(cfg.vip, buckets_for(own, owned_fast=True))

    def change(self, cfg: VipConfig, own: Ownership, nft_apply: Callable[[], None]) -> None:
        """nft's change to `own` between XDP's opening and closing (clusterip.xdp.filter)."""
        if not self._has(cfg):
            nft_apply()
            return
        self.filter.change(cfg.vip, buckets_for(own, owned_fast=True), nft_apply)

    def drop_all(self, cfg: VipConfig, modulus: int) -> None:
        """A graceful stop: XDP drops the VIP's hashed packets (and its fast path ends) first."""
        if self._has(cfg):
            self.filter.set_buckets(cfg.vip, Buckets.of(max(1, modulus)))

    def reconfigure(self, configs: Sequence[VipConfig]) -> None:
        """The VIPs changed (SIGHUP): a program for the new set, its unchanged VIPs' buckets
        carried over, new ones passing everything, swapped in through the same bpf_link."""
        if not self.active:
            return
        old = self.filter
        want = [self.vip_of(c) for c in configs]
        if want == old.vips:
            return
        new = self._new(want)
        try:
            new.load()
            for v in want:
                if v in old.vips:
                    new.set_buckets(v.vip, old.buckets(v.vip))
            new.take_over(old)
        except BaseException:
            new.close()
            raise
        old.close()
        self.filter = new

    def counters(self) -> dict[str, dict[str, int]]:
        if not self.active:
            return {}
        try:
            return {str(vip): row for vip, row in self.filter.counters().items()}
        except XdpError:
            return {}

    def report(self, cfg: VipConfig) -> dict[str, Any]:
        """`status`'s view of one VIP: mode (None: off), the line saying why, its counters."""
        on = self.serves(cfg)
        return {
            "mode": self.filter.attachment.mode if on else None,
            "describe": self.describe() if on or not self.active else "off: VIP not filtered",
            "counters": self.counters().get(str(cfg.vip)) if on else None,
        }

    def close(self) -> None:
        if self.filter is not None:
            self.filter.close()
            self.filter = None
