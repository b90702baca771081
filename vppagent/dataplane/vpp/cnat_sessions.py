"""Reading cnat sessions back (the conntrack of VPP's service NAT).

kube-proxy must delete stale UDP conntrack entries when a backend goes
away.  With cnat that is VPP's job: removing a path from a translation (an
update without it, or deleting the translation) marks the path's tracker
for deletion, and cnat's scanner (every ``session-cleanup-timeout``, 1 s by
default) expires every session still pointing at it, UDP and TCP alike.
There is no API to delete one session, and ``cnat_session_purge`` must never
be used: in VPP 26.10 it also deletes every translation.  So the agent only
updates translations; this module lets tests and operators check that no
session towards a removed backend is left (``stale_sessions``).

VPP 26.10 encodes the two ports of a dumped session in the wrong byte order
(``cnat_5tuple_encode`` converts network to host order where it should do
the opposite); ``Session`` undoes that.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable

from vppagent.dataplane.service_plan import Backend


def _swap16(port: int) -> int:
    return ((port & 0xFF) << 8) | (port >> 8)


@dataclass(frozen=True)
class Session:
    """One cnat session as seen at its lookup point: packets from
    ``src:sport`` to ``dst:dport``."""

    src: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address
    dport: int
    protocol: int
    flags: int

    @classmethod
    def from_details(cls, d: Any) -> "Session":
        t = d.session.tuple
        return cls(ipaddress.ip_address(str(t.addr[0])), _swap16(int(t.port[0])),
                   ipaddress.ip_address(str(t.addr[1])), _swap16(int(t.port[1])),
                   int(t.ip_proto), int(d.session.flags))

    def involves(self, ip: Any, port: int) -> bool:
        return (self.src == ip and self.sport == port) or (self.dst == ip and self.dport == port)


def sessions(conn: Any) -> list[Session]:
    return [Session.from_details(d) for d in conn.dump("cnat_session_dump")]


def stale_sessions(conn: Any, backends: Iterable[Backend], protocol: int = 17) -> list[Session]:
    """Sessions of ``protocol`` that still go to, or come from, one of
    ``backends`` (e.g. ``service_plan.stale_udp_backends``)."""
    wanted = [(b.ip, b.port) for b in backends]
    return [s for s in sessions(conn)
            if s.protocol == protocol and any(s.involves(ip, port) for ip, port in wanted)]
