"""Packet mark bits the rules use, carved out of a configurable mask.

Felix's scheme: *accept* (a policy allowed the packet), *pass* (skip the rest
of the tier), two *scratch* bits to OR/AND conditions that do not fit in one
iptables rule, and (for services) *masq* asking POSTROUTING to masquerade.
Bits are taken from the low end of the mask so other users of the mark
(kube-proxy's 0x4000, routing marks) keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MARK_MASK = 0xFFFF0000


@dataclass(frozen=True)
class Marks:
    accept: int
    pass_: int
    scratch0: int
    scratch1: int
    masq: int

    @classmethod
    def from_mask(cls, mask: int = DEFAULT_MARK_MASK) -> "Marks":
        bits = [1 << i for i in range(32) if mask & (1 << i)]
        if len(bits) < 5:
            raise ValueError(f"markMask {mask:#x} has {len(bits)} bits set; at least 5 are needed")
        return cls(*bits[:5])

    @property
    def policy_bits(self) -> int:
        """Bits cleared before evaluating an endpoint (everything but masq)."""
        return self.accept | self.pass_ | self.scratch0 | self.scratch1


def hexmark(value: int, mask: int) -> str:
    return f"{value:#x}/{mask:#x}"
