"""The XDP pre-filter in static mode (`clusterip up --xdp auto|on|off`, take, release, down).

The program is attached through netlink, so it stays on the interface after the command ends;
every later command finds it again (`XdpFilter.adopt`). One program per interface holds every
VIP on it; adding or removing a VIP loads a new program and replaces the old one atomically
(never another program). Nothing is pinned; `down` of the interface's last VIP detaches it.

Ordering (docs/xdp.md): a bucket that moves here passes XDP before nft takes it; one that moves
away is released in nft before XDP drops it. With the pre-filter on, the VIP's tables carry the
fast-path rule (render.fast_rule) and steady owned buckets are OWNED. A named counter of the
VIP's netdev table, `xdp_<code>` (native, generic, off, nodrv, busy, fail), records what `up`
did with the pre-filter, for `status` (a chain's comment cannot change; a counter can be
replaced in the same transaction).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from clusterip.config import VipConfig
from clusterip.core.ownership import Ownership
from clusterip.xdp import iface
from clusterip.xdp.spec import Address, Buckets, XdpError, XdpVip, buckets_for

STATIC_OWNED = ("tcp", "udp", "sctp")  # static mode keeps no UDP flow set: UDP may go fast too
ATTACHED = ("native", "generic")
CODES = (*ATTACHED, "off", "nodrv", "busy", "fail")
NOTE_PREFIX = "xdp_"
NftApply = Callable[[bool, str], None]  # (render the fast rule?, the comment's xdp= value)


class Filter(Protocol):
    """What this module needs of clusterip.xdp.filter.XdpFilter (fakes in unit tests)."""

    ifname: str
    vips: list[XdpVip]
    attachment: Any

    def load(self) -> None: ...
    def attach(self, mode: str = "auto", *, persist: bool = False) -> Any: ...
    def buckets(self, vip: Address | str) -> Buckets: ...
    def set_buckets(self, vip: Address | str, passing: Any, modulus: int | None = None) -> None: ...
    def change(self, vip: Address | str, new: Buckets, nft_apply: Callable[[], None]) -> None: ...
    def counters(self) -> dict[Address, dict[str, int]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Outcome:
    """What `up` did with the pre-filter: the comment's code and the line for the user."""

    code: str  # native | generic | off | nodrv | busy | fail
    text: str

    @property
    def fast(self) -> bool:
        return self.code in ATTACHED


def note_script(table: str, code: str) -> str:
    """nft commands that make `xdp_<code>` the table's only pre-filter note."""
    name = f"netdev {table} {NOTE_PREFIX}"
    out = "".join(f"add counter {name}{c}\ndelete counter {name}{c}\n" for c in CODES if c != code)
    return out + f"add counter netdev {table} {NOTE_PREFIX}{code}\n"


