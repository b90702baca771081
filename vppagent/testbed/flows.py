"""Measure many flows at once with real packets and set them beside the reference evaluator.

A flow is "this place opens TCP (or sends UDP) to that pod's port". Every
destination port gets one listener; all probes run in parallel, so a matrix
where half the flows are dropped costs one timeout, not one per flow. A flow
counts as allowed only when the intended pod answered.
"""

from __future__ import annotations

import ipaddress
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping, Sequence

from vppagent.evaluator import Evaluator, Packet, Verdict
from vppagent.evaluator.matrix import connectivity
from vppagent.model.resources import PROTOCOL_NUMBERS
from vppagent.testbed.cni import Pod
from vppagent.testbed.traffic import Outcome

if TYPE_CHECKING:  # pragma: no cover
    from vppagent.testbed.node import Node, Place


@dataclass(frozen=True)
class Flow:
    src: "Place"
    dst: Pod
    port: int
    proto: str = "tcp"

    @property
    def source(self) -> str:
        return self.src.key if isinstance(self.src, Pod) else str(self.src)

    @property
    def target(self) -> str:
        return f"{self.dst.key}:{self.port}/{self.proto.upper()}"


def measure(node: "Node", flows: Sequence[Flow], timeout: float = 1.0, *,
            expect: Sequence[bool] | None = None, retry_timeout: float = 3.0) -> list[Outcome]:
    """One outcome per flow. With ``expect``, flows that disagree are probed once more with a
    longer timeout, so a busy machine does not turn a slow answer into a "deny"."""
    for f in flows:
        if f.proto not in ("tcp", "udp"):
            raise ValueError(f"{f.target}: only TCP and UDP flows can be measured")
    listeners = {}
    try:
        for f in flows:
            key = (f.dst.netns, f.port, f.proto)
            if key not in listeners:
                listeners[key] = node.listen(f.dst, f.port, f.proto, label=f.dst.key)
        outcomes = _probe_all(node, flows, timeout)
        if expect is not None:
            again = [i for i, (o, e) in enumerate(zip(outcomes, expect)) if o.ok != e]
            for i, o in zip(again, _probe_all(node, [flows[i] for i in again], retry_timeout)):
                outcomes[i] = o
        return outcomes
    finally:
        for listener in listeners.values():
            listener.close()


def _probe_all(node: "Node", flows: Sequence[Flow], timeout: float) -> list[Outcome]:
    def one(f: Flow) -> Outcome:
        out = node.send(f.src, f.dst, f.port, f.proto, timeout)
        if out.ok and out.label != f.dst.key:
            return Outcome(False, label=out.label, peer=out.peer, error=f"answered by {out.label}",
                           elapsed=out.elapsed)
        return out

    if not flows:
        return []
    with ThreadPoolExecutor(max_workers=min(32, len(flows))) as pool:
        return list(pool.map(one, flows))


def expected(ev: Evaluator, src_ip: str, flow: Flow) -> Verdict:
    """The reference evaluator's verdict for ``flow`` sent from ``src_ip``."""
    return ev.evaluate(Packet(ipaddress.ip_address(src_ip), ipaddress.ip_address(flow.dst.ip),
                              PROTOCOL_NUMBERS[flow.proto.upper()], dst_port=flow.port))


def matrix_flows(ev: Evaluator, pods: Mapping[str, Pod]) -> list[tuple[Flow, Verdict]]:
    """Every pod to every other pod's named ports (``vppagent eval --matrix``), as flows."""
    out = []
    for src, target, verdict in connectivity(ev):
        if src not in pods:
            continue
        where, _, port_proto = target.rpartition(":")
        port, _, proto = port_proto.partition("/")
        if where in pods and proto.lower() in ("tcp", "udp"):
            out.append((Flow(pods[src], pods[where], int(port), proto.lower()), verdict))
    return out
