"""cnat source NAT: the node's SNAT addresses, what is never NATed, and
the per-interface roles its Kubernetes policy needs.

cnat applies its SNAT policy in the ``cnat-output`` feature, enabled per
interface with ``feature_cnat_enable_disable`` (together with the input
DNAT feature).  With ``CNAT_POLICY_K8S`` a new flow leaving an interface is
source-NATed to the node address when

- it came in on an interface marked ``INCLUDE_V4``/``INCLUDE_V6`` (a pod of a
  ``natOutgoing`` pool) and its destination is not in an excluded prefix
  (pools, service range, node addresses): natOutgoing;
- it came in and goes out on interfaces not marked ``POD``: external traffic
  to a remote backend, so the reply comes back through this node;
- its source equals its destination: a pod reaching itself through a
  service (hairpin), which Linux would otherwise drop as a martian;

and never when it goes out an interface marked ``HOST`` (punt to Linux).

``cnat_set_snat_addresses_v2`` is sent with ``NO_CLIENT``: without it VPP
installs a return-only cnat client on the node address, which silently
drops everything sent to that address that is not a return flow, NodePorts
included.  ``sw_if_index`` is always ~0 (a zero would take the addresses of
interface 0).  The entry is never removed once set: deleting it in VPP
26.10 also frees the port allocator of FIB 0 and a new entry does not bring
it back, so every translation that masquerades would drop its traffic
(exhausted ports) until VPP restarts.  Removing the SNAT config therefore
only forgets the entry (and removes the exclusions).  VPP cannot dump
exclusions, the policy or interface roles, so those are known from our
``OwnershipStore`` only.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, cast

from vppagent.dataplane.vpp.cnat_model import INDEX_INVALID, host_prefix
from vppagent.dataplane.vpp.cnat_ownership import OwnershipStore
from vppagent.model.resources import IPAddress, IPNetwork
from vppagent.reconciler import Descriptor, Key, Op, OpKind
from vppagent.vpp.errors import VppApiError

SNAT_POLICY_K8S = 2                   # vl_api_cnat_snat_policies_t
SNAT_FLAG_NO_CLIENT = 2               # vl_api_cnat_snat_policy_flags_t
SNAT_FLAG_USE_AS_DEFAULT = 4
TABLE_INCLUDE_V4, TABLE_INCLUDE_V6, TABLE_POD, TABLE_HOST = 0, 1, 2, 3   # vl_api_cnat_snat_policy_table_t

log = logging.getLogger(__name__)

Call = tuple[str, Mapping[str, Any]]


# ------------------------------------------------------------------- config

@dataclass(frozen=True)
class SnatConfig:
    """The node's masquerade addresses (one per family; None: that family is
    never source-NATed) and the prefixes traffic to which keeps its source:
    every IP pool (pod to pod), the service ranges and the node addresses."""

    ip4: ipaddress.IPv4Address | None = None
    ip6: ipaddress.IPv6Address | None = None
    pool_cidrs: tuple[IPNetwork, ...] = ()
    service_cidrs: tuple[IPNetwork, ...] = ()
    node_addresses: tuple[IPAddress, ...] = ()

    @classmethod
    def for_node(cls, node_addresses: Iterable[IPAddress], *, pool_cidrs: Iterable[IPNetwork] = (),
                 service_cidrs: Iterable[IPNetwork] = ()) -> "SnatConfig":
        """The first node address of each family masquerades."""
        addrs = tuple(node_addresses)
        v4 = next((a for a in addrs if a.version == 4), None)
        v6 = next((a for a in addrs if a.version == 6), None)
        return cls(v4, v6, tuple(pool_cidrs), tuple(service_cidrs), addrs)  # type: ignore[arg-type]

    def address(self, version: int) -> IPAddress | None:
        return self.ip4 if version == 4 else self.ip6

    def excluded(self) -> set[IPNetwork]:
        out = {ipaddress.ip_network(p, strict=False) for p in (*self.pool_cidrs, *self.service_cidrs)}
        for a in (*self.node_addresses, self.ip4, self.ip6):
            if a is not None:
                out.add(host_prefix(a))
        return out


# --------------------------------------------------------------------- keys

@dataclass(frozen=True, order=True)
class SnatKey:
    """Any key the SNAT descriptor handles."""


@dataclass(frozen=True, order=True)
class SnatAddressesKey(SnatKey):
    """The node's single cnat SNAT entry (fib 0) and its policy."""

    def __str__(self) -> str:
        return "cnat snat addresses"


@dataclass(frozen=True)
class SnatAddresses:
    ip4: ipaddress.IPv4Address | None = None
    ip6: ipaddress.IPv6Address | None = None


