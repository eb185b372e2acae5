"""Neighbor Discovery with the cluster MAC: the IPv6 twin of the ARP rewrite. Pure.

Every node holds the VIP, so every node's kernel answers Neighbor Solicitations for it, and
solicits its neighbours from it, with the *NIC's* MAC in the link-layer address option
(RFC 4861 §4.3, §4.4). A client that learns a node's own MAC for the VIP sends all its traffic
to that one node, which drops the (N-1)/N of the flows it does not own. So, on every node,
at the ip6 output hook (`ndisc_send_skb` passes NF_INET_LOCAL_OUT with the packet complete,
checksum included):

- a Neighbor Advertisement whose target is the VIP gets the cluster MAC in its target
  link-layer address option (Linux sends it first, at ICMPv6 byte 24: type 2, length 1, MAC
  at byte 26; it is there in answers to multicast solicitations and in unsolicited NAs; an
  answer to a unicast solicitation carries no option, and nothing needs rewriting);
- a Neighbor Solicitation sent from the VIP gets it in its source link-layer address option
  (type 1, same place).

nft 1.0.6 can write those bytes only as a raw payload (`@th,208,48`), and it asks the kernel
for no checksum fix-up on a raw write. The checksum is left as it is and kept valid instead:
bytes 6-7 of both messages are reserved (senders set zero, receivers ignore them), and the
rule writes there the ones-complement difference between the old and the new MAC, so the sum
over the message does not change. The old MAC is this node's NIC MAC, which the rule also
matches (with the option header and zero reserved bytes): a packet that does not look exactly
as expected is never rewritten with a wrong checksum. An NA or NS for the VIP that still
carries another MAC (the NIC's MAC changed since the rules were made) is dropped and counted
(`nd_leaks`): the other nodes' answers teach the cluster MAC, a leaked one would undo it.
"""

from __future__ import annotations

import ipaddress
import struct

ICMPV6 = 58
NS, NA = 135, 136
OPT_SLLA, OPT_TLLA = 1, 2
NA_OVERRIDE = 0x20  # the O flag, in the first byte after the checksum
ALL_NODES = ipaddress.IPv6Address("ff02::1")
ETH_P_IPV6 = 0x86DD
# Bit offsets in the ICMPv6 message, as nft's raw `@th,OFFSET,LENGTH` takes them.
TARGET = "@th,64,128"
OPTION_HEAD = "@th,192,16"  # option type, option length (1: eight bytes, a MAC)
OPTION_MAC = "@th,208,48"
RESERVED = "@th,48,16"  # bytes 6-7: reserved in NS and NA


def mac_bytes(mac: str) -> bytes:
    return bytes(int(x, 16) for x in mac.split(":"))


def _fold(value: int) -> int:
    while value >> 16:
        value = (value & 0xFFFF) + (value >> 16)
    return value


def ones_sum(data: bytes) -> int:
    """The 16-bit ones-complement sum of `data` (even length), as the Internet checksum."""
    return _fold(sum(struct.unpack(f"!{len(data) // 2}H", data)))


def compensation(old_mac: str, new_mac: str) -> int:
    """The value for the zero reserved bytes 6-7 that keeps the checksum valid when the MAC at
    the (even) bytes 26-31 changes from `old_mac` to `new_mac`: old minus new, ones-complement."""
    return _fold(ones_sum(mac_bytes(old_mac)) + (~ones_sum(mac_bytes(new_mac)) & 0xFFFF))


def _hex(mac: str) -> str:
    return "0x" + mac.replace(":", "")


def output_rules(vip: ipaddress.IPv6Address, nic_mac: str, cluster_mac: str) -> list[str]:
    """The output chain's rules: rewrite (counter `nd`), else drop a leak (`nd_leaks`)."""
    fix = f"{RESERVED} 0x0000 {OPTION_MAC} {_hex(nic_mac)}"
    comp = compensation(nic_mac, cluster_mac)
    write = f"{OPTION_MAC} set {_hex(cluster_mac)} {RESERVED} set {comp:#06x}"
    na = f"icmpv6 type nd-neighbor-advert {TARGET} {int(vip):#x} {OPTION_HEAD} 0x0201"
    ns = f"ip6 saddr {vip} icmpv6 type nd-neighbor-solicit {OPTION_HEAD} 0x0101"
    leak = f"{OPTION_MAC} != {_hex(cluster_mac)}"
    return [
        f'{na} {fix} {write} counter name "nd"',
        f'{ns} {fix} {write} counter name "nd"',
        f'{na} {leak} counter name "nd_leaks" drop',
        f'{ns} {leak} counter name "nd_leaks" drop',
    ]


