"""What the datapath of one VIP should hold on this node: the one `Ownership`.

Buckets are numbered 1..modulus everywhere, as the datapath's hash computes them (nft's
`jhash ... mod N offset 1`). The pure core (clusterip.core.vipnode) decides it; static mode
edits it with take/release; clusterip.render turns it into nft rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from clusterip.config import ConfigError


@dataclass(frozen=True)
class Ownership:
    """Which buckets (1..modulus) this node serves.

    owned     new connections and established flows;
    guarded   subset of owned: moved here from a live node, whose flows stay there; mid-flow TCP
              without a socket here is dropped, never answered with a RST;
    orphaned  subset of owned: taken over from a dead node; mid-flow TCP without a socket here
              gets the stack's RST at once;
    draining  only this node's established flows (the bucket moved away, its flows stay);
    kept      (client address, client port) of flows other live nodes keep while they drain:
              dropped here whatever their bucket, never accepted nor reset.
    """

    modulus: int
    owned: frozenset[int] = field(default_factory=frozenset)
    draining: frozenset[int] = field(default_factory=frozenset)
    orphaned: frozenset[int] = field(default_factory=frozenset)
    kept: frozenset[tuple[str, int]] = field(default_factory=frozenset)
    guarded: frozenset[int] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name, values in (
            ("owned", self.owned),
            ("draining", self.draining),
            ("orphaned", self.orphaned),
            ("guarded", self.guarded),
        ):
            bad = [b for b in values if not 1 <= b <= self.modulus]
            if bad:
                raise ConfigError(f"bad {name} bucket {bad[0]}: expected 1 to {self.modulus}")
        if self.owned & self.draining:
            raise ConfigError(
                f"buckets {sorted(self.owned & self.draining)} both owned and draining"
            )
        for name, values in (("orphaned", self.orphaned), ("guarded", self.guarded)):
            if not values <= self.owned:
                raise ConfigError(f"{name} buckets {sorted(values - self.owned)} are not owned")
        if self.orphaned & self.guarded:
            raise ConfigError(
                f"buckets {sorted(self.orphaned & self.guarded)} both orphaned and guarded"
            )

    @classmethod
    def of(
        cls,
        modulus: int,
        owned: Iterable[int] = (),
        draining: Iterable[int] = (),
        orphaned: Iterable[int] = (),
        guarded: Iterable[int] = (),
    ) -> Ownership:
        return cls(
            modulus,
            frozenset(owned),
            frozenset(draining),
            frozenset(orphaned),
            guarded=frozenset(guarded),
        )

    def take(self, bucket: int, *, guard: bool = True) -> Ownership:
        """Own `bucket`; guarded (unless `guard` is False) while the previous owner's flows
        may still be alive elsewhere."""
        if bucket in self.owned:
            return self
        guarded = self.guarded | {bucket} if guard else self.guarded
        return replace(
            self, owned=self.owned | {bucket}, draining=self.draining - {bucket}, guarded=guarded
        )

    def release(self, bucket: int, *, keep_flows: bool = True) -> Ownership:
        draining = (
            self.draining | {bucket} if keep_flows and bucket in self.owned else self.draining
        )
        return replace(
            self,
            owned=self.owned - {bucket},
            draining=draining,
            orphaned=self.orphaned - {bucket},
            guarded=self.guarded - {bucket},
        )

    @property
    def in_transition(self) -> bool:
        """Whether any bucket needs the socket check at prerouting (the ip table)."""
        return bool(self.draining or self.guarded or self.orphaned)
