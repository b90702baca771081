"""Loading the conformance set: manifests + packets + expected verdicts.

Every dataplane test replays these same cases with real packets and compares
what arrives with the reference evaluator's verdict.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONFORMANCE_DIR = Path(__file__).parent / "conformance"


@dataclass(frozen=True)
class Case:
    file: str
    name: str
    manifests: tuple[Any, ...]
    src: str
    dst: str
    icmp: str | None
    expect: str
    egress: str | None
    ingress: str | None
    decided_by: str | None

    @property
    def id(self) -> str:
        return f"{self.file}::{self.name}"


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(CONFORMANCE_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text())
        manifests = tuple(data["manifests"])
        for c in data["cases"]:
            icmp = c.get("icmp")
            cases.append(Case(
                file=path.stem, name=c["name"], manifests=manifests, src=str(c["from"]), dst=str(c["to"]),
                icmp=None if icmp is None else str(icmp), expect=c["expect"], egress=c.get("egress"),
                ingress=c.get("ingress"), decided_by=c.get("decided_by"),
            ))
    return cases
