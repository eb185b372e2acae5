"""clusterip.importer: pasted iptables CLUSTERIP lines -> VipConfig and TOML."""

from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterip import config
from clusterip.config import ConfigError
from clusterip.importer import import_lines, render_toml
from tests.conftest import GOLDEN, check_golden

GOLDEN_INPUTS = sorted((GOLDEN / "import").glob("*.in"))
BASE = (
    "iptables -I INPUT -d 10.0.0.100 -i eth0 -p tcp --dport 80 -j CLUSTERIP --new "
    "--hashmode sourceip --clustermac 01:00:5E:00:00:20 --total-nodes 2 --local-node 1 "
    "--hash-init 0"
)


def rule(*extra: str, vip: str = "10.0.0.1", node: int = 1, target: str = "") -> str:
    """A valid CLUSTERIP line, with `extra` words before -j and `target` words after it."""
    return (
        f"iptables -A INPUT -d {vip} -i eth0 {' '.join(extra)} -j CLUSTERIP --new "
        f"--total-nodes 2 --local-node {node} {target}"
    )


# ---- golden files ------------------------------------------------------------------------


def test_golden_inputs_present() -> None:
    names = {p.stem for p in GOLDEN_INPUTS}
    assert {"plain", "dashes", "stray-spaces", "continuation", "two-nodes", "multiport"} <= names


