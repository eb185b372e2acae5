"""Import legacy iptables CLUSTERIP rules, as pasted from a terminal or a web page, as VipConfigs.

Pure: text in, configs or TOML text out. Typographic damage from web pages and word processors
(unicode dashes, spaces and quotes; stray spaces inside option names; prompts; line breaks) is
undone only where an option name is expected, so a value (a MAC `01-00-5e-00-00-20`, an
interface `eth-1`) is never turned into an option.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from clusterip import config
from clusterip.config import ConfigError, VipConfig
from clusterip.paste import logical_lines, shorten, tokenize

# Canonical long option -> number of values. Short options and aliases map onto these names.
_RULE_OPTS = dict.fromkeys(("wait", "verbose", "ipv4"), 0)
_RULE_OPTS |= dict.fromkeys(("append", "insert", "replace", "table", "wait-interval", "match"), 1)
_RULE_OPTS |= dict.fromkeys(("destination", "in-interface", "protocol", "jump", "comment"), 1)
_RULE_OPTS |= dict.fromkeys(("dport", "dports"), 1)
_TARGET_OPTS = {"new": 0} | dict.fromkeys(
    ("hashmode", "clustermac", "total-nodes", "local-node", "hash-init"), 1
)
_ALIASES = {"destination-port": "dport", "destination-ports": "dports", "dst": "destination"}
_ALIASES |= {"cluster-mac": "clustermac", "hash-mode": "hashmode"}
_COMMANDS = {"delete", "new-chain", "delete-chain", "flush", "list", "list-rules", "zero"}
_COMMANDS |= {"policy", "rename-chain", "help", "version"}
_UNSUPPORTED = _COMMANDS | {"source", "src", "out-interface", "goto", "fragment", "set-counters"}
_UNSUPPORTED |= {"numeric", "exact", "ipv6", "sport", "source-port", "sports", "source-ports"}
_UNSUPPORTED |= {"ports", "syn", "tcp-flags", "state", "ctstate"}
_SHORT = {
    **{"A": "append", "I": "insert", "R": "replace", "t": "table", "w": "wait", "v": "verbose"},
    **{"W": "wait-interval", "4": "ipv4", "6": "ipv6", "d": "destination", "i": "in-interface"},
    **{"p": "protocol", "m": "match", "j": "jump", "s": "source", "o": "out-interface"},
    **{"g": "goto", "f": "fragment", "c": "set-counters", "D": "delete", "N": "new-chain"},
    **{"X": "delete-chain", "F": "flush", "L": "list", "S": "list-rules", "Z": "zero"},
    **{"P": "policy", "E": "rename-chain", "n": "numeric", "x": "exact", "h": "help"},
    "V": "version",
}
_LONG = {*_RULE_OPTS, *_TARGET_OPTS, *_ALIASES, *_UNSUPPORTED}
_ARITY = {**_RULE_OPTS, **_TARGET_OPTS}

_UNDERSTOOD = (
    "-A/-I/-R CHAIN, -t TABLE, -d VIP, -i IFACE, -p tcp|udp|sctp|all, "
    "-m tcp|udp|sctp|multiport|comment, --dport, --dports, --comment, -j CLUSTERIP"
)
_TARGET = ", ".join(f"--{name}" for name in _TARGET_OPTS)
_TABLES = "filter, mangle, raw, security"
_MATCHES = "tcp, udp, sctp, multiport, comment"
_PROTO_NUMBERS = {"0": "all", "6": "tcp", "17": "udp", "132": "sctp"}
_IPTABLES = ("iptables", "iptables-legacy", "iptables-nft")
# CLUSTERIP was IPv4 only: net/ipv4/netfilter/ipt_CLUSTERIP.c, never an ip6t_ twin, and
# iptables' extension was libipt_CLUSTERIP. No IPv6 rule can exist to import.
_NO_IP6T = "ip6tables never had a CLUSTERIP target (CLUSTERIP was IPv4 only): no rule to import"
_V6_BY_HAND = "write an IPv6 VIP's config for `clusterip up` directly (--vip 2001:db8::10 ...)"


@dataclass
class _Rule:
    """One pasted iptables command and what it said, with the token index of each value."""

    number: int
    tokens: list[str]
    many: bool
    vip: ipaddress.IPv4Address | None = None
    interface: str | None = None
    protocol: str | None = None
    match_protocol: str | None = None
    dports: tuple[int, ...] = ()
    hashmode: str | None = None
    clustermac: str | None = None
    total_nodes: int | None = None
    local_nodes: tuple[str, ...] = ()
    seed: int | None = None
    at: dict[str, int] = field(default_factory=dict)

    def show(self, at: int | None = None) -> str:
        """The rule, shortened around token `at`, for error messages."""
        return (f"rule {self.number} " if self.many else "") + repr(shorten(self.tokens, at))


def import_lines(lines: Sequence[str]) -> list[VipConfig]:
    """Parse pasted CLUSTERIP rule lines into one VipConfig per VIP, in first-seen order.

    Raises ConfigError (one line naming the rule, the bad token and what is allowed).
    """
    if isinstance(lines, str):
        lines = [lines]
    texts = logical_lines(lines)
    commands = [cmd for text in texts for cmd in tokenize(text)]
    if not commands:
        raise ConfigError(
            "no iptables CLUSTERIP rule given: paste lines such as "
            "'iptables -I INPUT -d VIP -i IFACE -j CLUSTERIP --new --total-nodes N --local-node K'"
        )
    groups: dict[ipaddress.IPv4Address, list[_Rule]] = {}
    for number, tokens in enumerate(commands, 1):
        rule = _parse(_Rule(number, tokens, len(commands) > 1))
        assert rule.vip is not None
        groups.setdefault(rule.vip, []).append(rule)
    return [_merge(group) for group in groups.values()]


_HEADER = """\
# Imported from iptables CLUSTERIP rules by `clusterip import-iptables`.
#
# The bucket hash is NOT bit-compatible with the old CLUSTERIP kernel module: the kernel
# computed jhash over host-order words, nftables' jhash reads the packet bytes, so a client
# lands in another bucket than before. Do not mix old CLUSTERIP nodes and new clusterip nodes
# in one cluster: move all nodes of a cluster at once.
# local_node is this node's own part; every other key must be identical on every node.
"""


def render_toml(configs: Iterable[VipConfig]) -> str:
    """TOML for `configs` (via config.dump_toml) with comments on what the import changed."""
    parts = [_HEADER]
    for cfg in configs:
        notes = "".join(f"# {note}\n" for note in _notes(cfg))
        parts.append("\n" + notes + config.dump_toml([cfg]))
    return "".join(parts)


def _notes(cfg: VipConfig) -> list[str]:
    notes = [
        "No --hash-init in the rules: seed derived from the VIP (CLUSTERIP's hash differs anyway)."
        if cfg.seed == config.derive_seed(cfg.vip)
        else f"seed is --hash-init {cfg.seed}, in hex; the hash still differs from CLUSTERIP's."
    ]
    if cfg.clustermac.startswith("01:00:5e:"):
        notes.append(f"clustermac {cfg.clustermac} is an IPv4-multicast MAC: a switch doing IGMP")
        notes.append("snooping may not flood it to every node. If so, delete the clustermac line")
        notes.append(f"on every node to use the derived {config.derive_mac(cfg.vip)}.")
    return notes


# ---- one command -> _Rule ---------------------------------------------------------------


def _parse(rule: _Rule) -> _Rule:
    toks = rule.tokens
    i = _skip_command_words(rule)
    target = _find_target(toks, i)
    if target is None or target.upper() != "CLUSTERIP":
        raise ConfigError(f"not a CLUSTERIP rule: {rule.show()} (expected -j CLUSTERIP)")
    in_target = False
    while i < len(toks):
        start = i
        if toks[i] == "!" or not toks[i].startswith("-"):
            raise _unexpected(rule, i)
        name, shown, inline, i = _read_name(rule, i)
        if name is None or name in _UNSUPPORTED:
            raise _bad_option(rule, name, shown, start, in_target)
        value, at = None, start
        if _ARITY[name]:
            if inline is None and i >= len(toks):
                raise ConfigError(f"option {shown} needs a value in {rule.show(start)}")
            value, at = (inline, start) if inline is not None else (toks[i], i)
            i += inline is None
            if value == "!":
                raise _unexpected(rule, at)
        i = _apply(rule, name, value, at, i)
        in_target = in_target or name == "jump"
    for key, option in (("vip", "-d VIP"), ("interface", "-i IFACE")):
        if key not in rule.at:
            raise ConfigError(f"missing {option} in {rule.show()}: CLUSTERIP needed -d and -i")
    if rule.match_protocol and rule.protocol not in (None, rule.match_protocol):
        raise ConfigError(
            f"-m {rule.match_protocol} does not fit -p {rule.protocol} "
            f"in {rule.show(rule.at['protocol'])}"
        )
    rule.protocol = rule.protocol or rule.match_protocol
    if rule.dports and rule.protocol in (None, "all"):
        raise ConfigError(f"ports need -p tcp, udp or sctp in {rule.show(rule.at['dports'])}")
    return rule


def _unexpected(rule: _Rule, at: int) -> ConfigError:
    if rule.tokens[at] == "!":
        return ConfigError(f"negation '!' in {rule.show(at)}: CLUSTERIP rules cannot be negated")
    return ConfigError(f"unexpected {rule.tokens[at]!r} in {rule.show(at)}: expected an option")


def _skip_command_words(rule: _Rule) -> int:
    """Index after `sudo` and `iptables` (absent in iptables-save lines); refuses other commands."""
    toks, i = rule.tokens, 0
    while i < len(toks) and toks[i].lower() == "sudo":
        i += 1
    if i < len(toks) and not toks[i].startswith("-"):
        word = toks[i].rsplit("/", 1)[-1].lower()
        if word.startswith("ip6tables"):
            raise ConfigError(f"{_NO_IP6T} in {rule.show(i)}; {_V6_BY_HAND}")
        if word not in _IPTABLES:
            raise ConfigError(
                f"not an iptables command: {rule.show(i)} "
                "(expected iptables ... or an iptables-save line -A CHAIN ...)"
            )
        i += 1
    return i


def _find_target(toks: list[str], i: int) -> str | None:
    """The value of -j/--jump, looked for before the full parse to name non-CLUSTERIP rules."""
    for k in range(i, len(toks)):
        tok, core = toks[k], toks[k].lstrip("-")
        if not tok.startswith("-"):
            continue
        if core in ("j", "jump") and k + 1 < len(toks):
            return toks[k + 1]
        if not core and k + 2 < len(toks) and toks[k + 1] in ("j", "jump"):
            return toks[k + 2]
        if len(tok) - len(core) == 1 and core[:1] == "j" and core[1:].upper() == "CLUSTERIP":
            return core[1:]
    return None


def _exact(core: str) -> str | None:
    if len(core) == 1:
        return _SHORT.get(core)
    low = core.lower()
    return _ALIASES.get(low, low) if low in _LONG else None


def _glue(core: str, nxt: str, exact_only: bool) -> str | None:
    """`core` + the next word, if together they spell (the start of) an option name."""
    rest = nxt.lstrip("-")
    for cand in (core + nxt, f"{core}-{rest}", core + rest):
        low = cand.lower()
        if len(low) > 1 and (
            low in _LONG or (not exact_only and any(n.startswith(low) for n in _LONG))
        ):
            return cand
    return None


def _read_name(rule: _Rule, i: int) -> tuple[str | None, str, str | None, int]:
    """Read an option name from token i on, healing `- A`, `-- new`, `--total- nodes`,
    `--local -node`; returns (canonical name or None, name as shown, `=value`, next index)."""
    toks = rule.tokens
    dashes = len(toks[i]) - len(toks[i].lstrip("-"))
    core, inline = toks[i].lstrip("-"), None
    i += 1
    if "=" in core[1:]:
        core, inline = core.split("=", 1)
    while inline is None and i < len(toks):
        if not core:  # `- A`, `-- new`
            core, i = toks[i].lstrip("-"), i + 1
            continue
        name = _exact(core)
        if name is not None and (not toks[i].startswith("-") or not _ARITY.get(name, 0)):
            break
        glued = _glue(core, toks[i], exact_only=name is not None)
        if glued is None:
            break
        core, i = glued, i + 1
    shown = f"-{core}" if len(core) == 1 else f"--{core}"
    name = _exact(core)
    if name is None and len(core) > 1:
        low = core.lower()
        found = sorted({_ALIASES.get(n, n) for n in _LONG if n.startswith(low)})
        if len(found) > 1:
            choices = ", ".join(f"--{n}" for n in found)
            raise ConfigError(
                f"ambiguous option {shown!r} in {rule.show(i - 1)}: could be {choices}"
            )
        if found:
            name = found[0]
        elif dashes == 1 and _ARITY.get(_SHORT.get(core[0], ""), 0) and inline is None:
            name, shown, inline = _SHORT[core[0]], f"-{core[0]}", core[1:]  # -ptcp, -ieth0
    return name, shown, inline, i


def _bad_option(rule: _Rule, name: str | None, shown: str, at: int, in_target: bool) -> ConfigError:
    where = rule.show(at)
    if name is None and in_target:
        return ConfigError(f"unknown CLUSTERIP option {shown!r} in {where}: allowed are {_TARGET}")
    if name == "ipv6":
        return ConfigError(f"{_NO_IP6T} ({shown!r} in {where}); {_V6_BY_HAND}")
    if name in _COMMANDS:
        return ConfigError(f"only -A, -I or -R rules can be imported, not {shown!r} in {where}")
    kind = "unknown" if name is None else "unsupported"
    return ConfigError(f"{kind} option {shown!r} in {where}: allowed are {_UNDERSTOOD}")


def _wrap(rule: _Rule, at: int, exc: ConfigError) -> ConfigError:
    return ConfigError(f"{exc} (in {rule.show(at)})")


def _apply(rule: _Rule, name: str, value: str | None, at: int, i: int) -> int:
    """Record option `name` with `value` (token `at`); returns the index after any extra words."""
    toks = rule.tokens
    if name in ("insert", "replace") and i < len(toks) and toks[i].isdigit():
        return i + 1  # -I INPUT 1
    if name == "wait" and i < len(toks) and re.fullmatch(r"\d+(?:\.\d+)?", toks[i]):
        return i + 1
    if value is None or name in ("append", "insert", "replace", "wait-interval", "comment"):
        return i  # flags (--new, -v, -4) and values the datapath does not need
    if name == "table":
        if value not in _TABLES.split(", "):
            raise ConfigError(f"bad table {value!r} in {rule.show(at)}: allowed are {_TABLES}")
        return i
    if name == "jump":
        if value.upper() != "CLUSTERIP":
            raise ConfigError(f"not a CLUSTERIP rule: {rule.show(at)} (expected -j CLUSTERIP)")
        return i
    if name == "match":
        if value.lower() not in _MATCHES.split(", "):
            raise ConfigError(
                f"unsupported match {value!r} in {rule.show(at)}: allowed are {_MATCHES}"
            )
        if value.lower() in config.PROTOCOLS:
            _set(rule, "match_protocol", value.lower(), at, f"-m {value}")
        return i
    if name == "hashmode":  # heal `sourceip- sourceport`, `sourceip -sourceport`
        fits = range(1, min(4, len(toks) - i) + 1)
        glued = [n for n in fits if "".join([value, *toks[i : i + n]]) in config.HASHMODES]
        if glued:
            value, i = "".join([value, *toks[i : i + glued[-1]]]), i + glued[-1]
    try:
        _set(rule, _FIELD[name], _convert(name, value), at, f"--{name}")
    except ConfigError as exc:
        raise _wrap(rule, at, exc) from None
    return i


_FIELD = {"destination": "vip", "in-interface": "interface", "protocol": "protocol"}
_FIELD |= {"dport": "dports", "dports": "dports", "hashmode": "hashmode", "hash-init": "seed"}
_FIELD |= {"clustermac": "clustermac", "total-nodes": "total_nodes", "local-node": "local_nodes"}


def _convert(name: str, value: str) -> object:
    """Check one option value with clusterip.config's parsers; raises ConfigError."""
    if name == "destination":
        addr, prefixlen = config.parse_vip(value)
        if addr.version == 6:
            raise ConfigError(
                f"bad VIP {value!r}: iptables rules match IPv4 only, and ip6tables never had a "
                f"CLUSTERIP target; {_V6_BY_HAND}"
            )
        if prefixlen != 32:
            raise ConfigError(f"bad VIP {value!r}: CLUSTERIP matched one address (A.B.C.D[/32])")
        return addr
    if name == "in-interface":
        return config.parse_interface(value)
    if name == "protocol":
        return config.parse_protocol(_PROTO_NUMBERS.get(value, value))
    if name in ("dport", "dports"):
        if ":" in value:
            raise ConfigError(f"bad destination port {value!r}: list the ports, not a range")
        return config.parse_dports([value])
    if name == "hashmode":
        return config.parse_hashmode(value)
    if name == "clustermac":
        return config.parse_mac(value)
    if name == "total-nodes":
        return config.parse_total_nodes(value)
    if name == "local-node":
        return tuple(part for part in value.split(",") if part)
    return _hash_init(value)


