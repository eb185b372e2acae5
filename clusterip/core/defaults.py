"""Every tunable of the agent, in one place: the core, the settings, the simulator and the
benchmarks all read their defaults here, and the README's table of agent settings is checked
against `SETTINGS` by a test.

Times are in seconds unless the name says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

# ----- what an operator sets (flags and the `[agent]` table) -------------------------------
INTERVAL_MS = 50  # heartbeat interval
TOLERANCE = 5  # a peer is dead after INTERVAL_MS x TOLERANCE without a heartbeat (250 ms)
BUCKETS = 4096  # per VIP: 64 equal nodes are within 1.6% of their share
MAX_BUCKETS = 16384  # the assignment's limit (clusterip.core.assign)
WEIGHT = 1
MAX_WEIGHT = 1000
MAX_NODE_ID = 255  # the wire format carries one byte's worth (clusterip.core.wire)
DRAIN_TIMEOUT = 300.0  # a bucket that moved keeps its flows here at most this long
RESTART_GRACE = 5.0  # a stopped agent's node keeps serving this long, for its successor
GROUP = "224.0.0.199"  # link-local multicast: never routed
PORT = 5604  # away from corosync's 5404-5405 and VRRP (IP protocol 112)
REALTIME = 10  # SCHED_RR priority of the agent (keepalived's vrrp_rt_priority); 0: off
XDP = "auto"  # the XDP pre-filter (clusterip.xdp): auto, on or off

# ----- internal timers ---------------------------------------------------------------------
LISTEN = None  # startup listen period; None: one detection time
HOLD_DOWN_FRACTION = 0.2  # a changed member set is gathered this x interval before it counts
EARLY_GAP = 0.2  # an extra heartbeat (answer to a HELLO, new view) waits this x interval
COALESCE_FRACTION = 0.1  # received changes within this x interval of the last are taken together
ISOLATION_LIMIT = 10.0  # cut off this long with carrier: the others are gone, serve alone
FOREIGN_WAIT = 3.0  # a new node that hears only messages it cannot accept waits this long
ORPHAN_RESET_DELAY = 0.2  # flows of a dead node's buckets get their RST this long after
AFTER_DEATH = 5.0  # buckets gained this long after a death may carry the dead node's flows
KEPT_REFRESH = 1.0  # a draining node re-announces the flows it keeps this often
KEPT_TTL = 3.0  # announced flows not refreshed for this long are forgotten
FLOW_CHECK_EVERY = 1.0  # flows of draining buckets are counted this often
LEAVE_REPEAT = 3  # a LEAVE (or RESTART) is sent this many times
REPLAY_FORGET_AFTER = 600.0  # replay state of a silent sender is kept this long
LOG_EVERY = 10.0  # at most one log line per cause per this period
SYN_TIMEOUT = 60  # s: an accepted SYN's flow is this node's for this long (nft set timeout)
UDP_FLOW_TIMEOUT = 30  # s: a UDP flow idle this long is over (the kernel's conntrack default)


@dataclass(frozen=True)
class Setting:
    """One user-facing agent setting: the `[agent]` key, its flag, default and range."""

    key: str
    default: object
    low: float | None
    high: float | None
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.key.replace("_", "-")


SETTINGS: tuple[Setting, ...] = (
    Setting("node_id", None, 1, MAX_NODE_ID, "this node's id, unique in the cluster"),
    Setting("key_file", None, None, None, "shared secret (at least 16 bytes), mode 0600"),
    Setting("allow_readable_key", False, None, None, "accept a key file others can read"),
    Setting("weight", WEIGHT, 0, MAX_WEIGHT, "share relative to the others (0: none)"),
    Setting("buckets", BUCKETS, 1, MAX_BUCKETS, "buckets per VIP"),
    Setting("interval_ms", INTERVAL_MS, 5, 10_000, "heartbeat interval (ms)"),
    Setting("tolerance", TOLERANCE, 2, 100, "missed heartbeats before a peer is dead"),
    Setting("peers", (), None, None, "unicast peer addresses instead of multicast"),
    Setting("group", GROUP, None, None, "heartbeat multicast group"),
    Setting("port", PORT, 1, 65535, "heartbeat UDP port"),
    Setting("notify", None, None, None, "command run as CMD EVENT VIP OWNED BUCKETS"),
    Setting("drain_timeout", DRAIN_TIMEOUT, 0, 86400, "longest a moved bucket keeps flows (s)"),
    Setting("restart_grace", RESTART_GRACE, 0, 600, "how long a stopped agent's node serves (s)"),
    Setting(
        "metrics",
        None,
        None,
        None,
        "[ADDR:]PORT (default 127.0.0.1) for metrics and the status page",
    ),
    Setting("realtime", REALTIME, 0, 99, "SCHED_RR priority (0: normal scheduling)"),
    Setting(
        "xdp", XDP, None, None, "XDP pre-filter: auto (native where the driver has it), on, off"
    ),
)
SETTING_KEYS = tuple(s.key for s in SETTINGS)
