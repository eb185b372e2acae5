"""`clusterip doctor`: why clients get no answer, one check at a time.

Each check prints OK, WARN or FAIL with the fix in one line; the exit status is 0 (all OK),
1 (some WARN) or 2 (some FAIL). The decisions (`checks`) are pure functions over facts
(`facts`), unit-tested; collecting the facts (`collect`, `wire`) is thin I/O.

On a node: the kernel and tools, then per VIP this node's state (address, MAC filter, tables
and counters, sysctls, other tables, offloads), the segment (who answers ARP/ND for the VIP)
and, with an agent running, its peers. `--client`, on any host of the segment: this host's
neighbour entry for the VIP, the MACs in the ARP/ND answers, and which node answers a few
test flows.
"""