def _hash_init(text: str) -> int:
    """--hash-init as iptables read it (strtoul base 0: decimal, 0x hex, 0-prefixed octal)."""
    if re.fullmatch(r"0[xX][0-9a-fA-F]+", text):
        value = int(text, 16)
    elif re.fullmatch(r"0[0-7]+", text):
        value = int(text, 8)
    elif re.fullmatch(r"0|[1-9][0-9]*", text):
        value = int(text)
    else:
        value = -1
    if not 0 <= value <= 0xFFFFFFFF:
        raise ConfigError(f"bad --hash-init {text!r}: expected a number from 0 to 4294967295")
    return value


def _set(rule: _Rule, key: str, value: object, at: int, option: str) -> None:
    if key in rule.at and getattr(rule, key) != value:
        raise ConfigError(f"{option} twice in {rule.show(at)}: {getattr(rule, key)!r}, {value!r}")
    setattr(rule, key, value)
    rule.at[key] = at


# ---- rules -> one VipConfig per VIP -----------------------------------------------------

_OPTION_OF = {"interface": "-i", "hashmode": "--hashmode", "clustermac": "--clustermac"}
_OPTION_OF |= {"total_nodes": "--total-nodes", "seed": "--hash-init", "protocol": "-p"}


def _conflict(key: str, a: _Rule, b: _Rule) -> ConfigError:
    va, vb = getattr(a, key), getattr(b, key)
    return ConfigError(
        f"conflicting {_OPTION_OF[key]} for VIP {a.vip}: {va!r} in {a.show(a.at.get(key))} vs "
        f"{vb!r} in {b.show(b.at.get(key))} (all rules for one VIP must agree)"
    )


