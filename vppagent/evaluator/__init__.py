"""Reference evaluator: model + packet → verdict per direction, with the reason."""

from __future__ import annotations

from typing import Iterable

from vppagent.calc.graph import CalcGraph
from vppagent.evaluator.engine import DirectionVerdict, Evaluator, Verdict
from vppagent.evaluator.packet import Packet, Target, parse_icmp, parse_target
from vppagent.model.errors import ValidationError
from vppagent.model.resources import IPAddress, Resource
from vppagent.model.state import DataplaneState


def build_evaluator(resources: Iterable[Resource]) -> Evaluator:
    """Run the calculation for every node and fold its output for evaluation."""
    graph = CalcGraph(node_name=None)
    graph.apply_all(resources)
    state = DataplaneState()
    state.apply_all(graph.flush())
    return Evaluator(state)


def _addresses(ev: Evaluator, target: Target, field: str) -> list[IPAddress]:
    if target.ip is not None:
        return [target.ip]
    ns, pod = target.name.split("/", 1)
    ep = ev.workload_by_name(ns, pod)
    if ep is None:
        raise ValidationError(field, f"no pod {target.name} with addresses (status.podIPs) in the manifests")
    return [n.network_address for n in ep.nets]


def make_packet(ev: Evaluator, src: str, dst: str, icmp: str | None = None,
                family: int | None = None) -> Packet:
    """Build a packet from CLI-style names (``ns/pod``, IPs, ``:PORT/PROTO``)."""
    s = parse_target(src, "from", allow_port=False)
    d = parse_target(dst, "to", allow_port=icmp is None)
    src_ips, dst_ips = _addresses(ev, s, "from"), _addresses(ev, d, "to")
    families = [f for f in (family, 4, 6) if f is not None]
    for fam in families:
        a = [ip for ip in src_ips if ip.version == fam]
        b = [ip for ip in dst_ips if ip.version == fam]
        if a and b:
            break
    else:
        raise ValidationError("to", f"{src} and {dst} have no address family in common")
    if icmp is not None:
        icmp_type, code = parse_icmp(icmp, "icmp")
        return Packet(a[0], b[0], 1 if fam == 4 else 58, icmp_type=icmp_type, icmp_code=code)
    return Packet(a[0], b[0], d.protocol or 6, dst_port=d.port)


__all__ = [
    "DirectionVerdict", "Evaluator", "Packet", "Verdict", "build_evaluator", "make_packet",
]
