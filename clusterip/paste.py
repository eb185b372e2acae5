"""Text as people paste it from web pages -> shell-like tokens.

Undoes typographic damage (unicode dashes, spaces and quotes; invisible characters), shell
prompts, comments, iptables-save framing and line continuations, then splits each command into
shell words the way the shell would.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

from clusterip.config import ConfigError

_DASHES = "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"
_SPACES = "\t\u00a0\u1680\u202f\u205f\u3000" + "".join(map(chr, range(0x2000, 0x200B)))
_INVISIBLE = "\u00ad\u200b\u200c\u200d\u2060\ufeff"
_DQUOTES = "\u201c\u201d\u201e\u201f\u2033\u00ab\u00bb"
_SQUOTES = "\u2018\u2019\u201a\u201b\u2032\u2039\u203a"
_MAP = {**dict.fromkeys(_DASHES, "-"), **dict.fromkeys(_SPACES, " "), **dict.fromkeys(_INVISIBLE)}
_TRANSLATE = str.maketrans(_MAP | dict.fromkeys(_DQUOTES, '"') | dict.fromkeys(_SQUOTES, "'"))

_WIDTH = 72

_PROMPT = re.compile(r"^(?:\[[^\]]*\][#$]|[\w.-]+@[\w.-]+(?::\S*)?[#$]|[$>])\s+")
_COMMAND_START = re.compile(
    r"^(?:sudo\s+)*(?:\S*/)?ip6?tables(?:-legacy|-nft)?(?:\s|$)|^sudo(?:\s|$)", re.I
)
_COMMAND_ONLY = re.compile(r"^(?:sudo\s*)*(?:(?:\S*/)?ip6?tables(?:-legacy|-nft)?)?$", re.I)
_RULE_START = re.compile(r"^-\s*-?\s*(?:[A-Z](?:\s|$)|(?:append|insert|replace|delete)\b)")
_HAS_JUMP = re.compile(r"(?:^|\s)-\s*-?\s*(?:j|jump)\s")
_SAVE_FRAMING = re.compile(r"^(?:\*\w+|:\S+\s+\S+(?:\s+\[\d+:\d+\])?|COMMIT)$")


def shorten(words: Sequence[str], at: int | None = None) -> str:
    """The words, shortened around word `at` to about _WIDTH characters, for error messages."""
    lo = min(at or 0, len(words) - 1)
    hi, grown = lo + 1, True
    while grown:  # whole words around `at`, alternately right and left, up to _WIDTH
        grown = hi < len(words) and len(" ".join(words[lo : hi + 1])) <= _WIDTH
        hi += grown
        left = lo > 0 and len(" ".join(words[lo - 1 : hi])) <= _WIDTH
        lo, grown = lo - left, grown or left
    return ("... " if lo else "") + " ".join(words[lo:hi]) + (" ..." if hi < len(words) else "")


def logical_lines(args: Sequence[str]) -> list[str]:
    """Physical lines of all arguments -> one text per command (prompts, continuations undone)."""
    rules: list[str] = []
    joining = False  # the previous line ended with a backslash
    for arg in args:
        for raw in str(arg).translate(_TRANSLATE).splitlines():
            line = raw.strip()
            if not line:
                joining = False
                continue
            if joining:
                line = re.sub(r"^>\s+", "", line)  # the shell's continuation prompt
            else:
                stripped = strip_prompt(line)
                if stripped is None:
                    continue
                line = stripped
            line = strip_shell_comment(line)
            ends_with_backslash = line.endswith("\\")
            if ends_with_backslash:
                line = line[:-1].rstrip()
            starts_new = _COMMAND_START.match(line) or (
                _RULE_START.match(line) and rules and _HAS_JUMP.search(rules[-1])
            )
            if rules and (joining or not starts_new or _COMMAND_ONLY.match(rules[-1])):
                rules[-1] = f"{rules[-1]} {line}".strip()
            elif line:
                rules.append(line)
            joining = ends_with_backslash
    return [rule for rule in rules if rule]


def strip_prompt(line: str) -> str | None:
    """Drop a `$ `, `# `, `user@host:~# ` prompt; None for comments and iptables-save framing."""
    if _SAVE_FRAMING.match(line):
        return None
    if line.startswith("#"):
        rest = line[1:].strip()
        if line[1:2] == " " and (_COMMAND_START.match(rest) or _RULE_START.match(rest)):
            return rest
        return None  # a shell comment, or a commented-out rule
    match = _PROMPT.match(line)
    return line[match.end() :] if match else line


def strip_shell_comment(line: str) -> str:
    """Cut an unquoted ` # comment` (as the shell would)."""
    quote = ""
    for pos, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#" and pos > 0 and line[pos - 1] == " ":
            return line[:pos].rstrip()
    return line


def tokenize(text: str) -> list[list[str]]:
    """Shell words of one logical line, split into commands at `;` and `&&`."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = ""
    try:
        words = list(lexer)
    except ValueError:
        shown = repr(shorten(text.split()))
        raise ConfigError(f"unbalanced quote in {shown}: close the quote") from None
    commands: list[list[str]] = [[]]
    for word in words:
        if word in (";", "&&"):
            commands.append([])
        elif word and set(word) <= set(";&|"):
            shown = repr(shorten(words, words.index(word)))
            raise ConfigError(f"shell syntax {word!r} in {shown}: paste only iptables commands")
        else:
            commands[-1].append(word)
    return [cmd for cmd in commands if cmd]
