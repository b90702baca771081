"""IP set contents in ipset's own spelling, and ``ipset restore`` scripts.

Members are canonicalised the way ``ipset save`` prints them back (after
normalising both sides), so desired and read-back values compare equal:
``10.0.0.1/32`` for nets, ``10.0.0.1,tcp:80`` for ip,port members.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from vppagent.dataplane.iptables.model import IPSetKey, IPSetValue
from vppagent.dataplane.iptables.names import temp_ipset_name
from vppagent.model.updates import IPSetType

NET = "hash:net"
IP_PORT = "hash:ip,port"
MAXELEM = 1048576
HASHSIZE = 1024
_PROTO_NAMES = {6: "tcp", 17: "udp", 132: "sctp", 136: "udplite"}
_PROTO_NUMBERS = {v: k for k, v in _PROTO_NAMES.items()}


def ipset_kind(t: IPSetType) -> str:
    return IP_PORT if t is IPSetType.IP_AND_PORT else NET


def canonical_net(member: str, family: int) -> list[str]:
    """A CIDR as ipset stores it; ``/0`` (which hash:net refuses) becomes two halves."""
    net = ipaddress.ip_network(member.strip(), strict=False)
    if net.version != family:
        return []
    if net.prefixlen == 0:
        return [str(n) for n in net.subnets(new_prefix=1)]
    return [str(net)]


def canonical_ip_port(member: str, family: int) -> list[str]:
    """``ip,proto:port`` with proto as a number or name → ``ip,tcp:80``."""
    ip_text, _, rest = member.strip().partition(",")
    proto_text, _, port_text = rest.partition(":")
    ip = ipaddress.ip_address(ip_text.strip("[]"))
    if ip.version != family:
        return []
    proto = int(proto_text) if proto_text.isdigit() else _PROTO_NUMBERS.get(proto_text.lower())
    if proto not in _PROTO_NAMES:
        return []   # a port is meaningless for other protocols: never matches
    return [f"{ip},{_PROTO_NAMES[proto]}:{int(port_text)}"]


def set_value(kind: str, members: Iterable[str], family: int, maxelem: int = MAXELEM) -> IPSetValue:
    canon = canonical_ip_port if kind == IP_PORT else canonical_net
    out: set[str] = set()
    for m in members:
        out.update(canon(m, family))
    return IPSetValue(kind, frozenset(out), maxelem)


def _create(name: str, value: IPSetValue, family: int) -> str:
    fam = "inet" if family == 4 else "inet6"
    return f"create {name} {value.kind} family {fam} hashsize {HASHSIZE} maxelem {value.maxelem}"


def write_script(key: IPSetKey, new: IPSetValue, old: IPSetValue | None) -> list[str]:
    """Lines for ``ipset restore -exist`` that bring ``key`` from ``old`` to ``new``.

    Same type and parameters: add/del only the difference. Otherwise fill a
    temporary set and swap it in, so the live set is never seen half-filled.
    """
    name = key.name
    if old is not None and old.kind == new.kind and old.maxelem == new.maxelem:
        lines = [f"del {name} {m}" for m in sorted(old.members - new.members)]
        lines += [f"add {name} {m}" for m in sorted(new.members - old.members)]
        return lines
    if old is None:
        # Usually absent; if a stale copy of the same type exists, -exist keeps
        # the create quiet and the flush drops what it held.
        return [_create(name, new, key.family), f"flush {name}"] + [f"add {name} {m}" for m in sorted(new.members)]
    tmp = temp_ipset_name(name)
    return [
        _create(tmp, new, key.family), f"flush {tmp}",
        *[f"add {tmp} {m}" for m in sorted(new.members)],
        f"swap {tmp} {name}", f"destroy {tmp}",
    ]


def destroy_script(key: IPSetKey) -> list[str]:
    return [f"destroy {key.name}"]
