"""The shared secret: any bytes, at least 16, trailing whitespace ignored."""

from __future__ import annotations

import os
import stat

from clusterip.config import ConfigError

MIN_KEY = 16


def read_key(path: str, *, allow_readable: bool = False) -> bytes:
    """The key; refused if the file is readable by group or others (as ssh refuses a private
    key), unless `allow_readable`: anyone who reads it can forge heartbeats."""
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(1 << 16)
    except OSError as exc:
        raise ConfigError(f"cannot read key file {path!r}: {exc.strerror}") from None
    if not stat.S_ISREG(mode):
        raise ConfigError(f"bad key file {path!r}: not a regular file")
    if mode & 0o077 and not allow_readable:
        raise ConfigError(
            f"key file {path!r} is readable by group or others (mode {stat.S_IMODE(mode):04o}): "
            f"chmod 600 it, or set allow_readable_key = true (--allow-readable-key)"
        )
    key = data.rstrip(b" \t\r\n")
    if len(key) < MIN_KEY:
        raise ConfigError(
            f"bad key file {path!r}: {len(key)} bytes of key, at least {MIN_KEY} are needed"
        )
    return key