def _merge(group: list[_Rule]) -> VipConfig:
    first = group[0]
    chosen: dict[str, _Rule] = {}
    for key in ("interface", "hashmode", "clustermac", "total_nodes", "seed"):
        for rule in group:
            if getattr(rule, key) is None:
                continue
            if key not in chosen:
                chosen[key] = rule
            elif getattr(chosen[key], key) != getattr(rule, key):
                raise _conflict(key, chosen[key], rule)
    if "total_nodes" not in chosen:
        raise ConfigError(
            f"no --total-nodes for VIP {first.vip} in {first.show()}: "
            "one rule needs --new --total-nodes N --local-node K"
        )
    total = chosen["total_nodes"].total_nodes
    assert total is not None
    nodes: list[int] = []
    for rule in group:
        try:
            nodes += [config.parse_node(k, total) for k in rule.local_nodes]
        except ConfigError as exc:
            raise _wrap(rule, rule.at["local_nodes"], exc) from None
    protocol, dports = _merge_traffic(group)

    def pick(key: str) -> Any:
        return getattr(chosen[key], key) if key in chosen else None

    try:
        return config.build(
            vip=str(first.vip),
            interface=first.interface or "",
            total_nodes=total,
            local_nodes=nodes,
            protocol=protocol,
            dports=dports,
            hashmode=pick("hashmode") or "sourceip",  # CLUSTERIP's default
            clustermac=pick("clustermac"),
            seed=pick("seed"),
        )
    except ConfigError as exc:
        raise _wrap(first, 0, exc) from None


def _merge_traffic(group: list[_Rule]) -> tuple[str, tuple[int, ...]]:
    """The union of what the rules matched: one protocol; no ports = every port."""
    protocol, ports = group[0].protocol or "all", set(group[0].dports)
    for rule in group[1:]:
        other = rule.protocol or "all"
        if protocol == "all" and not ports:
            continue
        if other == "all" and not rule.dports:
            protocol, ports = "all", set()
        elif other != protocol:
            raise _conflict("protocol", group[0], rule)
        elif not ports or not rule.dports:
            ports = set()
        else:
            ports |= set(rule.dports)
    return protocol, tuple(sorted(ports))
