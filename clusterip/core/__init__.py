"""The agent's pure protocol core (no sockets, no nftables, no clock of its own).

- wire: HELLO / HEARTBEAT / LEAVE with pack/unpack, HMAC-SHA256, typed rejections
- fingerprint: key parsing, key id, cluster fingerprint, view digest
- replay: per-sender incarnation + sequence guard
- assign: deterministic bucket assignment (capacitated rendezvous hashing)
- membership: the per-VIP state machine (peers, failure detection, passive rule, state)
- ownership: held/pending buckets, release before acquire, orphaned vs moved
- refusals, stats: rejection counters by cause, rate-limited log lines
- params, events: tunables and identity; what the state machine reports
- bus, sim: Clock/Bus interfaces with in-memory fakes; a many-node simulator
- assign_stats, failover_stats: measurements (`python -m ...`)
"""
