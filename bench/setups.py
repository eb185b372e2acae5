"""The throughput set-ups: how the lab is configured for each, and back.

direct     node 1's own address; no cluster rules anywhere, unicast MAC, no flooding.
ceiling    a VIP of its own with its cluster MAC on nodes 1-3, so the switch floods every frame
           to all three; node 1 accepts everything (an ingress rule that sets pkttype host, no
           hash), nodes 2 and 3 drop their copies at ingress, the cheapest drop there is. The
           best any flooding datapath can do on this machine.
spread     a control: a third VIP, flooded the same way, each node accepting a third of the
           client ports by a bit mask and range (no hash, no cluster rules): what serving from
           three nginx instead of one costs on two cores, apart from any datapath.
vip        the cluster: `clusterip up` on nodes 1-3, one bucket each, as a user would run it.
haproxy    HAProxy on node 4 (its own address, TCP mode, round robin) in front of nodes 1-3.

Each base set-up has its own address, so all of them are configured at once and wrk alternates
between their URLs every few seconds: nothing is reconfigured between samples, and drift of
the machine hits every set-up alike.

Variants of the datapath (`--investigate`) load a modified ruleset by hand with `nft -f`; they
show where the per-packet cost of the cluster's ruleset goes. See `variants`.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clusterip.config import VipConfig
from clusterip.core.ownership import Ownership
from clusterip.lab.net import Lab, LabError
from clusterip.render import INGRESS_PRIORITY, render

SERVING = (1, 2, 3)
CEILING_VIP = "198.18.0.101"  # the lab's VIP is 198.18.0.100; nodes are .1-.4, clients .1.x
SPREAD_VIP = "198.18.0.102"
DIRECTOR = 4
LAB_NODES = 4


def run_ok(lab: Lab, ns: str, argv: Sequence[str], *, input: str | None = None) -> str:
    done = lab.run(ns, argv, timeout=60, input=input)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} in {ns} failed: {(done.stderr or done.stdout).strip()}")
    return done.stdout


def nft(lab: Lab, ns: str, script: str) -> None:
    run_ok(lab, ns, ["nft", "-f", "-"], input=script)


def cip(lab: Lab, k: int, *args: str) -> str:
    return run_ok(lab, lab.topo.node_ns(k), [sys.executable, "-m", "clusterip", *args])


def lab_config(lab: Lab, k: int, hashmode: str = "sourceip-sourceport") -> VipConfig:
    return lab.topo.vip_config([k], total_nodes=len(SERVING), hashmode=hashmode)


def up_args(lab: Lab, k: int, hashmode: str = "sourceip-sourceport", xdp: str = "off") -> list[str]:
    """The exact `clusterip up` command line of node k (printed in the report). The XDP
    pre-filter is off unless asked for: it changes the path of every frame on the interface,
    the other set-ups' too (bench/prefilter.py measures it on its own)."""
    return [
        "up",
        "--vip",
        lab.topo.vip,
        "--interface",
        lab.topo.interface,
        "--total-nodes",
        str(len(SERVING)),
        "--local-node",
        str(k),
        "--hashmode",
        hashmode,
        "--xdp",
        xdp,
    ]


def ceiling_script(vip: str, dev: str, *, accept: bool) -> str:
    """Node 1 takes every frame for the VIP as its own; the others drop theirs at once."""
    verdict = "meta pkttype set host accept" if accept else "drop"
    return (
        f"table netdev {_bench_table('ceiling', vip)} {{\n"
        "\tchain ingress {\n"
        f'\t\ttype filter hook ingress device "{dev}" priority {INGRESS_PRIORITY}; policy accept;\n'
        f"\t\tip daddr {vip} {verdict}\n"
        "\t}\n}\n"
    )


def recipe_script(cfg: VipConfig, k: int, modulus: int) -> str:
    """A hand-written recipe of the ClusterLabs kind: hash at prerouting, after conntrack,
    every node conntracks every flooded packet; ARP rewritten in the arp family."""
    vip, mac = str(cfg.vip), cfg.clustermac
    return (
        "table ip bench_recipe {\n"
        "\tchain prerouting {\n"
        "\t\ttype filter hook prerouting priority mangle; policy accept;\n"
        f"\t\tip daddr {vip} meta pkttype set host\n"
        f"\t\tip daddr {vip} jhash ip saddr . tcp sport mod {modulus} seed 0x{cfg.seed:08x}"
        f" offset 1 != {k} drop\n"
        "\t}\n}\n"
        "table arp bench_recipe {\n"
        "\tchain output {\n"
        "\t\ttype filter hook output priority 0; policy accept;\n"
        f"\t\tarp saddr ip {vip} arp saddr ether set {mac}\n"
        "\t}\n}\n"
    )


def _bench_table(kind: str, vip: str) -> str:
    return f"bench_{kind}_{vip.replace('.', '_')}"


# --- variants of the cluster's own ruleset ----------------------------------------------------
def without_counters(script: str) -> str:
    return re.sub(r'counter name "\w+" ?', "", script)


