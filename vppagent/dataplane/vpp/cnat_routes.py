"""ICMP-prohibit host routes: how services without endpoints reject.

cnat cannot reject: a translation needs at least one path (VPP 26.10 even
crashes on an empty one) and has no "refuse" action.  The FIB can: a route
whose path type is ICMP_PROHIBIT sends "destination unreachable,
administratively prohibited" back to the sender, which Linux turns into an
immediate EHOSTUNREACH for TCP connects and connected UDP sockets alike
(ICMP_UNREACH's "host unreachable" is not fatal for UDP sockets).  VPP
rate-limits these errors: in 26.10 its ip4-null node keeps only 4 hash
slots per 100 ms, so a burst of rejects gets some silently dropped (TCP
then retries its SYN a second later).

Two uses (see ``services``):

- a guard host route on every service-only address (ClusterIPs, externalIPs
  and LoadBalancer IPs that are not node addresses): cnat translations
  interpose on it (``is_real_ip = 1``), so ports that have backends are
  translated and every other packet to the address (a port without
  endpoints, an unknown port) falls through to the guard and is refused;
- the reject-sink prefix: per-port rejects on node addresses (which must not
  be guarded) translate to an address inside it; cnat's return session
  rewrites the ICMP error back to the address the client used.

Routes carry no tag: ours are the ones recorded in the ``OwnershipStore``.
"""

from __future__ import annotations

import ipaddress
import logging
from typing import Any, Iterable, Sequence, cast

from vppagent.dataplane.vpp.cnat_model import (
    NotApplied, RejectRoute, RejectRouteKey, is_reject_route, reject_route_args,
)
from vppagent.dataplane.vpp.cnat_ownership import OwnershipStore
from vppagent.reconciler import Descriptor, Op, OpKind
from vppagent.vpp.errors import VppApiError

log = logging.getLogger(__name__)

KIND = "reject-route"


def ident(key: Any) -> str:
    return f"{key.table_id}|{key.prefix}"


class RejectRouteDescriptor(Descriptor[RejectRouteKey, RejectRoute]):
    """``ip_route_add_del`` of one ICMP-prohibit host route."""

    kind = RejectRouteKey
    name = "cnat-reject-route"

    def __init__(self, conn: Any, *, store: OwnershipStore | None = None,
                 tables: Iterable[int] = (0,)) -> None:
        super().__init__()
        self.conn = conn
        self.store = store if store is not None else OwnershipStore()
        self.tables = tuple(tables)

    def create(self, key: RejectRouteKey, value: RejectRoute) -> None:
        self._single(Op(OpKind.CREATE, key, value))

    def delete(self, key: RejectRouteKey, value: RejectRoute, metadata: Any) -> None:
        self._single(Op(OpKind.DELETE, key, value))

    def dump(self) -> dict[RejectRouteKey, tuple[RejectRoute, None]]:
        self.store.bind(self.conn.vpe_pid)
        mine = self.store.items(KIND)
        found = {k for k in self._read() if ident(k) in mine}
        self.store.replace(KIND, ((ident(k), "") for k in found))
        return {k: (RejectRoute(), None) for k in found}

    def batch_apply(self, ops: Sequence[Op]) -> list[Any]:
        with self.store.batch():           # one ownership-file write per batch, not per object
            return self._batch_apply(ops)

    def _batch_apply(self, ops: Sequence[Op]) -> list[Any]:
        calls = [("ip_route_add_del", reject_route_args(cast(RejectRouteKey, op.key), op.kind is not OpKind.DELETE))
                 for op in ops]
        try:
            self.conn.pipeline(calls)
        except VppApiError as e:
            if e.index is None:
                raise
            return self._settle(ops, e)
        for op in ops:
            self._done(op)
        return [None] * len(ops)

    def _single(self, op: Op) -> None:
        result = self.batch_apply([op])[0]
        if isinstance(result, BaseException):
            raise result

    def _done(self, op: Op) -> None:
        if op.kind is OpKind.DELETE:
            self.store.discard(KIND, ident(op.key))
        else:
            self.store.add(KIND, ident(op.key))

    def _read(self) -> set[RejectRouteKey]:
        out: set[RejectRouteKey] = set()
        for table in self.tables:
            for is_ip6 in (False, True):
                for d in self.conn.dump("ip_route_v2_dump", src=0,
                                        table={"table_id": table, "is_ip6": is_ip6}):
                    if is_reject_route(d.route):
                        out.add(RejectRouteKey(ipaddress.ip_network(str(d.route.prefix)), table))
        return out

    def _settle(self, ops: Sequence[Op], error: VppApiError) -> list[Any]:
        """Learn from VPP which ops of a failed pipeline took effect."""
        present = self._read()
        results: list[Any] = []
        for i, op in enumerate(ops):
            ok = (op.key not in present) if op.kind is OpKind.DELETE else (op.key in present)
            if ok:
                self._done(op)
                results.append(None)
            else:
                results.append(error if i == error.index else NotApplied(
                    f"{op.kind.value} {op.key}: not in VPP after a failure earlier in the same "
                    f"pipeline ({error})"))
        return results
