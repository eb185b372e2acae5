"""The `clusterip` command: CLUSTERIP's vocabulary, nftables underneath.

- clusterip.cli.static: up, down, status, take, release, which, import-iptables
- clusterip.cli.agent: agent, drain, resume, weight (the membership agent and its control)
- clusterip.cli.lab: the one-machine lab (only with the `lab` extra installed)
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Sequence

import click

from clusterip.cli import agent as agent_cli
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
):
    cli.add_command(_command)


def _register_lab() -> None:
    """The lab needs the `lab` extra (rich, for the demo's live view): without it, no command."""
    try:
        from clusterip.cli.lab import lab
    except ImportError:
        return
    cli.add_command(lab)


def main(argv: Sequence[str] | None = None) -> None:
    from clusterip.nft import FirewallError

    _register_lab()
    try:
        cli.main(args=list(argv) if argv is not None else None, standalone_mode=False)
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
    except PermissionError as exc:
        fail(f"permission denied ({exc}): run as root", EXIT_KERNEL)
    except ipaddress.AddressValueError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"system call failed: {exc}", EXIT_KERNEL)