def split_note(counters: dict[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """(the pre-filter note's code, the packet counters without it)."""
    code = next((k[len(NOTE_PREFIX) :] for k in counters if k.startswith(NOTE_PREFIX)), None)
    return code, {k: v for k, v in counters.items() if not k.startswith(NOTE_PREFIX)}


def explain(code: str | None, ifname: str, driver: str | None = None) -> str:
    """The line `status` shows for a comment's `xdp=` code."""
    if code in ATTACHED:
        return f"{code} (netlink-attached)"
    if code == "off":
        return "off (--xdp off)"
    if code == "nodrv":
        drv = driver or "unknown"
        return f"off: driver {drv} of {ifname} has no native XDP: auto falls back to nft alone"
    if code == "busy":
        return f"off: {ifname} has another XDP program: auto falls back to nft alone"
    if code == "fail":
        return "off: the kernel refused the XDP program: auto falls back to nft alone"
    return "off"


class StaticXdp:
    def __init__(
        self,
        *,
        adopt: Callable[[str], Filter | None] | None = None,
        make: Callable[[str, list[XdpVip]], Filter] | None = None,
        detach: Callable[[str], bool] | None = None,
    ) -> None:
        from clusterip.xdp.filter import XdpFilter, detach_persistent

        self._adopt = adopt or XdpFilter.adopt
        self._make: Callable[[str, list[XdpVip]], Filter] = make or XdpFilter
        self._detach = detach or detach_persistent

    def adopt(self, ifname: str) -> Filter | None:
        """The interface's clusterip program, or None (also where libbpf is missing)."""
        try:
            return self._adopt(ifname)
        except (XdpError, OSError):
            return None

    # ----- up -----------------------------------------------------------------------------
    def up(self, cfg: VipConfig, own: Ownership, mode: str, nft_apply: NftApply) -> Outcome:
        """Bring the pre-filter of cfg.interface to (cfg, own) around `nft_apply`, which applies
        the VIP's nft state (with the fast rule or not). `mode` on: XDP or an error (XdpError,
        nothing changed); auto: native XDP where the driver has it, else nft alone."""
        mine = XdpVip.from_config(cfg, owned_protos=STATIC_OWNED)
        old = self.adopt(cfg.interface)
        try:
            had = old is not None and any(v.vip == cfg.vip for v in old.vips)
            if mode == "off":
                return self._without(cfg, old, had, Outcome("off", "off"), nft_apply)
            want = buckets_for(own, owned_fast=True)
            att = old.attachment if old is not None else None
            same_mode = att is not None and (att.mode == "native" or mode == "on")
            if old is not None and mine in old.vips and same_mode and att is not None:
                code = str(att.mode)
                old.change(cfg.vip, want, lambda: nft_apply(True, code))
                return Outcome(code, f"{code} (netlink-attached, already there)")
            return self._reload(cfg, mine, old, had, mode, want, nft_apply)
        finally:
            if old is not None:
                old.close()

    def _reload(
        self,
        cfg: VipConfig,
        mine: XdpVip,
        old: Filter | None,
        had: bool,
        mode: str,
        want: Buckets,
        nft_apply: NftApply,
    ) -> Outcome:
        others = [v for v in (old.vips if old is not None else []) if v.vip != cfg.vip]
        new = self._make(cfg.interface, [*others, mine])
        try:
            try:
                new.load()
                for v in others:  # carried over before the swap
                    assert old is not None
                    new.set_buckets(v.vip, old.buckets(v.vip))
                # This VIP passes everything (modulus 0) until nft holds its new state.
                att = new.attach("on" if mode == "on" else "auto", persist=True)
            except XdpError as exc:
                if mode == "on":
                    raise
                code = "busy" if "another XDP program" in str(exc) else "fail"
                return self._without(cfg, old, had, Outcome(code, f"off: {exc}"), nft_apply)
            if att.mode is None:  # auto, and the driver has no native XDP
                out = Outcome("nodrv", att.describe())
                return self._without(cfg, old, had, out, nft_apply)
            try:
                nft_apply(True, att.mode)
            except BaseException:
                self._restore(cfg.interface, old)
                raise
            new.set_buckets(cfg.vip, want)
            return Outcome(att.mode, att.describe())
        finally:
            new.close()

    def _without(
        self, cfg: VipConfig, old: Filter | None, had: bool, out: Outcome, nft_apply: NftApply
    ) -> Outcome:
        """nft alone for this VIP: a program that had it passes all of it first, then loses it."""
        if old is not None and had:
            old.set_buckets(cfg.vip, Buckets())
        nft_apply(False, out.code)
        if old is not None and had:
            self._remove(cfg.interface, old, cfg.vip)
        return out

    def _restore(self, ifname: str, old: Filter | None) -> None:
        """After a failed nft change: the previous program back, or none."""
        if old is None:
            self._detach(ifname)
            return
        mode = old.attachment.mode if old.attachment is not None else "native"
        old.attachment = None  # so that attach() replaces the program now there (ours)
        old.attach(mode, persist=True)

    def _remove(self, ifname: str, old: Filter, vip: Address) -> None:
        """The program without `vip`: another one with the rest, or none at all."""
        rest = [v for v in old.vips if v.vip != vip]
        if not rest:
            self._detach(ifname)
            return
        mode = old.attachment.mode if old.attachment is not None else "native"
        new = self._make(ifname, rest)
        try:
            new.load()
            for v in rest:
                new.set_buckets(v.vip, old.buckets(v.vip))
            new.attach(mode, persist=True)
        finally:
            new.close()

    # ----- take, release, down ----------------------------------------------------------------
    def change(self, cfg: VipConfig, own: Ownership, nft_apply: Callable[[], None]) -> None:
        """take/release: nft's change between XDP's opening and closing (docs/xdp.md). The
        fast path is on where `up` installed the program (its tables have the fast rule)."""
        f = self.adopt(cfg.interface)
        if f is None or not any(v.vip == cfg.vip for v in f.vips):
            if f is not None:
                f.close()
            nft_apply()
            return
        try:
            fast = XdpVip.from_config(cfg, owned_protos=STATIC_OWNED) in f.vips
            f.change(cfg.vip, buckets_for(own, owned_fast=fast), nft_apply)
        finally:
            f.close()

    def stop_answering(self, cfg: VipConfig, modulus: int) -> None:
        """`down`, first step: XDP drops every packet of the VIP it hashes (and the fast path
        ends), before nft drops the rest."""
        f = self.adopt(cfg.interface)
        if f is None:
            return
        try:
            if any(v.vip == cfg.vip for v in f.vips):
                f.set_buckets(cfg.vip, Buckets.of(max(1, modulus)))
        finally:
            f.close()

    def forget(self, cfg: VipConfig) -> None:
        """`down`, last step: the program without the VIP; none when it was the last one."""
        f = self.adopt(cfg.interface)
        if f is None:
            return
        try:
            if any(v.vip == cfg.vip for v in f.vips):
                self._remove(cfg.interface, f, cfg.vip)
        finally:
            f.close()

    # ----- status -----------------------------------------------------------------------------
    def report(self, cfg: VipConfig, code: str | None) -> dict[str, Any]:
        """`status`'s view of the VIP's pre-filter: mode, why, and its packet counters."""
        f = self.adopt(cfg.interface)
        if f is None or not any(v.vip == cfg.vip for v in f.vips):
            if f is not None:
                f.close()
            why = explain(code, cfg.interface, _driver(cfg.interface) if code == "nodrv" else None)
            if code in ATTACHED:
                why = "off: the program is gone from the interface (run `clusterip up` again)"
            return {"mode": None, "describe": why, "counters": None}
        try:
            att = f.attachment
            counters = f.counters().get(cfg.vip)
            mode = att.mode if att is not None else None
            return {"mode": mode, "describe": explain(mode, cfg.interface), "counters": counters}
        finally:
            f.close()


def _driver(ifname: str) -> str:
    try:
        return iface.driver(ifname)
    except Exception:
        return "unknown"