def bare_script(cfg: VipConfig, k: int, modulus: int) -> str:
    """The least a hashing datapath can do at ingress: hash, keep ours, drop the rest."""
    vip, dev = str(cfg.vip), cfg.interface
    return (
        "table netdev bench_bare {\n"
        "\tchain ingress {\n"
        f'\t\ttype filter hook ingress device "{dev}" priority {INGRESS_PRIORITY}; policy accept;\n'
        f"\t\tip daddr {vip} jhash ip saddr . th sport mod {modulus} seed 0x{cfg.seed:08x}"
        f" offset 1 vmap {{ {k} : jump own }}\n"
        f"\t\tip daddr {vip} drop\n"
        "\t}\n"
        "\tchain own {\n\t\tmeta pkttype set host accept\n\t}\n}\n"
    )


def spread_script(cfg: VipConfig, k: int, modulus: int) -> str:
    """No hash at all: node k accepts a k-th share of the client ports by a masked range match
    on port bits 1-5 (the kernel hands out a client's ports two apart, so these bits cycle
    every 32 connections: an even split whatever the first port). Shows the cost of sharing the
    load among three servers on one machine, apart from any datapath's cost."""
    values = 32  # (sport & 0x3e) >> 1
    first = (k - 1) * values // modulus
    last = k * values // modulus - 1
    vip, dev = str(cfg.vip), cfg.interface
    return (
        f"table netdev {_bench_table('spread', vip)} {{\n"
        "\tchain ingress {\n"
        f'\t\ttype filter hook ingress device "{dev}" priority {INGRESS_PRIORITY}; policy accept;\n'
        f"\t\tip daddr {vip} th sport & 0x3e {first * 2}-{last * 2} meta pkttype set host accept\n"
        f"\t\tip daddr {vip} drop\n"
        "\t}\n}\n"
    )


VariantFn = Callable[[VipConfig, int], str]


def _rendered(cfg: VipConfig, k: int) -> str:
    return render(cfg, Ownership.of(len(SERVING), [k]))


VARIANTS: dict[str, tuple[str, VariantFn]] = {
    "rendered": ("clusterip's ruleset loaded by hand (as `up` renders it)", _rendered),
    "no-counters": ("without the named counters", lambda c, k: without_counters(_rendered(c, k))),
    "bare": (
        "one hash rule at ingress, nothing else",
        lambda c, k: bare_script(c, k, len(SERVING)),
    ),
    "spread": (
        "no hash: each node takes a third of the source ports by a bit mask (TCP and UDP)",
        lambda c, k: spread_script(c, k, len(SERVING)),
    ),
    "recipe": (
        "ClusterLabs-style recipe: hash at prerouting after conntrack",
        lambda c, k: recipe_script(c, k, len(SERVING)),
    ),
}


# --- set-ups --------------------------------------------------------------------------------
@dataclass
class Setup:
    """One way of serving; `enter` configures the lab and returns the URL wrk loads."""

    name: str
    title: str

    def enter(self, lab: Lab) -> str:
        raise NotImplementedError

    def leave(self, lab: Lab) -> None:
        return None


def _vip_link(lab: Lab, nodes: Sequence[int], cfg: VipConfig, *, add: bool) -> None:
    verb = "add" if add else "del"
    dev = lab.topo.interface
    for k in nodes:
        ns = lab.topo.node_ns(k)
        run_ok(lab, ns, ["ip", "addr", verb, f"{cfg.vip}/32", "dev", dev])
        run_ok(lab, ns, ["ip", "maddr", verb, cfg.clustermac, "dev", dev])


def _client_neigh(lab: Lab, mac: str | None, vip: str | None = None) -> None:
    """A permanent neighbour entry VIP -> cluster MAC in the client, or none (mac=None)."""
    ns, dev, vip = lab.topo.client_ns, lab.topo.interface, vip or lab.topo.vip
    if mac is None:
        lab.run(ns, ["ip", "neigh", "del", vip, "dev", dev], timeout=10)
    else:
        run_ok(
            lab, ns, ["ip", "neigh", "replace", vip, "lladdr", mac, "dev", dev, "nud", "permanent"]
        )


def _flush_nodes(lab: Lab, nodes: Sequence[int]) -> None:
    for k in nodes:
        run_ok(lab, lab.topo.node_ns(k), ["nft", "flush", "ruleset"])


class Direct(Setup):
    def __init__(self) -> None:
        super().__init__("direct", "one node, direct (no cluster rules)")

    def enter(self, lab: Lab) -> str:
        return f"http://{lab.topo.node_addr(1)}/"


def _delete_table(lab: Lab, nodes: Sequence[int], name: str) -> None:
    for k in nodes:
        nft(lab, lab.topo.node_ns(k), f"add table netdev {name}\ndelete table netdev {name}\n")


