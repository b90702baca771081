"""What the gRPC server needs from the daemon: the ``AgentBackend`` protocol.

The daemon implements :class:`AgentBackend` and hands it to
:func:`vppagent.api.server.serve`. Everything crossing this boundary is a
model object (``vppagent.model.updates``) or one of the small frozen
dataclasses below; protobuf never leaks into the daemon.

Error contract for every method:

* ``ValidationError`` -> the RPC fails with ``INVALID_ARGUMENT`` and the
  error text (which names the field). ``apply``/``remove`` must be all or
  nothing: raise before changing anything.
* ``CniError`` (CNI methods) -> ``successful=false`` with its message in the
  reply, the way Calico's CNI plugin expects dataplane failures
  (e.g. "out of buffers").
* anything else -> ``INTERNAL`` (Dataplane service) or ``successful=false``
  (CNI service), logged with a traceback.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Union, runtime_checkable

from vppagent.model.resources import IPAddress, IPNetwork
from vppagent.model.updates import (
    HostEndpointRemove, IPPoolRemove, IPSetRemove, PolicyRemove, ProfileRemove, ServiceRemove,
    Update, WorkloadEndpointRemove,
)

if TYPE_CHECKING:  # pragma: no cover
    from vppagent.api.sync_hub import SyncHub

IPInterface = Union[ipaddress.IPv4Interface, ipaddress.IPv6Interface]

#: A typed key naming what to remove: the model's removal updates.
RemoveKey = Union[
    IPSetRemove, PolicyRemove, ProfileRemove, WorkloadEndpointRemove, HostEndpointRemove,
    ServiceRemove, IPPoolRemove,
]

#: Keys of the dict returned by ``AgentBackend.status()``; all optional.
STATUS_FIELDS: Mapping[str, str] = {
    "ready": "bool: agent ready (health SERVING when true)",
    "agent_state": "str: e.g. starting, running, degraded, stopping",
    "datastore_sync_state": "str: e.g. wait-for-ready, resync, in-sync",
    "dataplane_type": "str: vpp, iptables, nftables, ebpf",
    "dataplane_in_sync": "bool: the dataplane has applied the in-sync snapshot",
    "counts": "dict[str,int]: workload_endpoints, host_endpoints, policies, ipsets, profiles,"
              " services, pools (defaults to hub.counts())",
    "errors": "list[str]: current problems",
    "uptime_seconds": "float",
    "node_name": "str",
    "version": "str",
}


# ---------------------------------------------------------------- status events

@dataclass(frozen=True)
class StatusEvent:
    """A component changed state (streamed by the WatchStatus RPC)."""

    time: float          # seconds since the epoch
    component: str       # agent, datastore, dataplane, vpp, cni...
    state: str
    message: str = ""


@runtime_checkable
class EventSubscription(Protocol):
    """A stream of status events; see ``vppagent.api.sync_hub.StatusEventBus``."""

    @property
    def closed(self) -> bool: ...

    def get(self, timeout: float | None = None) -> StatusEvent | None:
        """Next event, or None after ``timeout`` seconds or once closed."""
        ...

    def close(self) -> None: ...


# ---------------------------------------------------------------- CNI

class CniError(Exception):
    """A CNI operation failed for a reason the caller should see verbatim."""


@dataclass(frozen=True)
class CniIP:
    """One container address: ``address`` carries the prefix length (10.65.0.3/32)."""

    address: IPInterface
    gateway: IPAddress | None = None


@dataclass(frozen=True)
class CniPort:
    name: str
    protocol: int          # IP protocol number (6 TCP, 17 UDP, 132 SCTP)
    port: int
    host_port: int = 0
    host_ip: IPAddress | None = None


@dataclass(frozen=True)
class CniWorkload:
    """Calico's WorkloadIDs: identity of the workload endpoint being wired."""

    name: str = ""          # WorkloadEndpoint resource name
    namespace: str = ""
    labels: tuple[tuple[str, str], ...] = ()          # sorted by key
    annotations: tuple[tuple[str, str], ...] = ()     # sorted by key
    endpoint: str = ""
    node: str = ""
    orchestrator: str = ""
    pod: str = ""
    ports: tuple[CniPort, ...] = ()


@dataclass(frozen=True)
class CniAddRequest:
    container_id: str
    netns: str
    interface_name: str                 # inside the container, e.g. eth0
    host_interface_name: str = ""       # desired host-side name (hint, may be empty)
    mtu: int = 0                        # 0: the agent's default
    allow_ip_forwarding: bool = False
    ips: tuple[CniIP, ...] = ()
    routes: tuple[IPNetwork, ...] = ()
    workload: CniWorkload = field(default_factory=CniWorkload)
    dataplane_options: tuple[tuple[str, str], ...] = ()   # sorted by key

    @property
    def options(self) -> dict[str, str]:
        return dict(self.dataplane_options)


@dataclass(frozen=True)
class CniAddResult:
    host_interface_name: str
    container_mac: str = ""


@dataclass(frozen=True)
class CniDelRequest:
    container_id: str
    netns: str                          # may be empty on DEL (netns already gone)
    interface_name: str
    dataplane_options: tuple[tuple[str, str], ...] = ()

    @property
    def options(self) -> dict[str, str]:
        return dict(self.dataplane_options)


@dataclass(frozen=True)
class CniCheckRequest:
    container_id: str
    netns: str
    interface_name: str
    dataplane_options: tuple[tuple[str, str], ...] = ()

    @property
    def options(self) -> dict[str, str]:
        return dict(self.dataplane_options)


# ---------------------------------------------------------------- backend

@runtime_checkable
class AgentBackend(Protocol):
    """Implemented by the daemon; driven by the gRPC server's worker threads.

    Every method may be called concurrently from several threads.
    """

    #: The state behind the Sync RPC; Apply/Remove requests are pre-checked
    #: against it (``hub.check``) before ``apply``/``remove`` is called.
    hub: "SyncHub"

    def apply(self, updates: list[Update]) -> None:
        """Apply computed updates; all or nothing; raise ValidationError if invalid.

        A typical implementation is ``self.hub.publish(updates, validate=True)``.
        """
        ...

    def remove(self, keys: list[RemoveKey]) -> None:
        """Remove resources by typed key; all or nothing like ``apply``."""
        ...

    def status(self) -> dict[str, Any]:
        """Status fields; see ``STATUS_FIELDS`` (missing keys take defaults)."""
        ...

    def dump(self) -> tuple[list[Update], str]:
        """(desired state as updates, the dataplane's own dump as a JSON string)."""
        ...

    def status_events(self) -> EventSubscription:
        """A new subscription to status events (closed by the server when done)."""
        ...

    def cni_add(self, req: CniAddRequest) -> CniAddResult:
        """Wire a pod; idempotent for the same container id. Raise CniError on failure."""
        ...

    def cni_del(self, req: CniDelRequest) -> None:
        """Unwire a pod; succeeds when there is nothing to delete."""
        ...

    def cni_check(self, req: CniCheckRequest) -> list[str]:
        """Differences between what was added and what the dataplane holds (empty: fine)."""
        ...
