"""Static-mode operations of one node (CLUSTERIP's job): up, down, take, release, status.

The kernel state is read back from nftables, so every command sees the truth; each change to
the ruleset is one nft transaction. I/O goes through the Firewall, Link and SocketTable
interfaces. A bucket that starts to move (`release`: draining here, `take`: guarded here)
gets this node's own flows of it, a sock_diag snapshot, in the same transaction.
"""

from __future__ import annotations

from dataclasses import replace

from clusterip.config import Address, ConfigError, VipConfig
from clusterip.core.ownership import Ownership
from clusterip.flows import SockDiag, SocketTable, TcpFlow, snapshot
from clusterip.link import Link, attach_mac, detach_mac
from clusterip.nft import Firewall
from clusterip.render import (
    checked,
    render,
    render_delete,
    render_drop_all,
    render_legacy_delete,
    render_update,
    table_name,
)
from clusterip.state import VipState, mac_shared, parse_guards, parse_tables
from clusterip.xdp.static import Outcome, StaticXdp, note_script

ADDR_FLAG = "addr=1"


class Node:
    def __init__(
        self,
        firewall: Firewall,
        link: Link,
        sockets: SocketTable | None = None,
        xdp: StaticXdp | None = None,
    ) -> None:
        self.firewall = firewall
        self.link = link
        self.sockets: SocketTable = sockets if sockets is not None else SockDiag()
        self.xdp = xdp  # the XDP pre-filter (clusterip.xdp.static); None: nft alone
        self.xdp_outcome: Outcome | None = None  # what the last `up` did with it

    def _snapshot(self, cfg: VipConfig, own: Ownership) -> list[TcpFlow] | None:
        """This node's flows, if any bucket checks flows (None: none does)."""
        if not checked(own):
            return None
        return snapshot(self.sockets.sockets(cfg.vip))

    def states(self, *, counters: bool = False) -> list[VipState]:
        return parse_tables(self.firewall.ruleset(counters=counters))

    def state(self, vip: Address) -> VipState | None:
        for st in self.states():
            if st.config.vip == vip:
                return st
        return None

    def require(self, vip: Address) -> VipState:
        st = self.state(vip)
        if st is None:
            up = ", ".join(str(s.config.vip) for s in self.states()) or "none"
            raise ConfigError(f"VIP {vip} is not up on this node (up here: {up})")
        return st

    def up(self, cfg: VipConfig, *, xdp: str = "auto") -> str:
        """Serve cfg.vip as nodes cfg.local_nodes of cfg.total_nodes. Idempotent. `xdp`: the
        pre-filter's mode (auto, on, off), where the node has one (self.xdp)."""
        self.link.check_interface(cfg.interface)
        old = self.state(cfg.vip)
        if old is not None and old.mode != "static" and old.live:
            raise ConfigError(f"VIP {cfg.vip} is run by an agent on this node; stop it first")
        had_addr = self.link.has_address(cfg.interface, cfg.vip)
        added_addr = (old is not None and ADDR_FLAG in _extra(old)) or not had_addr
        # What a stopped agent left is replaced, as is another setup of the VIP.
        same = old is not None and old.mode == "static" and _same_setup(old.config, cfg)
        owned = frozenset(cfg.local_nodes)
        keep: frozenset[int] = frozenset()
        guarded: frozenset[int] = frozenset()
        if same and old is not None:
            # Buckets this node no longer owns keep their established flows; buckets it gains
            # leave the flows of their previous owner alone (guarded). Re-running `up` is the
            # user's word that the rest is settled: their guard ends.
            was = old.ownership
            keep = (was.owned | was.draining) - owned
            guarded = owned - was.owned
        own = Ownership(cfg.total_nodes, owned, keep, guarded=guarded)
        mine = self._snapshot(cfg, own)

        nic_mac = self.link.own_mac(cfg.interface)

        def apply(fast: bool, code: str) -> None:
            note = ADDR_FLAG if added_addr else ""
            script = render(cfg, own, note_extra=note, mine=mine, nic_mac=nic_mac, xdp_fast=fast)
            if old is not None and not same:
                script = render_delete(old.config) + script
            if code:
                script += note_script(table_name(cfg), code)
            self.firewall.apply(script)

        if self.xdp is None:
            apply(False, "")
        else:
            self.xdp_outcome = self.xdp.up(cfg, own, xdp, apply)
        if old is not None and not same:
            self._unlink(old, keep=cfg)
        new_addr = False
        try:
            if not self.link.has_address(cfg.interface, cfg.vip):
                self.link.add_address(cfg.interface, cfg.vip, cfg.prefixlen)
                new_addr = True
            attach_mac(self.link, cfg)
        except Exception:
            # Undo this call's own changes so that a failed `up` leaves nothing behind.
            if self.xdp is not None:
                self.xdp.stop_answering(cfg, own.modulus)
            self.firewall.apply(render_delete(cfg))
            if self.xdp is not None:
                self.xdp.forget(cfg)
            if new_addr:
                self.link.del_address(cfg.interface, cfg.vip, cfg.prefixlen)
            raise
        self.link.send_garp(cfg.interface, cfg.vip, cfg.clustermac)
        nodes = ",".join(str(k) for k in sorted(owned)) or "none"
        verb = "updated" if old is not None else "up"
        return (
            f"{cfg.vip} {verb} on {cfg.interface}: node {nodes} of {cfg.total_nodes}, "
            f"{cfg.hashmode}, mac {cfg.clustermac}"
            + (f" ({cfg.mac_plan.describe()})" if cfg.mac_mode != "multicast" else "")
        )

    def down(self, vip: Address) -> str:
        """Stop answering at once, then remove the address and MAC, then the tables: no
        packet is answered in between (without the tables, the stack would take UDP that
        arrives at the cluster MAC)."""
        st = self.state(vip)
        if st is None:
            return self._down_legacy(vip)
        if st.mode != "static" and st.live:
            raise ConfigError(f"VIP {vip} is run by an agent on this node; stop the agent")
        if self.xdp is not None:  # XDP stops first: the fast path must end before nft's
            self.xdp.stop_answering(st.config, st.ownership.modulus)
        self.firewall.apply(render_drop_all(st.config))
        self._unlink(st)
        self.firewall.apply(render_delete(st.config))
        if self.xdp is not None:  # the last VIP of the interface: nothing attached or pinned
            self.xdp.forget(st.config)
        if st.mode != "static":
            return f"{vip} down (removed what a stopped agent left)"
        return f"{vip} down"

    def _down_legacy(self, vip: Address) -> str:
        """What a clusterip/1 agent that was killed left: its guard, the MAC, the address."""
        objects = self.firewall.ruleset(counters=False)
        fields = parse_guards(objects).get(vip)
        if fields is None:
            return f"{vip} is not up here: nothing to do"
        ifname, mac = fields["if"], fields["mac"]
        mac = ":".join(mac[i : i + 2] for i in range(0, 12, 2))
        self.firewall.apply(render_legacy_delete(vip))
        if mac in self.link.multicast_macs(ifname):
            self.link.del_multicast(ifname, mac)
        if fields.get("addr") == "1" and self.link.has_address(ifname, vip):
            self.link.del_address(ifname, vip, int(fields.get("plen", "32")))
        return f"{vip} down (removed what a stopped agent left)"

    def _unlink(self, st: VipState, keep: VipConfig | None = None) -> None:
        """Remove the old setup's MAC and address, except what `keep` (or another VIP on the
        interface: a dual-stack pair may share one MAC) still uses."""
        cfg = st.config
        same_if = keep is not None and keep.interface == cfg.interface
        same_mac = keep is not None and (keep.clustermac, keep.mac_mode) == (
            cfg.clustermac,
            cfg.mac_mode,
        )
        if not (same_if and same_mac) and not mac_shared(self.states(), cfg):
            detach_mac(self.link, cfg)
        if (
            not (same_if and keep is not None and keep.prefixlen == cfg.prefixlen)
            and ADDR_FLAG in _extra(st)
            and self.link.has_address(cfg.interface, cfg.vip)
        ):
            self.link.del_address(cfg.interface, cfg.vip, cfg.prefixlen)

    def _change(self, st: VipState, own: Ownership) -> None:
        cfg = st.config
        if not st.current:  # tables of clusterip/1: this version's rules, ownership kept
            extra = ADDR_FLAG if ADDR_FLAG in _extra(st) else ""
            mine = self._snapshot(cfg, own)
            nic = self.link.own_mac(cfg.interface)
            self.firewall.apply(render(cfg, own, note_extra=extra, mine=mine, nic_mac=nic))
            return
        # Buckets that start to check flows need this node's flows from their first packet.
        mine = None
        if checked(own) - checked(st.ownership):
            mine = self._snapshot(cfg, own)
        script = render_update(cfg, st.ownership, own, mine=mine)
        if self.xdp is not None:  # XDP opens, nft changes, XDP closes (docs/xdp.md)
            self.xdp.change(cfg, own, lambda: self.firewall.apply(script) if script else None)
        elif script:
            self.firewall.apply(script)

    def take(self, vip: Address, bucket: int) -> str:
        st = self.require(vip)
        _check_bucket(st, bucket)
        self._static_only(st)
        self._change(st, st.ownership.take(bucket))
        cfg = st.config  # served already; announced at the cluster MAC again, as by `up`
        self.link.send_garp(cfg.interface, cfg.vip, cfg.clustermac)
        return f"{vip}: took {bucket}; owned {_fmt(st.ownership.take(bucket).owned)}"

    def release(self, vip: Address, bucket: int, *, keep_flows: bool = True) -> str:
        st = self.require(vip)
        _check_bucket(st, bucket)
        self._static_only(st)
        own = st.ownership.release(bucket, keep_flows=keep_flows)
        if not keep_flows:
            own = replace(own, draining=own.draining - {bucket})
        self._change(st, own)
        kept = " (its established TCP flows stay here)" if bucket in own.draining else ""
        return f"{vip}: released {bucket}{kept}; owned {_fmt(own.owned)}"

    def _static_only(self, st: VipState) -> None:
        if st.mode != "static":
            raise ConfigError(f"VIP {st.config.vip} is run by an agent: it decides ownership")


def _extra(st: VipState) -> set[str]:
    return {f"{k}={v}" for k, v in st.comment_fields.items()}


def _same_setup(a: VipConfig, b: VipConfig) -> bool:
    return (
        a.cluster_fields() == b.cluster_fields()
        and a.interface == b.interface
        and a.prefixlen == b.prefixlen
    )


def _check_bucket(st: VipState, bucket: int) -> None:
    n = st.ownership.modulus
    if not 1 <= bucket <= n:
        raise ConfigError(f"bad node number {bucket}: expected 1 to {n} for VIP {st.config.vip}")


def _fmt(values: frozenset[int]) -> str:
    return ",".join(str(v) for v in sorted(values)) or "none"