class Ceiling(Setup):
    """On `vip` (the lab's VIP unless given): node 1 takes every frame, nodes 2-3 drop theirs."""

    def __init__(self, vip: str | None = None) -> None:
        super().__init__("ceiling", "flooding ceiling (VIP + cluster MAC, node 1 takes all)")
        self.vip = vip

    def _cfg(self, lab: Lab) -> VipConfig:
        return lab.topo.vip_config([1], total_nodes=len(SERVING), vip=self.vip)

    def enter(self, lab: Lab) -> str:
        cfg = self._cfg(lab)
        _vip_link(lab, [1], cfg, add=True)
        for k in SERVING:
            nft(
                lab, lab.topo.node_ns(k), ceiling_script(str(cfg.vip), cfg.interface, accept=k == 1)
            )
        _client_neigh(lab, cfg.clustermac, str(cfg.vip))
        return f"http://{cfg.vip}/"

    def leave(self, lab: Lab) -> None:
        cfg = self._cfg(lab)
        _delete_table(lab, SERVING, _bench_table("ceiling", str(cfg.vip)))
        _vip_link(lab, [1], cfg, add=False)
        _client_neigh(lab, None, str(cfg.vip))


class Spread(Setup):
    """On its own VIP: each node accepts a third of the client ports (no hash at all)."""

    def __init__(self, vip: str = SPREAD_VIP) -> None:
        super().__init__("spread", "control: 3 nodes, a third of the ports each, no hash")
        self.vip = vip

    def _cfg(self, lab: Lab, k: int) -> VipConfig:
        return lab.topo.vip_config([k], total_nodes=len(SERVING), vip=self.vip)

    def enter(self, lab: Lab) -> str:
        cfg = self._cfg(lab, 1)
        _vip_link(lab, SERVING, cfg, add=True)
        for k in SERVING:
            nft(lab, lab.topo.node_ns(k), spread_script(self._cfg(lab, k), k, len(SERVING)))
        _client_neigh(lab, cfg.clustermac, self.vip)
        return f"http://{self.vip}/"

    def leave(self, lab: Lab) -> None:
        _delete_table(lab, SERVING, _bench_table("spread", self.vip))
        _vip_link(lab, SERVING, self._cfg(lab, 1), add=False)
        _client_neigh(lab, None, self.vip)


class Vip(Setup):
    """The real thing: the CLI, ARP answered by the datapath (no static entry)."""

    def __init__(self, hashmode: str = "sourceip-sourceport") -> None:
        super().__init__("vip", "clusterip VIP over 3 nodes")
        self.hashmode = hashmode

    def enter(self, lab: Lab) -> str:
        _client_neigh(lab, None)
        for k in SERVING:
            cip(lab, k, *up_args(lab, k, self.hashmode))
        url = f"http://{lab.topo.vip}/"
        run_ok(lab, lab.topo.client_ns, ["curl", "-s", "-o", "/dev/null", "-m", "2", url])
        mac = lab.neighbour(lab.topo.client_ns, lab.topo.vip)
        want = lab_config(lab, 1).clustermac
        if mac != want:
            raise LabError(f"client resolved the VIP to {mac}, not the cluster MAC {want}")
        return url

    def leave(self, lab: Lab) -> None:
        for k in SERVING:
            cip(lab, k, "down", "--vip", lab.topo.vip)
        _client_neigh(lab, None)


class HAProxy(Setup):
    def __init__(self) -> None:
        super().__init__("haproxy", "HAProxy director (node 4) in front of 3 nodes")

    def enter(self, lab: Lab) -> str:
        return f"http://{lab.topo.node_addr(DIRECTOR)}/"


class Variant(Setup):
    """A hand-loaded ruleset on nodes 1-3 (static neighbour entry in the client)."""

    def __init__(self, key: str) -> None:
        title, self.fn = VARIANTS[key]
        super().__init__(f"var:{key}", title)

    def enter(self, lab: Lab) -> str:
        cfg1 = lab_config(lab, 1)
        _vip_link(lab, SERVING, cfg1, add=True)
        for k in SERVING:
            nft(lab, lab.topo.node_ns(k), self.fn(lab_config(lab, k), k))
        _client_neigh(lab, cfg1.clustermac)
        return f"http://{lab.topo.vip}/"

    def leave(self, lab: Lab) -> None:
        _flush_nodes(lab, SERVING)
        _vip_link(lab, SERVING, lab_config(lab, 1), add=False)
        _client_neigh(lab, None)


BASE_SETUPS: tuple[Callable[[], Setup], ...] = (Direct, Ceiling, Vip, HAProxy)


def live_setups() -> list[Setup]:
    """The throughput set-ups, each on its own address, so that all can be live at once."""
    return [Direct(), Ceiling(CEILING_VIP), Spread(), Vip(), HAProxy()]


def make_setups(variants: Sequence[str] = ()) -> list[Setup]:
    """Set-ups entered one at a time, all on the lab's VIP (the per-packet runs)."""
    out = [make() for make in BASE_SETUPS]
    for key in variants:
        if key not in VARIANTS:
            raise ValueError(f"bad variant {key!r}: allowed are {', '.join(VARIANTS)}")
        out.append(Variant(key))
    return out