@dataclass(frozen=True, order=True)
class SnatExcludeKey(SnatKey):
    """A destination prefix that is never source-NATed."""

    prefix: IPNetwork

    def __str__(self) -> str:
        return f"cnat snat exclude {self.prefix}"


@dataclass(frozen=True)
class SnatExclude:
    pass


@dataclass(frozen=True, order=True)
class CnatInterfaceKey(SnatKey):
    sw_if_index: int

    def __str__(self) -> str:
        return f"cnat interface {self.sw_if_index}"


@dataclass(frozen=True)
class CnatInterface:
    """cnat's view of one interface.

    - pod interfaces: ``feature=True, pod=True`` (+ ``nat_outgoing={4}`` /
      ``{6}`` for pods of natOutgoing pools): pod clients are translated on
      input and hairpin flows are source-NATed on output;
    - the uplink: nothing (services are matched in the FIB, which keeps
      masquerade and rejects for external clients exact); ``feature=True``
      only when natOutgoing is needed (see ``services`` for what that costs);
    - a host tap that punts to Linux: ``host=True``.

    ``after`` names keys (the interface itself) this must wait for; it is
    not written to VPP."""

    feature: bool = False
    pod: bool = False
    host: bool = False
    nat_outgoing: frozenset[int] = frozenset()
    after: tuple[Key, ...] = field(default=(), compare=False)

    def tables(self) -> set[int]:
        out = set()
        if self.pod:
            out.add(TABLE_POD)
        if self.host:
            out.add(TABLE_HOST)
        if 4 in self.nat_outgoing:
            out.add(TABLE_INCLUDE_V4)
        if 6 in self.nat_outgoing:
            out.add(TABLE_INCLUDE_V6)
        return out

    def to_json(self) -> str:
        return json.dumps({"feature": self.feature, "pod": self.pod, "host": self.host,
                           "nat_outgoing": sorted(self.nat_outgoing)})

    @classmethod
    def from_json(cls, text: str) -> "CnatInterface":
        d = json.loads(text)
        return cls(bool(d["feature"]), bool(d["pod"]), bool(d["host"]), frozenset(d["nat_outgoing"]))


def desired_snat(snat: SnatConfig | None) -> dict[Any, Any]:
    """The SNAT entry and its exclusions (nothing when ``snat`` is None or
    has no address)."""
    if snat is None or (snat.ip4 is None and snat.ip6 is None):
        return {}
    out: dict[Any, Any] = {SnatAddressesKey(): SnatAddresses(snat.ip4, snat.ip6)}
    for prefix in sorted(snat.excluded(), key=lambda p: (p.version, p)):
        out[SnatExcludeKey(prefix)] = SnatExclude()
    return out


# -------------------------------------------------------------------- calls

def snat_addresses_calls(value: SnatAddresses) -> list[Call]:
    """Set the SNAT entry and select the K8S policy."""
    return [
        ("cnat_set_snat_addresses_v2", {
            "snat_ip4": str(value.ip4 or "0.0.0.0"), "snat_ip6": str(value.ip6 or "::"),
            "sw_if_index": INDEX_INVALID, "fwd_fib_index": 0, "ret_fib_index": 0,
            "flags": SNAT_FLAG_USE_AS_DEFAULT | SNAT_FLAG_NO_CLIENT}),
        ("cnat_set_snat_policy", {"policy": SNAT_POLICY_K8S}),
    ]


def exclude_calls(prefix: IPNetwork, is_add: bool) -> list[Call]:
    return [("cnat_snat_policy_add_del_exclude_pfx", {"is_add": int(is_add), "prefix": str(prefix)})]


def interface_calls(sw_if_index: int, old: CnatInterface | None, new: CnatInterface | None) -> list[Call]:
    """What changes one interface from ``old`` to ``new`` (None: nothing)."""
    old = old or CnatInterface()
    new = new or CnatInterface()
    calls: list[Call] = []
    for table in sorted(old.tables() - new.tables()):
        calls.append(("cnat_snat_policy_add_del_if", {"sw_if_index": sw_if_index, "is_add": 0, "table": table}))
    if old.feature != new.feature:
        calls.append(("feature_cnat_enable_disable", {"sw_if_index": sw_if_index,
                                                       "enable_disable": new.feature}))
    for table in sorted(new.tables() - old.tables()):
        calls.append(("cnat_snat_policy_add_del_if", {"sw_if_index": sw_if_index, "is_add": 1, "table": table}))
    return calls


# --------------------------------------------------------------- descriptor

