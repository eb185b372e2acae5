"""Live flows per bucket from /proc/net/nf_conntrack's text."""

from __future__ import annotations

import ipaddress

from clusterip import config
from clusterip.flows import parse_proc_conntrack
from clusterip.hashing import flow_bucket

TEXT = """\
ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.1.1 dst=198.18.0.100 sport=40000 dport=7 \
src=198.18.0.100 dst=198.18.1.1 sport=7 dport=40000 [ASSURED] mark=0 zone=0 use=2
ipv4     2 tcp      6 119 TIME_WAIT src=198.18.1.2 dst=198.18.0.100 sport=40001 dport=80 \
src=198.18.0.100 dst=198.18.1.2 sport=80 dport=40001 [ASSURED] mark=0 zone=0 use=2
ipv4     2 udp      17 29 src=198.18.1.3 dst=198.18.0.100 sport=5000 dport=5300 \
src=198.18.0.100 dst=198.18.1.3 sport=5300 dport=5000 mark=0 zone=0 use=2
ipv4     2 tcp      6 300 ESTABLISHED src=198.18.0.100 dst=198.18.1.4 sport=7 dport=1 \
src=198.18.1.4 dst=198.18.0.100 sport=1 dport=7 mark=0 zone=0 use=2
ipv4     2 tcp      6 431999 ESTABLISHED src=198.18.1.5 dst=198.18.0.1 sport=40000 dport=22 \
src=198.18.0.1 dst=198.18.1.5 sport=22 dport=40000 [ASSURED] mark=0 zone=0 use=2
"""


def test_only_live_flows_to_the_vip_count() -> None:
    cfg = config.build(vip="198.18.0.100", interface="eth0", total_nodes=1)
    counts = parse_proc_conntrack(TEXT, cfg, 4096)
    b = flow_bucket(cfg.hashmode, cfg.seed, 4096, ipaddress.IPv4Address("198.18.1.1"), 40000, 7)
    u = flow_bucket(cfg.hashmode, cfg.seed, 4096, ipaddress.IPv4Address("198.18.1.3"), 5000, 5300)
    # TIME_WAIT is over; a flow *from* the VIP and one to another address are not the VIP's.
    assert counts == ({b: 1, u: 1} if b != u else {b: 2})
