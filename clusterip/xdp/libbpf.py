"""Debian's libbpf (libbpf1) through ctypes: just the calls the XDP pre-filter needs.

Nothing is loaded at import: `lib()` opens libbpf.so.1 on first use. Every failing call raises
`BpfError` with one line: what was attempted, the errno text and, for a failed program load,
the last line libbpf printed (the verifier's complaint). libbpf 1.x returns a negative errno
from int-returning calls and NULL plus errno from pointer-returning ones.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
import platform
import threading
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from clusterip.xdp.spec import XdpError

LIBBPF = "libbpf.so.1"

# linux/bpf.h, linux/if_link.h
BPF_XDP = 37  # enum bpf_attach_type
BPF_ANY = 0
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
XDP_ATTACHED_NONE, XDP_ATTACHED_DRV, XDP_ATTACHED_SKB, XDP_ATTACHED_HW = 0, 1, 2, 3
XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = 0, 1, 2, 3, 4
OBJ_NAME_LEN = 16


class BpfError(XdpError, OSError):
    """A libbpf or bpf(2) call failed; str() is one line naming what and why."""


# --- option and info structs (only the leading fields we use: the kernel and libbpf accept a
# shorter struct, its `sz` says how long) ----------------------------------------------------
class LinkCreateOpts(ctypes.Structure):
    _fields_ = (("sz", ctypes.c_size_t), ("flags", ctypes.c_uint32), ("_pad", ctypes.c_uint32))


class XdpAttachOpts(ctypes.Structure):
    _fields_ = (("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int), ("_pad", ctypes.c_int))


class XdpQueryOpts(ctypes.Structure):
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("prog_id", ctypes.c_uint32),
        ("drv_prog_id", ctypes.c_uint32),
        ("hw_prog_id", ctypes.c_uint32),
        ("skb_prog_id", ctypes.c_uint32),
        ("attach_mode", ctypes.c_uint8),
        ("_pad", ctypes.c_uint8 * 7),
    )


class TestRunOpts(ctypes.Structure):
    __test__ = False  # not a pytest class
    _fields_ = (
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    )


class XdpMd(ctypes.Structure):
    """struct xdp_md, the context of BPF_PROG_TEST_RUN for XDP."""

    _fields_ = (
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    )


class ProgInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
    )


class MapInfo(ctypes.Structure):
    _fields_ = (
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * OBJ_NAME_LEN),
    )


_P = ctypes.c_void_p
_I = ctypes.c_int
_U32 = ctypes.c_uint32
_SIGS: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "bpf_object__open_file": (_P, (ctypes.c_char_p, _P)),
    "bpf_object__load": (_I, (_P,)),
    "bpf_object__close": (None, (_P,)),
    "bpf_object__find_program_by_name": (_P, (_P, ctypes.c_char_p)),
    "bpf_object__find_map_by_name": (_P, (_P, ctypes.c_char_p)),
    "bpf_program__fd": (_I, (_P,)),
    "bpf_map__fd": (_I, (_P,)),
    "bpf_map__value_size": (_U32, (_P,)),
    "bpf_map__set_max_entries": (_I, (_P, _U32)),
    "bpf_map__set_initial_value": (_I, (_P, _P, ctypes.c_size_t)),
    "bpf_map_update_elem": (_I, (_I, _P, _P, ctypes.c_uint64)),
    "bpf_map_lookup_elem": (_I, (_I, _P, _P)),
    "bpf_map_update_batch": (_I, (_I, _P, _P, ctypes.POINTER(_U32), _P)),
    "bpf_link_create": (_I, (_I, _I, _I, _P)),
    "bpf_link_update": (_I, (_I, _I, _P)),
    "bpf_xdp_attach": (_I, (_I, _I, _U32, _P)),
    "bpf_xdp_detach": (_I, (_I, _U32, _P)),
    "bpf_xdp_query": (_I, (_I, _I, _P)),
    "bpf_prog_get_fd_by_id": (_I, (_U32,)),
    "bpf_map_get_fd_by_id": (_I, (_U32,)),
    "bpf_obj_get_info_by_fd": (_I, (_I, _P, ctypes.POINTER(_U32))),
    "bpf_prog_test_run_opts": (_I, (_I, _P)),
    "libbpf_num_possible_cpus": (_I, ()),
    "libbpf_set_print": (_P, (_P,)),
}

_PRINT_FN = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
_log = threading.local()
_LOG_LINES = 40


def _on_print(level: int, fmt: bytes | None, args: int | None) -> int:
    """libbpf's messages go to a per-thread buffer (for error messages), not to stderr."""
    text = _format(fmt or b"", args)
    lines: list[str] = getattr(_log, "lines", [])
    lines.extend(line for line in text.splitlines() if line.strip())
    _log.lines = lines[-_LOG_LINES:]
    return 0