KIND_ADDRESSES, KIND_EXCLUDE, KIND_INTERFACE = "snat-addresses", "snat-exclude", "cnat-interface"


class CnatSnatDescriptor(Descriptor[SnatKey, Any]):
    """The SNAT entry, its exclusions and interface roles."""

    kind = SnatKey
    name = "cnat-snat"

    def __init__(self, conn: Any, *, store: OwnershipStore | None = None) -> None:
        super().__init__()
        self.conn = conn
        self.store = store if store is not None else OwnershipStore()

    def create(self, key: Any, value: Any) -> None:
        self._run(Op(OpKind.CREATE, key, value))

    def update(self, key: Any, old: Any, new: Any, metadata: Any) -> None:
        self._run(Op(OpKind.UPDATE, key, new, old=old, metadata=metadata))

    def delete(self, key: Any, value: Any, metadata: Any) -> None:
        self._run(Op(OpKind.DELETE, key, value, metadata=metadata))

    def dependencies(self, key: Any, value: Any) -> Iterable[Key]:
        if isinstance(key, SnatExcludeKey):
            return (SnatAddressesKey(),)
        if isinstance(key, CnatInterfaceKey):
            deps: list[Key] = list(value.after)
            if value.tables():
                deps.append(SnatAddressesKey())
            return deps
        return ()

    def dump(self) -> dict[Any, tuple[Any, None]]:
        self.store.bind(self.conn.vpe_pid)
        out: dict[Any, tuple[Any, None]] = {}
        if self.store.has(KIND_ADDRESSES, "default"):
            actual = self._read_addresses()
            if actual is None:
                self.store.discard(KIND_ADDRESSES, "default")
            else:
                out[SnatAddressesKey()] = (actual, None)
        if SnatAddressesKey() in out:      # exclusions live in the entry: gone with it
            for prefix in self.store.items(KIND_EXCLUDE):
                out[SnatExcludeKey(ipaddress.ip_network(prefix))] = (SnatExclude(), None)
        else:
            self.store.replace(KIND_EXCLUDE, ())
        existing = {int(d.sw_if_index) for d in self.conn.dump("sw_interface_dump", sw_if_index=INDEX_INVALID)}
        for idx, text in self.store.items(KIND_INTERFACE).items():
            if int(idx) in existing:
                out[CnatInterfaceKey(int(idx))] = (CnatInterface.from_json(text), None)
            else:
                self.store.discard(KIND_INTERFACE, idx)
        return out

    # ---------------------------------------------------------------- helpers

    def _read_addresses(self) -> SnatAddresses | None:
        try:
            r = self.conn.call("cnat_get_snat_addresses")
        except VppApiError as e:
            if e.name == "FEATURE_DISABLED":
                return None
            raise
        v4, v6 = ipaddress.ip_address(str(r.snat_ip4)), ipaddress.ip_address(str(r.snat_ip6))
        return SnatAddresses(None if int(v4) == 0 else v4, None if int(v6) == 0 else v6)  # type: ignore[arg-type]

    def _run(self, op: Op) -> None:
        calls = self._calls(op)
        if calls:
            self.conn.pipeline(calls)
        self._record(op)

    def _calls(self, op: Op) -> Sequence[Call]:
        key, gone = cast(SnatKey, op.key), op.kind is OpKind.DELETE
        if isinstance(key, SnatAddressesKey):
            if gone:
                log.warning("leaving the cnat SNAT entry (%s) in VPP: removing it breaks masquerading "
                            "translations until VPP restarts", op.value)
                return []
            return snat_addresses_calls(op.value)
        if isinstance(key, SnatExcludeKey):
            return exclude_calls(key.prefix, not gone)
        assert isinstance(key, CnatInterfaceKey)
        old = op.old if op.kind is OpKind.UPDATE else (op.value if gone else None)
        return interface_calls(key.sw_if_index, old, None if gone else op.value)

    def _record(self, op: Op) -> None:
        key, gone = cast(SnatKey, op.key), op.kind is OpKind.DELETE
        if isinstance(key, SnatAddressesKey):
            kind, ident, data = KIND_ADDRESSES, "default", ""
        elif isinstance(key, SnatExcludeKey):
            kind, ident, data = KIND_EXCLUDE, str(key.prefix), ""
        else:
            assert isinstance(key, CnatInterfaceKey)
            kind, ident, data = KIND_INTERFACE, str(key.sw_if_index), op.value.to_json()
        if gone:
            self.store.discard(kind, ident)
            if isinstance(key, SnatAddressesKey):
                self.store.replace(KIND_EXCLUDE, ())
        else:
            self.store.add(kind, ident, data)
