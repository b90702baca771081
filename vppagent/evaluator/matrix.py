"""A connectivity matrix: every pod to every pod's named ports, with reasons."""

from __future__ import annotations

import json

from vppagent.evaluator.engine import Evaluator, Verdict
from vppagent.evaluator.packet import Packet
from vppagent.model.resources import protocol_name


def connectivity(ev: Evaluator) -> list[tuple[str, str, Verdict]]:
    """(source pod, destination pod:port/proto, verdict) for every pair and named port."""
    pods = sorted(ev.state.workload_endpoints.values(), key=lambda e: (e.namespace, e.pod))
    out = []
    for src in pods:
        for dst in pods:
            if src is dst:
                continue
            for port in dst.ports or ():
                for s_net in src.nets:
                    d_net = next((n for n in dst.nets if n.version == s_net.version), None)
                    if d_net is None:
                        continue
                    pkt = Packet(s_net.network_address, d_net.network_address, port.protocol,
                                 dst_port=port.port)
                    target = f"{dst.namespace}/{dst.pod}:{port.port}/{protocol_name(port.protocol)}"
                    out.append((f"{src.namespace}/{src.pod}", target, ev.evaluate(pkt)))
                    break
    return out


def print_matrix(ev: Evaluator, as_json: bool = False) -> None:
    rows = connectivity(ev)
    if as_json:
        print(json.dumps([{"from": s, "to": d, **v.to_json()} for s, d, v in rows], indent=2))
        return
    sources = sorted({s for s, _, _ in rows})
    targets = sorted({d for _, d, _ in rows})
    width = max((len(t) for t in targets), default=10)
    corner = "to \\ from"
    print(f"{corner:<{width}}  " + "  ".join(f"{s:<14}" for s in sources))
    table = {(s, d): v for s, d, v in rows}
    for t in targets:
        cells = []
        for s in sources:
            v = table.get((s, t))
            cells.append(f"{'-' if v is None else v.verdict:<14}")
        print(f"{t:<{width}}  " + "  ".join(cells))
    print()
    for s, d, v in rows:
        print(f"{s} -> {d}: {v.verdict.upper()} (decided by {v.deciding.decided_by})")
