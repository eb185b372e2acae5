"""The XDP pre-filter of one interface: load, attach, per-bucket verdicts, counters.

    f = XdpFilter("eth0", [XdpVip.from_config(cfg)])
    f.load()                      # opens and verifies the program; nothing attached yet
    att = f.attach("auto")        # bpf_link held by this process: gone when the process goes
    f.set_buckets(cfg.vip, Buckets.of(4096, passing=owned | draining))
    f.counters()[cfg.vip]         # {"dropped": .., "passed": .., "owned": ..}
    f.close()

`attach(mode, persist=True)` attaches through netlink instead (static mode): the program stays
on the interface after the process ends; `XdpFilter.adopt(ifname)` finds it again from another
process (take/release/status), `detach_persistent(ifname)` removes it. Nothing is pinned.

Everything runs in the network namespace of the calling thread.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from ipaddress import ip_address

from clusterip.xdp import iface
from clusterip.xdp import libbpf as bpf
from clusterip.xdp.spec import (
    COUNTERS,
    MAP_BUCKETS,
    MAP_COUNTERS,
    MAP_MODULUS,
    MAX_BUCKETS,
    MODES,
    N_COUNTERS,
    PASS,
    PROG_NAME,
    Address,
    Buckets,
    XdpError,
    XdpVip,
    build_conf,
    parse_conf,
    steps,
)

OBJECT = "clusterip_xdp.o"
FLAGS = {"native": bpf.XDP_FLAGS_DRV_MODE, "generic": bpf.XDP_FLAGS_SKB_MODE}
TRIES = {"auto": ("native",), "on": ("native", "generic"), "native": ("native",)}
TRIES = {**TRIES, "generic": ("generic",)}


@dataclass(frozen=True)
class Attachment:
    """How the program is attached: mode 'native', 'generic' or None (not attached), why."""

    mode: str | None
    reason: str
    persistent: bool = False

    def describe(self) -> str:
        if self.mode is None:
            return f"off: {self.reason}"
        how = "netlink, stays after exit" if self.persistent else "bpf_link held by this process"
        return f"{self.mode} ({self.reason}; {how})"


def object_path() -> str:
    """The compiled program, package data built by `make setup` (never compiled at run time)."""
    return str(resources.files("clusterip.xdp").joinpath(OBJECT))


class XdpFilter:
    """One interface's pre-filter for up to MAX_VIPS VIPs. No I/O until `load()`."""

    def __init__(
        self,
        ifname: str,
        vips: Sequence[XdpVip],
        *,
        obj_path: str | None = None,
        meta_bucket: bool = False,
        own_mac: str | None = None,
    ) -> None:
        self.ifname = ifname
        self._own_mac = own_mac  # default: the interface's, read at load()
        self.vips = list(vips)
        self._obj_path = obj_path
        self._meta_bucket = meta_bucket
        build_conf(self.vips, "00:00:00:00:00:00", meta_bucket=meta_bucket)  # validates
        self._obj: int | None = None
        self._fds: list[int] = []  # fds we own outside a bpf_object (adopted programs)
        self.prog_fd = -1
        self._maps: dict[str, int] = {}
        self._link_fd = -1
        self._state: dict[Address, Buckets] = {}
        self.attachment: Attachment | None = None

    # -- loading ---------------------------------------------------------------------------
    def load(self) -> None:
        """Open the object, write its configuration, load it into the kernel (verifier)."""
        if self.prog_fd >= 0:
            return
        lib = bpf.lib()
        path = self._obj_path or object_path()
        if not os.path.exists(path):
            raise XdpError(f"no XDP object {path}: run `make setup` (needs clang, libbpf-dev)")
        mac = self._own_mac or iface.own_mac(self.ifname)
        conf = build_conf(self.vips, mac, meta_bucket=self._meta_bucket)
        bpf.take_log()
        obj = lib.bpf_object__open_file(path.encode(), None)
        if not obj:
            raise bpf.fail(f"open {path}", log=True)
        self._obj = obj
        try:
            rodata = lib.bpf_object__find_map_by_name(obj, b".rodata")
            if not rodata or lib.bpf_map__value_size(rodata) != ctypes.sizeof(conf):
                raise XdpError(f"{path} does not match this clusterip (rebuild: make setup)")
            bpf.check(
                lib.bpf_map__set_initial_value(rodata, ctypes.byref(conf), ctypes.sizeof(conf)),
                "set the program's configuration",
            )
            n = len(self.vips)
            for name, entries in ((MAP_BUCKETS, n * MAX_BUCKETS), (MAP_COUNTERS, n * N_COUNTERS)):
                m = lib.bpf_object__find_map_by_name(obj, name.encode())
                bpf.check(lib.bpf_map__set_max_entries(m, entries), f"size map {name}")
            ret = lib.bpf_object__load(obj)
            if ret < 0:
                raise bpf.fail(f"load the XDP program for {self.ifname}", ret, log=True)
            prog = lib.bpf_object__find_program_by_name(obj, PROG_NAME.encode())
            self.prog_fd = bpf.check(lib.bpf_program__fd(prog), "program fd")
            for name in (MAP_BUCKETS, MAP_MODULUS, MAP_COUNTERS):
                m = lib.bpf_object__find_map_by_name(obj, name.encode())
                self._maps[name] = bpf.check(lib.bpf_map__fd(m), f"map {name}")
        except BaseException:
            self.close()
            raise
        self._state = {v.vip: Buckets() for v in self.vips}

    @classmethod
    def adopt(cls, ifname: str) -> XdpFilter | None:
        """The clusterip program attached to `ifname` (by another process), or None."""
        found = _attached(ifname)
        if found is None:
            return None
        prog_fd, _mode = found
        try:
            name, map_ids = bpf.prog_info(prog_fd)
            if name != PROG_NAME:
                return None
            maps: dict[str, int] = {}
            fds = [prog_fd]
            raw = b""
            for map_id in map_ids:
                fd = bpf.map_fd_by_id(map_id)
                fds.append(fd)
                info = bpf.map_info(fd)
                mname = info.name.decode(errors="replace")
                if mname.endswith(".rodata"):
                    raw = bpf.map_lookup(fd, 0, info.value_size)
                elif mname in (MAP_BUCKETS, MAP_MODULUS, MAP_COUNTERS):
                    maps[mname] = fd
            vips, _mac = parse_conf(raw)
        except BaseException:
            for fd in fds:
                os.close(fd)
            raise
        self = cls(ifname, vips)
        self._fds, self.prog_fd, self._maps = fds, prog_fd, maps
        self.attachment = Attachment(_mode, "found attached", persistent=True)
        for i, v in enumerate(vips):
            self._state[v.vip] = self._read_buckets(i)
        return self

    def _read_buckets(self, idx: int) -> Buckets:
        modulus = int.from_bytes(bpf.map_lookup(self._maps[MAP_MODULUS], idx, 4), "little")
        passing: list[int] = []
        owned: list[int] = []
        for b in range(1, modulus + 1):
            value = bpf.map_lookup(self._maps[MAP_BUCKETS], idx * MAX_BUCKETS + b - 1, 1)[0]
            (passing if value == PASS else owned if value == 2 else []).append(b)
        return Buckets.of(modulus, passing, owned)

    # -- attaching -------------------------------------------------------------------------
    def attach(self, mode: str = "auto", *, persist: bool = False) -> Attachment:
        """Attach in `mode` (auto: native or not at all; on: native, else generic; native;
        generic). persist=False: through a bpf_link this process holds; True: netlink,
        replacing a clusterip program already there (never another program)."""
        if mode not in MODES:
            raise XdpError(f"bad XDP mode {mode!r}: allowed are {', '.join(MODES)}")
        if self.prog_fd < 0:
            raise XdpError("the XDP program is not loaded: call load() first")
        if self.attachment is not None and self.attachment.mode is not None:
            return self.attachment
        index = iface.ifindex(self.ifname)
        reason = ""
        for how in TRIES[mode]:
            ret = self._attach_one(index, how, persist)
            if ret >= 0:
                drv = iface.driver(self.ifname)
                why = f"driver {drv}" + (f"; {reason}" if reason else "")
                self.attachment = Attachment(how, why, persistent=persist)
                return self.attachment
            if ret == -errno.EOPNOTSUPP and how == "native":
                reason = f"driver {iface.driver(self.ifname)} of {self.ifname} has no native XDP"
                continue
            raise XdpError(self._attach_error(index, how, -ret))
        self.attachment = Attachment(None, f"{reason}: auto falls back to nft alone")
        return self.attachment

    def take_over(self, old: XdpFilter) -> Attachment:
        """Put this loaded program in the place of `old`'s, atomically: through the bpf_link
        `old` holds (this filter holds it from now on), or by a netlink replacement."""
        if self.prog_fd < 0:
            raise XdpError("the XDP program is not loaded: call load() first")
        att = old.attachment
        if att is None or att.mode is None:
            raise XdpError(f"no XDP program of this process on {self.ifname} to replace")
        if old._link_fd >= 0:
            ret = bpf.link_update(old._link_fd, self.prog_fd)
            if ret < 0:
                raise XdpError(f"cannot replace the XDP program on {self.ifname}: "
                               f"{os.strerror(-ret)}")  # fmt: skip
            self._link_fd, old._link_fd = old._link_fd, -1
            old.attachment = None
            self.attachment = att
            return att
        return self.attach(att.mode, persist=True)

    def _attach_one(self, index: int, how: str, persist: bool) -> int:
        flags = FLAGS[how]
        if not persist:
            fd = bpf.link_create_xdp(self.prog_fd, index, flags)
            if fd >= 0:
                self._link_fd = fd
            return fd
        old = _attached(self.ifname)
        if old is None:
            return bpf.xdp_attach(index, self.prog_fd, flags | bpf.XDP_FLAGS_UPDATE_IF_NOEXIST)
        old_fd, old_mode = old
        try:
            if bpf.prog_info(old_fd)[0] != PROG_NAME:
                return -errno.EBUSY
            if old_mode == how:  # atomic replacement
                return bpf.xdp_attach(
                    index, self.prog_fd, flags | bpf.XDP_FLAGS_REPLACE, old_prog_fd=old_fd
                )
            # Another mode: take the old one off first (meanwhile nft alone decides: safe).
            ret = bpf.xdp_detach(index, FLAGS[old_mode] | bpf.XDP_FLAGS_REPLACE, old_fd)
            if ret < 0:
                return ret
            return bpf.xdp_attach(index, self.prog_fd, flags | bpf.XDP_FLAGS_UPDATE_IF_NOEXIST)
        finally:
            os.close(old_fd)

    def _attach_error(self, index: int, how: str, err: int) -> str:
        what = f"cannot attach XDP ({how}) to {self.ifname}"
        if err in (errno.EBUSY, errno.EEXIST):
            q = bpf.xdp_query(index)
            return f"{what}: it already has another XDP program (id {q.prog_id}); remove it first"
        return f"{what}: {os.strerror(err)}"

    # -- buckets ---------------------------------------------------------------------------
    def _index(self, vip: Address | str) -> int:
        addr = ip_address(vip) if isinstance(vip, str) else vip
        for i, v in enumerate(self.vips):
            if v.vip == addr:
                return i
        known = ", ".join(str(v.vip) for v in self.vips)
        raise XdpError(f"VIP {vip} is not in the XDP filter of {self.ifname} (it has {known})")

    def buckets(self, vip: Address | str) -> Buckets:
        return self._state[self.vips[self._index(vip)].vip]

    def set_buckets(
        self,
        vip: Address | str,
        passing: Iterable[int] | Buckets,
        modulus: int | None = None,
        owned: Iterable[int] = (),
    ) -> None:
        """Make the VIP's buckets `passing` PASS, `owned` OWNED, all others DROP, in an order
        that never drops what the previous or the new state passes (see spec.steps)."""
        if isinstance(passing, Buckets):
            new = passing
        else:
            if modulus is None:
                raise XdpError("set_buckets needs the bucket count (modulus)")
            new = Buckets.of(modulus, passing, owned)
        idx = self._index(vip)
        key = self.vips[idx].vip
        if not self._maps:
            raise XdpError("the XDP program is not loaded: call load() first")
        for kind, arg in steps(self._state[key], new):
            if kind == "modulus":
                assert isinstance(arg, int)
                bpf.map_update(self._maps[MAP_MODULUS], idx, arg.to_bytes(4, "little"))
            else:
                assert not isinstance(arg, int)
                keys = [idx * MAX_BUCKETS + b - 1 for b in arg]
                bpf.map_update_batch(self._maps[MAP_BUCKETS], keys, bytes(arg.values()), 1)
        self._state[key] = new

    def change(self, vip: Address | str, new: Buckets, nft_apply: Callable[[], None]) -> None:
        """Move to `new` around the nft transaction `nft_apply`: XDP opens first (every bucket
        whose verdict changes passes), nft changes, then XDP closes to `new`. If nft fails,
        XDP goes back to what it was."""
        old = self.buckets(vip)
        self.set_buckets(vip, old.meet(new))
        try:
            nft_apply()
        except BaseException:
            self.set_buckets(vip, old)
            raise
        self.set_buckets(vip, new)

    # -- counters --------------------------------------------------------------------------
    def counters(self) -> dict[Address, dict[str, int]]:
        """Packets per VIP: dropped by XDP, passed on to nft, fast-pathed as owned."""
        fd = self._maps.get(MAP_COUNTERS)
        if fd is None:
            raise XdpError("the XDP program is not loaded: call load() first")
        ncpu = bpf.possible_cpus()
        out: dict[Address, dict[str, int]] = {}
        for i, v in enumerate(self.vips):
            row = {}
            for c, name in enumerate(COUNTERS):
                raw = bpf.map_lookup(fd, i * N_COUNTERS + c, 8 * ncpu)
                row[name] = sum(
                    int.from_bytes(raw[k : k + 8], "little") for k in range(0, len(raw), 8)
                )
            out[v.vip] = row
        return out

    # -- the end ---------------------------------------------------------------------------
    def close(self) -> None:
        """Release this process's hold: a bpf_link attachment ends here; a persistent one
        stays on the interface. Safe to call again."""
        if self._link_fd >= 0:
            os.close(self._link_fd)
            self._link_fd = -1
            self.attachment = None
        if self._obj is not None:
            bpf.lib().bpf_object__close(self._obj)
            self._obj = None
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        self.prog_fd = -1
        self._maps = {}

    def __enter__(self) -> XdpFilter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _attached(ifname: str) -> tuple[int, str] | None:
    """(program fd, mode) of the XDP program on `ifname` (netlink or link), or None."""
    q = bpf.xdp_query(iface.ifindex(ifname))
    for prog_id, how in ((q.drv_prog_id, "native"), (q.skb_prog_id, "generic")):
        if prog_id:
            return bpf.prog_fd_by_id(prog_id), how
    return None


def attached_mode(ifname: str) -> str | None:
    """'native' / 'generic' if a clusterip XDP program is on `ifname`, else None."""
    found = _attached(ifname)
    if found is None:
        return None
    fd, how = found
    try:
        return how if bpf.prog_info(fd)[0] == PROG_NAME else None
    finally:
        os.close(fd)


def detach_persistent(ifname: str) -> bool:
    """Remove a netlink-attached clusterip program from `ifname` (never another program).
    True if one was removed. A bpf_link attachment cannot be removed this way: its process
    holds it (EBUSY)."""
    found = _attached(ifname)
    if found is None:
        return False
    fd, how = found
    try:
        if bpf.prog_info(fd)[0] != PROG_NAME:
            return False
        ret = bpf.xdp_detach(iface.ifindex(ifname), FLAGS[how] | bpf.XDP_FLAGS_REPLACE, fd)
        if ret < 0:
            raise XdpError(f"cannot detach XDP from {ifname}: {os.strerror(-ret)}")
        return True
    finally:
        os.close(fd)
