"""The `clusterip` command: CLUSTERIP's vocabulary, nftables underneath.

- clusterip.cli.static: up, down, status, take, release, which, import-iptables
- clusterip.cli.agent: agent, drain, resume, weight (the membership agent and its control)
- clusterip.cli.lab: the one-machine lab (only with the `lab` extra installed)
"""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Sequence

import click

from clusterip.cli import agent as agent_cli
from clusterip.cli import doctor as doctor_cli
from clusterip.cli import static
from clusterip.cli.options import EXIT_KERNEL, fail
from clusterip.config import ConfigError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="clusterip")
def cli() -> None:
    """clusterip: load-balancer-less server clusters on Linux (CLUSTERIP on nftables)."""


for _command in (
    static.up,
    static.down,
    static.status,
    static.take,
    static.release,
    static.which,
    static.import_iptables,
    agent_cli.agent,
    agent_cli.drain,
    agent_cli.resume,
    agent_cli.weight,
    agent_cli.stop,
    doctor_cli.doctor,
):
    cli.add_command(_command)


def _register_lab() -> None:
    """The lab needs the `lab` extra (rich, for the demo's live view): without it, no command."""
    try:
        from clusterip.cli.lab import lab
    except ImportError:
        return
    cli.add_command(lab)


# Commands that read or change the kernel's netfilter state, or talk to the agent's
# root-only control socket: without CAP_NET_ADMIN they fail one way, with one line.
NEEDS_ADMIN = {"up", "down", "status", "take", "release", "agent", "drain", "resume", "weight",
               "stop", "doctor"}  # fmt: skip
CAP_NET_ADMIN = 12


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _subcommand(args: Sequence[str]) -> str | None:
    words = [a for a in args if not a.startswith("-")]
    return words[0] if words else None


def main(argv: Sequence[str] | None = None) -> None:
    from clusterip.nft import FirewallError
    from clusterip.xdp.spec import XdpError

    _register_lab()
    args = list(argv) if argv is not None else sys.argv[1:]
    command = _subcommand(args)
    wants_help = any(a in ("-h", "--help") for a in args)
    if command in NEEDS_ADMIN and not wants_help and not _has_net_admin():
        fail(
            f"`clusterip {command}` needs root (CAP_NET_ADMIN: it reads and changes the "
            "kernel's nftables state): run it with sudo",
            EXIT_KERNEL,
        )
    try:
        cli.main(args=args, standalone_mode=False)
    except ConfigError as exc:
        fail(str(exc))
    except click.exceptions.UsageError as exc:
        fail(exc.format_message())
    except click.exceptions.Abort:
        fail("aborted", 130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except FirewallError as exc:
        fail(f"the kernel refused the change (nothing was changed): {exc}", EXIT_KERNEL)
    except XdpError as exc:  # the kernel or driver refused the XDP pre-filter (`--xdp on`)
        fail(f"XDP pre-filter: {exc} (nothing was changed; `--xdp auto` falls back)", EXIT_KERNEL)
    except PermissionError as exc:
        fail(f"permission denied ({exc}): run as root", EXIT_KERNEL)
    except ipaddress.AddressValueError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"system call failed: {exc}", EXIT_KERNEL)
