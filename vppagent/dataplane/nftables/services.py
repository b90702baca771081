"""Service frontends (from ``service_plan``) in kube-proxy's nftables style.

A frontend is an element of a verdict map keyed by ``daddr . l4proto .
dport`` (NodePorts: ``l4proto . dport`` behind ``fib daddr type local``)
pointing at a per-frontend chain that picks a backend with ``numgen random``
and jumps to a per-backend chain doing the DNAT. Session affinity keeps one
dynamic set per backend: a client found in backend k's set goes straight to
backend k, and every new connection through backend k refreshes its entry.
A frontend without usable backends is an element of the reject maps instead,
looked up in the filter hooks so clients are refused at once.
"""

from __future__ import annotations

from vppagent.dataplane.nftables import names
from vppagent.dataplane.nftables.objects import (
    Chain, Element, NftKey, NftSet, NftValue, SetDecl, chain_key, elem_key, set_key,
)
from vppagent.dataplane.service_plan import Frontend, FrontendKind


def frontend_id(fe: Frontend) -> str:
    """Stable identity of a frontend across updates (not of its backends)."""
    return f"{fe.service}|{fe.port_name}|{fe.kind.value}|{fe.ip}|{fe.port}|{fe.protocol}|{fe.family}"


def frontend_element(fe: Frontend, *, rejecting: bool) -> NftKey:
    if fe.kind is FrontendKind.NODE_PORT:
        map_name = (names.svc_noep_nodeports if rejecting else names.svc_nodeports)(fe.family)
        return elem_key(map_name, f"{fe.protocol} . {fe.port}")
    map_name = (names.svc_noep if rejecting else names.svc_ips)(fe.family)
    return elem_key(map_name, f"{fe.ip} . {fe.protocol} . {fe.port}")


def render_frontend(fe: Frontend) -> dict[NftKey, NftValue]:
    fid = frontend_id(fe)
    if fe.rejects:
        return {frontend_element(fe, rejecting=True): Element(f"goto {names.SVC_REJECT}")}
    addr = "ip" if fe.family == 4 else "ip6"
    masq = chain_key(names.MARK_MASQ)
    out: dict[NftKey, NftValue] = {}
    rules: list[str] = []
    refs: set[NftKey] = set()
    if fe.masquerade_external:
        # externalTrafficPolicy: Cluster → external clients are masqueraded (kube-proxy).
        rules.append(f"jump {names.MARK_MASQ}")
        refs.add(masq)
    backends: list[str] = []
    for b in fe.backends:
        sep = names.backend_chain(fid, b.address)
        sep_rules = [f"{addr} saddr {b.ip} jump {names.MARK_MASQ}"]       # hairpin
        sep_refs = {masq}
        if fe.affinity_timeout:
            aff = names.affinity_set(fid, b.address, fe.affinity_timeout)
            out[set_key(aff)] = NftSet(SetDecl(f"ipv{fe.family}_addr", timeout=fe.affinity_timeout))
            sep_rules.append(f"update @{aff} {{ {addr} saddr }}")
            sep_refs.add(set_key(aff))
            rules.append(f"{addr} saddr @{aff} goto {sep}")
            refs.add(set_key(aff))
        sep_rules.append(f"meta l4proto {fe.protocol} counter dnat {addr} to {b.address}")
        out[chain_key(sep)] = Chain(tuple(sep_rules), refs=frozenset(sep_refs))
        refs.add(chain_key(sep))
        backends.append(sep)
    if len(backends) == 1:
        rules.append(f"goto {backends[0]}")
    else:
        choices = ", ".join(f"{i} : goto {sep}" for i, sep in enumerate(backends))
        rules.append(f"numgen random mod {len(backends)} vmap {{ {choices} }}")
    svc = names.service_chain(fid)
    out[chain_key(svc)] = Chain(tuple(rules), refs=frozenset(refs))
    out[frontend_element(fe, rejecting=False)] = Element(f"goto {svc}")
    return out


def conntrack_filters(fe: Frontend, backend_ip: str | None) -> list[str]:
    """``conntrack -D`` arguments for UDP flows through ``fe`` (to ``backend_ip`` if given)."""
    args = ["-f", "ipv4" if fe.family == 4 else "ipv6", "-p", "udp"]
    if fe.kind is FrontendKind.NODE_PORT:
        args += ["--orig-port-dst", str(fe.port)]
    else:
        args += ["--orig-dst", str(fe.ip), "--orig-port-dst", str(fe.port)]
    if backend_ip is not None:
        args += ["--dst-nat", backend_ip]
    return args
