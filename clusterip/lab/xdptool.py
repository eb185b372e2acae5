"""A lab tool for the XDP pre-filter apart from `clusterip up --xdp` and the agent: the lab's
XDP tests drive the program with it (it reads a static node's nft state, so it lives with the
lab, above both `clusterip.node` and `clusterip.xdp`).

    python -m clusterip.lab.xdptool sync --vip VIP [--mode auto] [--hold] [--owned-fast]
    python -m clusterip.lab.xdptool status [--interface IF] [--json]
    python -m clusterip.lab.xdptool detach --interface IF

`sync` mirrors this node's static nft state of VIP (`clusterip up/take/release`) into the
pre-filter of the VIP's interface: owned and draining buckets pass, the others drop (with
--owned-fast, steady owned buckets take the OWNED fast path). Attached through netlink, it
stays after this process (`detach` removes it); with --hold it is attached through a bpf_link
and goes when this process ends (it prints `ready ...` and waits for stdin to close).
Bad input: one line, exit status 2; the kernel or driver refusing: one line, exit status 1.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import signal
import sys
from collections.abc import Sequence
from typing import Any

from clusterip.config import ConfigError, parse_interface, parse_ip
from clusterip.xdp.filter import XdpFilter, detach_persistent
from clusterip.xdp.spec import MODES, XdpError, XdpVip, buckets_for


def _node() -> Any:
    from clusterip.link import NetlinkLink
    from clusterip.nft import NftFirewall
    from clusterip.node import Node

    return Node(NftFirewall(), NetlinkLink())


def sync(
    vip: ipaddress.IPv4Address | ipaddress.IPv6Address, mode: str, hold: bool, owned_fast: bool
) -> int:
    st = _node().require(vip)
    cfg = st.config
    want = buckets_for(st.ownership, owned_fast=owned_fast)
    mine = XdpVip.from_config(cfg)
    current = None if hold else XdpFilter.adopt(cfg.interface)
    if current is not None and mine in current.vips:
        with current:
            current.set_buckets(cfg.vip, want)
            print(f"{cfg.vip}: XDP on {cfg.interface} updated")
        return 0
    others = [v for v in (current.vips if current else []) if v.vip != cfg.vip]
    f = XdpFilter(cfg.interface, [*others, mine])
    try:
        f.load()
        for v in others:  # carry the other VIPs' buckets over before the swap
            assert current is not None
            f.set_buckets(v.vip, current.buckets(v.vip))
        f.set_buckets(cfg.vip, want)
        att = f.attach(mode, persist=not hold)
        print(f"{cfg.vip}: XDP on {cfg.interface}: {att.describe()}", flush=True)
        if hold and att.mode is not None:
            print("ready", flush=True)
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            sys.stdin.read()
    finally:
        f.close()
        if current is not None:
            current.close()
    return 0


def status(ifname: str | None, as_json: bool) -> int:
    names = [ifname] if ifname else sorted({s.config.interface for s in _node().states()})
    out: list[dict[str, Any]] = []
    for name in names:
        f = XdpFilter.adopt(name)
        if f is None:
            out.append({"interface": name, "xdp": None})
            continue
        with f:
            counters = f.counters()
            out.append(
                {
                    "interface": name,
                    "xdp": f.attachment.mode if f.attachment else None,
                    "vips": [
                        {
                            "vip": str(v.vip),
                            "modulus": f.buckets(v.vip).modulus,
                            "passing": sorted(f.buckets(v.vip).passing),
                            "owned": sorted(f.buckets(v.vip).owned),
                            **counters[v.vip],
                        }
                        for v in f.vips
                    ],
                }
            )
    if as_json:
        print(json.dumps({"interfaces": out}, indent=2))
    else:
        for row in out:
            print(f"{row['interface']}: XDP {row['xdp'] or 'off'}")
            for v in row.get("vips", []):
                print(
                    f"  {v['vip']}: dropped {v['dropped']}, passed {v['passed']}, "
                    f"owned {v['owned']} (pass {v['passing']} of {v['modulus']})"
                )
    return 0


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m clusterip.lab.xdptool", description=__doc__.split("\n")[0]
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("sync", help="mirror the static nft state of a VIP into XDP")
    s.add_argument("--vip", required=True)
    s.add_argument("--mode", default="auto", choices=MODES)
    s.add_argument("--hold", action="store_true", help="bpf_link held by this process")
    s.add_argument("--owned-fast", action="store_true", help="prototype: OWNED fast path")
    st = sub.add_parser("status", help="XDP state and counters")
    st.add_argument("--interface")
    st.add_argument("--json", action="store_true")
    d = sub.add_parser("detach", help="remove the netlink-attached program")
    d.add_argument("--interface", required=True)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.cmd == "sync":
            return sync(parse_ip(args.vip, "VIP"), args.mode, args.hold, args.owned_fast)
        if args.cmd == "status":
            ifname = parse_interface(args.interface) if args.interface else None
            return status(ifname, args.json)
        ifname = parse_interface(args.interface)
        done = detach_persistent(ifname)
        print(f"{ifname}: XDP {'detached' if done else 'was not attached'}")
        return 0
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except XdpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
