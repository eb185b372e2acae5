"""The lab's errors (shared by net, netops and records)."""

from __future__ import annotations


class LabError(RuntimeError):
    """A lab could not be built, found or used; the message says which and why."""


class NoSuchLab(LabError):
    pass
