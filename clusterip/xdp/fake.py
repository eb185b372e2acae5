"""An in-memory XDP filter for unit tests: XdpFilter's logic (buckets, change's ordering)
without the kernel. Every map write and attachment goes into a shared journal, beside the
firewall's transactions, so tests can check the order of the two."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from ipaddress import ip_address

from clusterip.xdp.filter import Attachment, XdpFilter
from clusterip.xdp.spec import Address, Buckets, XdpError, XdpVip


class FakeKernel:
    """What the fakes share: the journal, the program attached per interface, and what
    the driver can do (`native`: False makes auto fall back; `refuse`: attach fails)."""

    def __init__(self, journal: list[str] | None = None, *, native: bool = True) -> None:
        self.journal = journal if journal is not None else []
        self.native = native
        self.refuse: str | None = None
        self.attached: dict[str, FakeFilter] = {}

    def make(self, ifname: str, vips: list[XdpVip]) -> FakeFilter:
        return FakeFilter(ifname, vips, self)

    def adopt(self, ifname: str) -> FakeFilter | None:
        return self.attached.get(ifname)

    def detach(self, ifname: str) -> bool:
        self.journal.append(f"xdp detach {ifname}")
        return self.attached.pop(ifname, None) is not None


class FakeFilter(XdpFilter):
    def __init__(self, ifname: str, vips: Sequence[XdpVip], kernel: FakeKernel) -> None:
        super().__init__(ifname, vips, own_mac="02:00:00:00:00:01")
        self.kernel = kernel

    def load(self) -> None:
        self.prog_fd = 1
        self._state = {v.vip: Buckets() for v in self.vips}

    def attach(self, mode: str = "auto", *, persist: bool = False) -> Attachment:
        k = self.kernel
        if k.refuse:
            raise XdpError(k.refuse)
        if not k.native and mode in ("auto", "native"):
            self.attachment = Attachment(None, f"driver fake of {self.ifname} has no native XDP")
            return self.attachment
        how = "native" if k.native else "generic"
        self.attachment = Attachment(how, "driver fake", persistent=persist)
        k.attached[self.ifname] = self
        k.journal.append(f"xdp attach {how} {','.join(str(v.vip) for v in self.vips)}")
        return self.attachment

    def take_over(self, old: XdpFilter) -> Attachment:
        assert old.attachment is not None
        self.attachment, old.attachment = old.attachment, None
        self.kernel.attached[self.ifname] = self
        self.kernel.journal.append(f"xdp swap {','.join(str(v.vip) for v in self.vips)}")
        return self.attachment

    def set_buckets(
        self,
        vip: Address | str,
        passing: Iterable[int] | Buckets,
        modulus: int | None = None,
        owned: Iterable[int] = (),
    ) -> None:
        new = passing if isinstance(passing, Buckets) else Buckets.of(modulus or 0, passing, owned)
        key = ip_address(vip) if isinstance(vip, str) else vip
        self._index(key)
        self._state[key] = new
        self.kernel.journal.append(f"xdp {key} {describe(new)}")

    def counters(self) -> dict[Address, dict[str, int]]:
        return {v.vip: {"dropped": 1, "passed": 2, "owned": 3, "forged": 0} for v in self.vips}

    def close(self) -> None:
        if self.attachment is not None and not self.attachment.persistent:
            self.kernel.attached.pop(self.ifname, None)
            self.attachment = None


def describe(b: Buckets) -> str:
    """`pass 1,2 owned 3 of 4` (the rest drop); `pass all` while the modulus is not set."""
    if not b.modulus:
        return "pass all"
    out = f"pass {_ids(b.passing)} owned {_ids(b.owned)} of {b.modulus}"
    return out


def _ids(values: frozenset[int]) -> str:
    return ",".join(str(v) for v in sorted(values)) or "-"