def _format(fmt: bytes, args: int | None) -> str:
    # A va_list is a pointer to its state on x86-64; elsewhere keep the bare format.
    if platform.machine() == "x86_64" and args:
        buf = ctypes.create_string_buffer(1024)
        _libc().vsnprintf(buf, len(buf), fmt, ctypes.c_void_p(args))
        return buf.value.decode(errors="replace")
    return fmt.decode(errors="replace")


@lru_cache(maxsize=1)
def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    libc.vsnprintf.argtypes = (ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_void_p)
    libc.vsnprintf.restype = ctypes.c_int
    return libc


_print_ref: list[Any] = []


@lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    """libbpf.so.1 with argument types set and its messages captured."""
    try:
        so = ctypes.CDLL(LIBBPF, use_errno=True)
    except OSError as exc:
        raise BpfError(
            errno_mod.ENOENT, f"cannot open {LIBBPF} ({exc}): install Debian's libbpf1"
        ) from None
    for name, (restype, argtypes) in _SIGS.items():
        fn = getattr(so, name)
        fn.restype = restype
        fn.argtypes = argtypes
    callback = _PRINT_FN(_on_print)
    _print_ref.append(callback)  # keep it alive as long as libbpf may call it
    so.libbpf_set_print(ctypes.cast(callback, ctypes.c_void_p))
    return so


def take_log() -> list[str]:
    """The libbpf messages this thread collected since the last call."""
    lines: list[str] = getattr(_log, "lines", [])
    _log.lines = []
    return lines


def fail(what: str, ret: int | None = None, *, log: bool = False) -> BpfError:
    """A BpfError for a failed call: `ret` is a negative errno, else errno is read."""
    err = -ret if ret is not None and ret < 0 else ctypes.get_errno() or errno_mod.EIO
    msg = f"{what}: {os.strerror(err)}"
    lines = take_log()
    if log and lines:
        msg += f" (libbpf: {lines[-1].strip()})"
    return BpfError(err, msg)


def check(ret: int, what: str) -> int:
    if ret < 0:
        raise fail(what, ret)
    return ret


# --- maps -----------------------------------------------------------------------------------
def map_update(fd: int, key: int, value: bytes) -> None:
    k = ctypes.c_uint32(key)
    v = ctypes.create_string_buffer(value, len(value))
    check(lib().bpf_map_update_elem(fd, ctypes.byref(k), v, BPF_ANY), f"map update key {key}")


def map_lookup(fd: int, key: int, value_size: int) -> bytes:
    k = ctypes.c_uint32(key)
    v = ctypes.create_string_buffer(value_size)
    check(lib().bpf_map_lookup_elem(fd, ctypes.byref(k), v), f"map lookup key {key}")
    return v.raw


def map_update_batch(fd: int, keys: Sequence[int], values: bytes, value_size: int) -> None:
    """Update u32-keyed entries; `values` holds len(keys) values of value_size bytes."""
    if not keys:
        return
    if len(values) != len(keys) * value_size:
        raise ValueError(f"{len(keys)} keys but {len(values)} value bytes")
    karr = (ctypes.c_uint32 * len(keys))(*keys)
    vbuf = ctypes.create_string_buffer(values, len(values))
    count = ctypes.c_uint32(len(keys))
    ret = lib().bpf_map_update_batch(fd, karr, vbuf, ctypes.byref(count), None)
    if ret == -errno_mod.EINVAL or ret == -errno_mod.EOPNOTSUPP:  # kernel without batch ops
        for i, key in enumerate(keys):
            map_update(fd, key, values[i * value_size : (i + 1) * value_size])
        return
    check(ret, f"map batch update of {len(keys)} entries")


def possible_cpus() -> int:
    return check(lib().libbpf_num_possible_cpus(), "count possible CPUs")