@pytest.mark.parametrize("path", GOLDEN_INPUTS, ids=lambda p: p.stem)
def test_golden(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    check_golden(f"import/{path.stem}.toml", render_toml(import_lines([text])))


@pytest.mark.parametrize("path", GOLDEN_INPUTS, ids=lambda p: p.stem)
def test_lines_as_separate_arguments_equal_one_pasted_argument(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert import_lines(text.splitlines()) == import_lines([text])


@pytest.mark.parametrize("path", GOLDEN_INPUTS, ids=lambda p: p.stem)
def test_round_trip_through_load_toml(path: Path, tmp_path: Path) -> None:
    configs = import_lines([path.read_text(encoding="utf-8")])
    out = tmp_path / "clusterip.toml"
    out.write_text(render_toml(configs))
    assert config.load_toml(str(out)) == configs


# ---- what the lines mean -----------------------------------------------------------------


def test_plain_line_maps_every_option() -> None:
    (cfg,) = import_lines([BASE])
    assert cfg.vip == ipaddress.IPv4Address("10.0.0.100") and cfg.interface == "eth0"
    assert (cfg.protocol, cfg.dports, cfg.hashmode) == ("tcp", (80,), "sourceip")
    assert (cfg.clustermac, cfg.total_nodes, cfg.local_nodes) == ("01:00:5e:00:00:20", 2, (1,))
    assert cfg.seed == 0


def test_defaults_are_clusterip_hashmode_and_config_derived_mac_and_seed() -> None:
    (cfg,) = import_lines([rule()])
    assert cfg.hashmode == "sourceip"  # CLUSTERIP's default, not clusterip's
    assert cfg.clustermac == config.derive_mac(cfg.vip)
    assert cfg.seed == config.derive_seed(cfg.vip)
    assert (cfg.protocol, cfg.dports) == ("all", ())
    assert "seed derived from the VIP" in render_toml([cfg])


@pytest.mark.parametrize(
    ("text", "seed"),
    [("0", 0), ("4294967295", 0xFFFFFFFF), ("0x10", 16), ("010", 8), ("305419896", 0x12345678)],
)
def test_hash_init_is_read_as_strtoul_did(text: str, seed: int) -> None:
    (cfg,) = import_lines([rule(target=f"--hash-init {text}")])
    assert cfg.seed == seed
    assert f"--hash-init {seed}" in render_toml([cfg])


def test_values_with_dashes_stay_values() -> None:
    line = rule(target="--clustermac 01-00-5E-00-00-21").replace("eth0", "eth-1")
    (cfg,) = import_lines([line.replace("-", "\u2013")])
    assert cfg.interface == "eth-1" and cfg.clustermac == "01:00:5e:00:00:21"
    assert import_lines([rule("-m comment --comment '-j ACCEPT --foo'")]) == import_lines([rule()])


def test_lines_for_one_vip_merge_in_first_seen_order() -> None:
    lines = [
        rule("-p tcp --dport 443", vip="10.0.0.2", node=2),
        rule("-p tcp --dport 80", vip="10.0.0.1"),
        rule("-p tcp --dport 80", vip="10.0.0.2", node=1),
        "iptables -A INPUT -d 10.0.0.1 -i eth0 -p tcp --dport 80 -j CLUSTERIP",  # no --new
    ]
    first, second = import_lines(lines)
    assert str(first.vip) == "10.0.0.2" and str(second.vip) == "10.0.0.1"
    assert first.local_nodes == (1, 2) and first.dports == (80, 443)
    assert second.local_nodes == (1,) and second.dports == (80,)


def test_merging_a_rule_for_every_port_keeps_every_port() -> None:
    (cfg,) = import_lines([rule("-p tcp --dport 80"), rule("-p tcp", node=2)])
    assert (cfg.protocol, cfg.dports) == ("tcp", ())
    (cfg,) = import_lines([rule("-p tcp --dport 80"), rule(node=2)])
    assert (cfg.protocol, cfg.dports) == ("all", ())


@pytest.mark.parametrize(
    "variant",
    [
        "-A INPUT -d 10.0.0.1/32 -i eth0 -p tcp -m tcp --dport 80 -j CLUSTERIP --new "
        "--total-nodes 2 --local-node 1",  # iptables-save form
        "sudo /usr/sbin/iptables -w 5 -v -t mangle -I PREROUTING 3 -ieth0 -d10.0.0.1 -p 6 "
        "--destination-port 80 -jCLUSTERIP --new --total-nodes=2 --local 1",
        "iptables -A INPUT --destination 10.0.0.1 --in-interface eth0 --protocol TCP -m multiport "
        "--destination-ports 80 --jump CLUSTERIP --new --total 2 --local-node 1  # node one",
        "$ iptables -A INPUT -d 10.0.0.1 -i eth0 -m tcp --dport 80 -j CLUSTERIP --new "
        "--total-nodes 2 --local-node 1; ",
        "iptables -A INPUT -d 10.0.0.1 -i eth0 -p tcp\n--dport 80 -j CLUSTERIP\n--new --total-nodes"
        " 2 --local-node 1",  # wrapped by a web page, no backslashes
        "sudo\niptables\n-A INPUT -d 10.0.0.1 -i eth0 -p tcp --dport 80 -j CLUSTERIP --new "
        "--total-nodes 2 --local-node 1",
    ],
)
def test_spellings_iptables_accepted_mean_the_same(variant: str) -> None:
    assert import_lines([variant]) == import_lines([rule("-p tcp --dport 80")])


def test_unquoted_hash_inside_a_word_is_not_a_comment() -> None:
    line = rule("-m comment --comment node#1")
    assert import_lines([line]) == import_lines([rule()])


# ---- errors ------------------------------------------------------------------------------

ERRORS = [
    (
        ["iptables -A INPUT -j ACCEPT"],
        "not a CLUSTERIP rule: 'iptables -A INPUT -j ACCEPT' (expected -j CLUSTERIP)",
    ),
    (["iptables -A INPUT -d 10.0.0.1 -i eth0"], "not a CLUSTERIP rule"),
    (
        [rule(target="--foo 1")],
        "unknown CLUSTERIP option '--foo' in '... -i eth0 -j CLUSTERIP --new",
    ),
    ([rule(target="--foo 1")], "allowed are --new, --hashmode, --clustermac, --total-nodes"),
    ([rule("--bar")], "unknown option '--bar' in "),
    ([rule("-s 192.0.2.1")], "unsupported option '-s' in"),
    ([rule("-p tcp --sport 80")], "unsupported option '--sport'"),
    ([rule("-m state --state NEW")], "unsupported match 'state' in"),
    ([rule("-t nat")], "bad table 'nat' in"),
    (
        ["ip6tables -A INPUT -d 2001:db8::1 -i eth0 -j CLUSTERIP --new"],
        "ip6tables never had a CLUSTERIP target",
    ),
    ([rule("-6")], "(CLUSTERIP was IPv4 only): no rule to import ('-6' in"),
    ([rule().replace("10.0.0.1", "2001:db8::1")], "iptables rules match IPv4 only"),
    ([rule().replace("-d 10.0.0.1 ", "")], "missing -d VIP in 'iptables -A INPUT -i eth0"),
    ([rule().replace("-i eth0 ", "")], "missing -i IFACE in"),
    ([rule().replace("10.0.0.1", "10.0.0.0/24")], "bad VIP '10.0.0.0/24': CLUSTERIP matched one"),
    ([rule().replace("10.0.0.1", "224.0.0.1")], "bad VIP '224.0.0.1': must be a unicast"),
    ([rule().replace("eth0", "eth+")], "bad interface name 'eth+'"),
    ([rule(target="--clustermac 02:00:00:00:00:01")], "must be a multicast MAC"),
    ([rule(target="--clustermac 01:00:5e:00:00")], "bad cluster MAC '01:00:5e:00:00'"),
    ([rule(target="--hashmode random")], "bad hashmode 'random': allowed are sourceip,"),
    ([rule(target="--hash-init 4294967296")], "bad --hash-init '4294967296': expected a number"),
    ([rule(target="--hash-init 08")], "bad --hash-init '08'"),
    ([rule().replace("node 1", "node 3")], "bad local node '3': expected a number from 1 to 2"),
    ([rule().replace("--total-nodes 2", "--total-nodes 0")], "bad total nodes '0'"),
    ([rule("-p tcp --dport 1000:2000")], "bad destination port '1000:2000': list the ports"),
    ([rule("-p tcp --dport 0")], "bad destination port '0'"),
    ([rule("--dport 80")], "ports need -p tcp, udp or sctp"),
    ([rule("-p udp -m tcp --dport 80")], "-m tcp does not fit -p udp"),
    ([rule("-p icmp")], "bad protocol 'icmp': allowed are tcp, udp, sctp, all"),
    ([rule("! -p tcp")], "negation '!' in"),
    ([rule("-p ! tcp")], "negation '!' in"),
    ([rule("-p tcp -p udp")], "--protocol twice in"),
    ([rule("--dest 10.0.0.1")], "ambiguous option '--dest'"),
    ([rule("10.0.0.9")], "unexpected '10.0.0.9' in"),
    ([rule().replace("-A INPUT", "-D INPUT")], "only -A, -I or -R rules can be imported, not '-D'"),
    ([rule(target="--hashmode")], "option --hashmode needs a value"),
    (["iptables -A INPUT -d 10.0.0.1 -i eth0 -j CLUSTERIP"], "no --total-nodes for VIP 10.0.0.1"),
    (["nft add rule ip filter input accept"], "not an iptables command: 'nft add rule"),
    ([rule("-m comment --comment 'oops")], "unbalanced quote in"),
    ([rule() + " | tee log"], "shell syntax '|' in"),
    ([], "no iptables CLUSTERIP rule given"),
    (["", "# just a comment", "*filter", "COMMIT"], "no iptables CLUSTERIP rule given"),
]
CONFLICTS = [
    ("--clustermac 01:00:5e:00:00:01", "--clustermac 01:00:5e:00:00:02", "--clustermac"),
    ("--hashmode sourceip", "--hashmode sourceip-sourceport", "--hashmode"),
    ("--hash-init 1", "--hash-init 2", "--hash-init"),
]


@pytest.mark.parametrize(("lines", "message"), ERRORS)
def test_errors_are_one_line_naming_the_bad_token(lines: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        import_lines(lines)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("one", "two", "option"), CONFLICTS)
def test_conflicting_lines_for_one_vip_name_both_values(one: str, two: str, option: str) -> None:
    with pytest.raises(ConfigError) as info:
        import_lines([rule(target=one), rule(node=2, target=two)])
    text = str(info.value)
    assert f"conflicting {option} for VIP 10.0.0.1" in text
    assert one.split()[1].lower() in text and two.split()[1].lower() in text
    assert "rule 1 " in text and "rule 2 " in text


@pytest.mark.parametrize(
    ("one", "two", "message"),
    [
        (rule(), rule(node=2).replace("eth0", "eth1"), "conflicting -i for VIP 10.0.0.1: 'eth0'"),
        (rule(), rule(node=2).replace("nodes 2", "nodes 3"), "conflicting --total-nodes"),
        (rule("-p tcp --dport 80"), rule("-p udp --dport 53", node=2), "'tcp' in rule 1"),
    ],
)
def test_other_conflicts(one: str, two: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        import_lines([one, two])


def test_long_lines_are_shortened_around_the_bad_token() -> None:
    line = rule("-m comment --comment " + "x" * 200, target="--foo 1")
    with pytest.raises(ConfigError) as info:
        import_lines([line])
    text = str(info.value)
    assert "--foo" in text.split(" in ")[1] and "..." in text and len(text) < 300


# ---- property: typographic damage does not change the result -----------------------------

DASHES = ["\u2013", "\u2014", "\u2212", "\u2010"]
SPACES = [" ", "  ", "\u00a0", "\u2009", "\u202f", "\u3000", "\t", " \\\n", " \\\n  "]


@dataclass(frozen=True)
class Word:
    text: str
    option: bool = False


def long_variants(name: str) -> st.SearchStrategy[str]:
    """`--name` as a web page or a hurried typist might have it."""
    prefixes = [
        "--",
        *DASHES,
        *(d + "-" for d in DASHES),
        *("-" + d for d in DASHES),
        "-- ",
        "\u2014 ",
    ]
    bodies = (
        [name]
        + [
            name[:k] + sp + name[k:]
            for k, ch in enumerate(name)
            if ch == "-"
            for sp in (" ", "\u00a0")
        ]
        + [name[: k + 1] + " " + name[k + 1 :] for k, ch in enumerate(name) if ch == "-"]
    )
    return st.builds(lambda p, b: p + b, st.sampled_from(prefixes), st.sampled_from(bodies))


def short_variants(letter: str) -> st.SearchStrategy[str]:
    return st.sampled_from(["-" + letter, "- " + letter, *(d + letter for d in DASHES)])


@st.composite
def rules(draw: st.DrawFn) -> tuple[list[Word], dict[str, object]]:
    """A valid CLUSTERIP line as words, and what it must import as."""
    vip = f"10.{draw(st.integers(0, 255))}.{draw(st.integers(0, 255))}.{draw(st.integers(1, 254))}"
    iface = draw(st.sampled_from(["eth0", "eth-1", "ens3.100", "br-lan", "bond0"]))
    total = draw(st.integers(1, 16))
    node = draw(st.integers(1, total))
    proto, ports = draw(
        st.sampled_from([(None, ()), ("tcp", (80,)), ("udp", (53, 123)), ("sctp", ())])
    )
    mode = draw(st.none() | st.sampled_from(config.HASHMODES))
    multicast = st.integers(0, 2**48 - 2).map(lambda n: n | 1 << 40)  # low bit of first byte
    mac = draw(st.none() | multicast.filter(lambda n: n != 2**48 - 1))
    seed = draw(st.none() | st.integers(0, 2**32 - 1))
    prefix = draw(st.sampled_from(["iptables -A INPUT", "sudo iptables -I INPUT 1", "-A INPUT"]))
    words = [Word(w, w.startswith("-")) for w in prefix.split()]
    words += [Word("-d", True), Word(vip), Word("-i", True), Word(iface)]
    if proto:
        words += [Word("-p", True), Word(proto)]
    if len(ports) == 1:
        words += [Word("--dport", True), Word(str(ports[0]))]
    elif ports:
        words += [Word("-m", True), Word("multiport"), Word("--dports", True)]
        words += [Word(",".join(map(str, ports)))]
    if draw(st.booleans()):
        words += [Word("-m", True), Word("comment"), Word("--comment", True), Word('"web vip"')]
    words += [Word("-j", True), Word("CLUSTERIP"), Word("--new", True)]
    words += [Word("--total-nodes", True), Word(str(total)), Word("--local-node", True)]
    words += [Word(str(node))]
    mac_text = None
    if mac is not None:
        mac_text = ":".join(f"{b:02x}" for b in mac.to_bytes(6, "big"))
        shown = mac_text.upper().replace(":", draw(st.sampled_from([":", "-"])))
        words += [Word("--clustermac", True), Word(shown)]
    if mode:
        words += [Word("--hashmode", True), Word(mode)]
    if seed is not None:
        words += [Word("--hash-init", True), Word(str(seed))]
    want = dict(
        vip=ipaddress.IPv4Address(vip),
        interface=iface,
        total_nodes=total,
        local_nodes=(node,),
        protocol=proto or "all",
        dports=ports,
        hashmode=mode or "sourceip",
        clustermac=mac_text or config.derive_mac(ipaddress.IPv4Address(vip)),
        seed=config.derive_seed(ipaddress.IPv4Address(vip)) if seed is None else seed,
    )
    return words, want


def damage(draw: st.DrawFn, words: list[Word]) -> str:
    out: list[str] = []
    for k, word in enumerate(words):
        text = word.text
        if word.option and text.startswith("--"):
            text = draw(long_variants(text[2:]))
        elif word.option:
            text = draw(short_variants(text[1:]))
        elif text in config.HASHMODES and "-" in text and draw(st.booleans()):
            text = text.replace("-", draw(st.sampled_from(["- ", " -", " - ", "\u2013 "])), 1)
        elif "-" in text and draw(st.booleans()):
            text = text.replace("-", draw(st.sampled_from(DASHES)))  # MAC, interface, hashmode
        elif text == '"web vip"':
            text = draw(
                st.sampled_from(['"web vip"', "\u201cweb vip\u201d", "\u2018web vip\u2019"])
            )
        if k:
            out.append(draw(st.sampled_from(SPACES)))
        out.append(text)
    prompt = (
        draw(st.sampled_from(["", "$ ", "# ", "root@node1:~# "])) if words[0].text != "-A" else ""
    )
    return prompt + "".join(out)


@settings(max_examples=100, deadline=None)
@given(rules(), st.data())
def test_typographic_damage_changes_nothing(
    case: tuple[list[Word], dict[str, object]], data: st.DataObject
) -> None:
    words, want = case
    clean = " ".join(w.text for w in words)
    (cfg,) = import_lines([clean])
    assert {key: getattr(cfg, key) for key in want} == want
    messy = damage(data.draw, words)
    assert import_lines([messy]) == [cfg], messy
    text = render_toml([cfg])
    assert config.parse_document(tomllib.loads(text)) == [cfg]
