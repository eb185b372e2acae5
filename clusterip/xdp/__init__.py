"""XDP pre-filter (issue 15): drop packets of buckets other nodes own before nft sees them.

The program is bpf/clusterip_xdp.c, compiled by `make setup` into clusterip_xdp.o beside this
file; `XdpFilter` loads it through libbpf (ctypes), attaches it and keeps its maps.
"""

from clusterip.xdp.filter import (
    Attachment,
    XdpFilter,
    attached_mode,
    detach_persistent,
    object_path,
)
from clusterip.xdp.spec import DROP, OWNED, PASS, Buckets, XdpError, XdpVip, parse_mode

__all__ = [
    "DROP",
    "OWNED",
    "PASS",
    "Attachment",
    "Buckets",
    "XdpError",
    "XdpFilter",
    "XdpVip",
    "attached_mode",
    "detach_persistent",
    "object_path",
    "parse_mode",
]