# --- objects by id (a program attached by another process) ----------------------------------
def prog_fd_by_id(prog_id: int) -> int:
    return check(lib().bpf_prog_get_fd_by_id(prog_id), f"open BPF program id {prog_id}")


def map_fd_by_id(map_id: int) -> int:
    return check(lib().bpf_map_get_fd_by_id(map_id), f"open BPF map id {map_id}")


def prog_info(fd: int) -> tuple[str, list[int]]:
    """(name, map ids) of a loaded program."""
    info = ProgInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "prog info")
    n = info.nr_map_ids
    ids = (ctypes.c_uint32 * max(n, 1))()
    info2 = ProgInfo(nr_map_ids=n, map_ids=ctypes.addressof(ids))
    size = ctypes.c_uint32(ctypes.sizeof(info2))
    check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info2), ctypes.byref(size)), "prog info")
    return info.name.decode(errors="replace"), list(ids[: min(n, info2.nr_map_ids)])


def map_info(fd: int) -> MapInfo:
    info = MapInfo()
    size = ctypes.c_uint32(ctypes.sizeof(info))
    check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "map info")
    return info


# --- XDP attachment ---------------------------------------------------------------------------
def link_create_xdp(prog_fd: int, ifindex: int, flags: int) -> int:
    """A bpf_link attaching the program to `ifindex` (flags: a mode); returns the link fd."""
    opts = LinkCreateOpts(sz=ctypes.sizeof(LinkCreateOpts), flags=flags)
    return lib().bpf_link_create(prog_fd, ifindex, BPF_XDP, ctypes.byref(opts))  # type: ignore[no-any-return]


def link_update(link_fd: int, prog_fd: int) -> int:
    """Swap the program behind a bpf_link, atomically; 0 or a negative errno."""
    return lib().bpf_link_update(link_fd, prog_fd, None)  # type: ignore[no-any-return]


def xdp_attach(ifindex: int, prog_fd: int, flags: int, old_prog_fd: int = -1) -> int:
    """Netlink attach (outlives the process); 0 or a negative errno."""
    opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=old_prog_fd)
    return lib().bpf_xdp_attach(ifindex, prog_fd, flags, ctypes.byref(opts))  # type: ignore[no-any-return]


def xdp_detach(ifindex: int, flags: int, old_prog_fd: int = -1) -> int:
    opts = XdpAttachOpts(sz=ctypes.sizeof(XdpAttachOpts), old_prog_fd=old_prog_fd)
    return lib().bpf_xdp_detach(ifindex, flags, ctypes.byref(opts))  # type: ignore[no-any-return]


def xdp_query(ifindex: int) -> XdpQueryOpts:
    opts = XdpQueryOpts(sz=ctypes.sizeof(XdpQueryOpts))
    check(lib().bpf_xdp_query(ifindex, 0, ctypes.byref(opts)), f"query XDP on ifindex {ifindex}")
    return opts


# --- BPF_PROG_TEST_RUN ------------------------------------------------------------------------
def test_run(
    prog_fd: int,
    frame: bytes,
    *,
    repeat: int = 1,
    ingress_ifindex: int = 0,
    live: bool = False,
    batch_size: int = 0,
    out_size: int = 2048,
) -> tuple[int, bytes, int]:
    """Run an XDP program on `frame`: (verdict, output bytes incl. metadata, ns per run)."""
    data = ctypes.create_string_buffer(frame, len(frame))
    out = ctypes.create_string_buffer(out_size) if not live else None
    ctx = XdpMd(data=0, data_end=len(frame), ingress_ifindex=ingress_ifindex)
    opts = TestRunOpts(
        sz=ctypes.sizeof(TestRunOpts),
        data_in=ctypes.addressof(data),
        data_size_in=len(frame),
        data_out=ctypes.addressof(out) if out is not None else None,
        data_size_out=out_size if out is not None else 0,
        ctx_in=ctypes.addressof(ctx),
        ctx_size_in=ctypes.sizeof(ctx),
        repeat=repeat,
        flags=BPF_F_TEST_XDP_LIVE_FRAMES if live else 0,
        batch_size=batch_size,
    )
    check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "BPF_PROG_TEST_RUN")
    got = out.raw[: opts.data_size_out] if out is not None else b""
    return opts.retval, got, opts.duration
