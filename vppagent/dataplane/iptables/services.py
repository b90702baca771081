"""Services in kube-proxy's iptables layout, with ``cali-`` names.

nat ``cali-SERVICES`` (from PREROUTING and OUTPUT) matches each frontend and
jumps to its ``cali-svc-<hash>`` chain, which picks a backend chain
``cali-sep-<hash>`` with ``-m statistic --probability 1/(n-i)`` (after
``-m recent`` checks when session affinity is on); the backend chain marks
hairpin traffic for masquerade and DNATs. NodePorts hang off the last rule of
``cali-SERVICES`` (``--dst-type LOCAL``), so no list of node addresses is
needed. A frontend without usable backends is rejected in the filter table
(TCP reset / ICMP port unreachable), never silently dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from vppagent.dataplane.iptables.marks import Marks, hexmark
from vppagent.dataplane.iptables.match import proto_name
from vppagent.dataplane.iptables.model import ChainKey, Rules
from vppagent.dataplane.iptables.names import short_hash
from vppagent.dataplane.iptables.static import NODEPORTS, SERVICES, SVC_REJECT
from vppagent.dataplane.service_plan import Backend, Frontend, FrontendKind


def frontend_chain(f: Frontend) -> str:
    ident = f"{f.service}|{f.port_name}|{f.kind.value}|{f.ip}|{f.port}|{f.protocol}|{f.family}"
    return "cali-svc-" + short_hash(ident, 16)


def backend_chain(f: Frontend, b: Backend) -> str:
    """Shared by a service port's frontends, so affinity is per service port (as kube-proxy)."""
    return "cali-sep-" + short_hash(f"{f.service}|{f.port_name}|{f.protocol}|{b.ip}|{b.port}", 16)


def _host(ip: object, family: int) -> str:
    return f"{ip}/{32 if family == 4 else 128}"


def _port_match(f: Frontend, port: int) -> str:
    p = proto_name(f.protocol)
    return f"-p {p} -m {p} --dport {port}"


def _reject_with(f: Frontend) -> str:
    if f.protocol == 6:
        return "tcp-reset"
    return "icmp-port-unreachable" if f.family == 4 else "icmp6-port-unreachable"


@dataclass
class ServiceRender:
    """One service's own chains plus its entries in the shared chains."""

    chains: dict[ChainKey, Rules] = field(default_factory=dict)
    services: dict[int, list[str]] = field(default_factory=dict)
    nodeports: dict[int, list[str]] = field(default_factory=dict)
    rejects: dict[int, list[str]] = field(default_factory=dict)


def render_service(frontends: Iterable[Frontend], marks: Marks) -> ServiceRender:
    out = ServiceRender()
    q = hexmark(marks.masq, marks.masq)
    for f in frontends:
        fam = f.family
        if f.rejects:
            where = "-m addrtype --dst-type LOCAL" if f.ip is None else f"-d {_host(f.ip, fam)}"
            out.rejects.setdefault(fam, []).append(
                f"{where} {_port_match(f, f.port)} -j REJECT --reject-with {_reject_with(f)}")
            continue
        svc = frontend_chain(f)
        if f.ip is None:
            out.nodeports.setdefault(fam, []).append(f"{_port_match(f, f.port)} -j {svc}")
        else:
            out.services.setdefault(fam, []).append(f"-d {_host(f.ip, fam)} {_port_match(f, f.port)} -j {svc}")
        bodies: list[str] = []
        if f.masquerade_external:
            bodies.append(f"-j MARK --set-xmark {q}")
        elif f.local_only and f.kind is not FrontendKind.CLUSTER_IP:
            # Local policy keeps external clients' addresses; the node's own
            # connections (source 127.0.0.1 or a node address) still need SNAT.
            bodies.append(f"-m addrtype --src-type LOCAL -j MARK --set-xmark {q}")
        seps = [backend_chain(f, b) for b in f.backends]
        if f.affinity_timeout:
            bodies += [f"-m recent --name {s} --rcheck --seconds {f.affinity_timeout} --reap -j {s}" for s in seps]
        n = len(seps)
        for i, s in enumerate(seps):
            if i < n - 1:
                bodies.append(f"-m statistic --mode random --probability {1.0 / (n - i):.10f} -j {s}")
            else:
                bodies.append(f"-j {s}")
        out.chains[ChainKey(fam, "nat", svc)] = Rules.render(svc, bodies)
        for b, s in zip(f.backends, seps):
            dest = f"{b.ip}:{b.port}" if fam == 4 else f"[{b.ip}]:{b.port}"
            recent = f"-m recent --name {s} --set " if f.affinity_timeout else ""
            out.chains[ChainKey(fam, "nat", s)] = Rules.render(s, [
                f"-s {_host(b.ip, fam)} -j MARK --set-xmark {q}",     # hairpin: a backend reaching itself
                f"-p {proto_name(f.protocol)} {recent}-j DNAT --to-destination {dest}",
            ])
    return out


def shared_chains(renders: Iterable[ServiceRender], families: Iterable[int]) -> dict[ChainKey, Rules]:
    """``cali-SERVICES``, ``cali-NODEPORTS`` and ``cali-svc-reject`` from every service."""
    renders = list(renders)
    out: dict[ChainKey, Rules] = {}
    for fam in families:
        services = [line for r in renders for line in r.services.get(fam, ())]
        nodeports = [line for r in renders for line in r.nodeports.get(fam, ())]
        rejects = [line for r in renders for line in r.rejects.get(fam, ())]
        services.append(f"-m addrtype --dst-type LOCAL -j {NODEPORTS}")
        out[ChainKey(fam, "nat", SERVICES)] = Rules.render(SERVICES, services)
        out[ChainKey(fam, "nat", NODEPORTS)] = Rules.render(NODEPORTS, nodeports)
        out[ChainKey(fam, "filter", SVC_REJECT)] = Rules.render(SVC_REJECT, rejects)
    return out
