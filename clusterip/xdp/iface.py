"""An interface as XDP needs it: index, own MAC, driver name (the caller's network namespace).

Through ioctls on a socket, which belong to the namespace of the thread that opens them (a
thread that joined a lab namespace sees that namespace's interfaces); no /sys, which shows the
namespace it was mounted in.
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from clusterip.config import ConfigError

SIOCGIFHWADDR = 0x8927
SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
IFNAMSIZ = 16


def ifindex(ifname: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise ConfigError(f"no interface {ifname!r} in this network namespace") from None


def own_mac(ifname: str) -> str:
    """The interface's own (hardware) MAC address, e.g. 02:c1:00:00:00:01."""
    req = struct.pack("16s16x", ifname.encode()[: IFNAMSIZ - 1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            res = fcntl.ioctl(s.fileno(), SIOCGIFHWADDR, req)
        except OSError:
            raise ConfigError(f"no interface {ifname!r} in this network namespace") from None
    return ":".join(f"{b:02x}" for b in res[18:24])


class _DrvInfo(ctypes.Structure):
    _fields_ = (
        ("cmd", ctypes.c_uint32),
        ("driver", ctypes.c_char * 32),
        ("version", ctypes.c_char * 32),
        ("fw_version", ctypes.c_char * 32),
        ("bus_info", ctypes.c_char * 32),
        ("rest", ctypes.c_uint8 * 64),
    )


def driver(ifname: str) -> str:
    """The driver's name as ethtool -i shows it ('veth', 'virtio_net', ...), or 'unknown'."""
    info = _DrvInfo(cmd=ETHTOOL_GDRVINFO)
    req = bytearray(struct.pack("16sP", ifname.encode()[: IFNAMSIZ - 1], ctypes.addressof(info)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, req)
        except OSError:
            return "unknown"
    return info.driver.decode(errors="replace") or "unknown"