def render_table(name: str, vip: ipaddress.IPv6Address, nic_mac: str, cluster_mac: str) -> str:
    """The VIP's ip6 table (its contents; the caller adds and flushes it in its batch). Every
    packet the node sends passes its output hook: all but ICMPv6 leave after one rule."""
    rules = "".join(f"\t\t{r}\n" for r in output_rules(vip, nic_mac, cluster_mac))
    return f"""table ip6 {name} {{
	counter nd {{
	}}
	counter nd_leaks {{
	}}
	chain output {{
		type filter hook output priority 0; policy accept;
		meta l4proto ipv6-icmp jump nd
	}}
	chain nd {{
{rules}	}}
}}
"""


def checksum(src: ipaddress.IPv6Address, dst: ipaddress.IPv6Address, message: bytes) -> int:
    """The ICMPv6 checksum of `message` (its checksum field zero) between src and dst."""
    pseudo = src.packed + dst.packed + struct.pack("!I3xB", len(message), ICMPV6)
    data = pseudo + message
    if len(data) % 2:
        data += b"\0"
    return ~ones_sum(data) & 0xFFFF


def unsolicited_na(own_mac: str, vip: ipaddress.IPv6Address, cluster_mac: str) -> bytes:
    """An unsolicited Neighbor Advertisement (RFC 4861 §7.2.6) of VIP at the cluster MAC, to
    all nodes, Override set: a neighbour that cached another MAC for the VIP takes this one.

    From the VIP, hop limit 255; the Ethernet source stays the node's own MAC (a multicast
    source is invalid, and a switch must never learn the cluster MAC on one port)."""
    body = struct.pack("!BBHB3x", NA, 0, 0, NA_OVERRIDE) + vip.packed
    body += struct.pack("!BB", OPT_TLLA, 1) + mac_bytes(cluster_mac)
    cks = checksum(vip, ALL_NODES, body)
    body = body[:2] + struct.pack("!H", cks) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), ICMPV6, 255) + vip.packed + ALL_NODES.packed
    dst_mac = b"\x33\x33" + ALL_NODES.packed[-4:]
    return dst_mac + mac_bytes(own_mac) + struct.pack("!H", ETH_P_IPV6) + ip6 + body


def parse(frame: bytes) -> dict[str, object] | None:
    """An Ethernet frame's NS or NA, decoded (for tests and captures), or None: type, source,
    destination, target, flags byte, reserved bytes, options [(type, MAC)], checksum valid."""
    if len(frame) < 14 + 40 + 24 or frame[12:14] != struct.pack("!H", ETH_P_IPV6):
        return None
    ip6, length = frame[14:54], struct.unpack("!H", frame[18:20])[0]
    if ip6[6] != ICMPV6:
        return None
    msg = frame[54 : 54 + length]
    if len(msg) < 24 or msg[0] not in (NS, NA):
        return None
    src, dst = ipaddress.IPv6Address(ip6[8:24]), ipaddress.IPv6Address(ip6[24:40])
    opts, rest = [], msg[24:]
    while len(rest) >= 8 and rest[1]:
        size = rest[1] * 8
        opts.append((rest[0], rest[2:size].hex(":")))
        rest = rest[size:]
    # The sum over pseudo-header and message, checksum included, is all ones when valid.
    valid = checksum(src, dst, msg) == 0
    return {
        "type": "NS" if msg[0] == NS else "NA",
        "src": str(src),
        "dst": str(dst),
        "eth_src": frame[6:12].hex(":"),
        "target": str(ipaddress.IPv6Address(msg[8:24])),
        "flags": msg[4],
        "reserved": msg[4:8].hex(),
        "options": opts,
        "checksum_ok": valid,
    }
