"""Shared base of the Linux dataplanes (iptables, nftables): pod wiring.

``LinuxDataplane`` implements the CNI hooks of ``Dataplane`` with
:class:`vppagent.dataplane.linux.pods.LinuxPodNetwork` (veth pairs, /32 and
/128 routes, proxy ARP) so that a policy backend only has to inherit it::

    from vppagent.dataplane.linux import LinuxDataplane

    class IptablesDataplane(LinuxDataplane):
        def on_update(self, update, state): ...

pyroute2 is imported on the first wiring call, not here, so rendering code
and its unit tests stay cheap to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vppagent.dataplane.base import ReconcilingDataplane, WiredWorkload, WorkloadWiring
from vppagent.model.state import DataplaneState
from vppagent.model.updates import RouteRemove, RouteUpdate

if TYPE_CHECKING:  # pragma: no cover
    from vppagent.dataplane.linux.pods import LinuxPodNetwork

__all__ = ["LinuxDataplane"]


class LinuxDataplane(ReconcilingDataplane):
    """A ``ReconcilingDataplane`` whose pods are veths in the agent's netns.

    ``pod_mtu`` is the MTU used when a wiring asks for none (0); ``vxlan_mtu``
    the overlay device's (0: the underlay's minus the VXLAN overhead). Routes
    to other nodes' blocks (``routes.NodeRoutes``) are keys of this
    dataplane's reconciler; subclasses pass ``RouteUpdate``/``RouteRemove``
    to ``route_changed``.
    """

    pod_mtu: int = 1500
    vxlan_mtu: int = 0
    _pod_network: "LinuxPodNetwork | None" = None

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from vppagent.dataplane.linux.routes import NodeRoutes

        self.node_routes = NodeRoutes(self)

    def route_changed(self, update: RouteUpdate | RouteRemove, state: DataplaneState) -> None:
        """Program (or remove) the route to another node's block, already folded into ``state``."""
        entry = state.routes.get(update.id)
        self.node_routes.changed(update.id, entry.route if entry is not None else None)

    @property
    def pod_network(self) -> "LinuxPodNetwork":
        if self._pod_network is None:
            from vppagent.dataplane.linux.pods import LinuxPodNetwork

            self._pod_network = LinuxPodNetwork(default_mtu=self.pod_mtu)
        return self._pod_network

    def wire_workload(self, wiring: WorkloadWiring) -> WiredWorkload:
        return self.pod_network.wire(wiring)

    def unwire_workload(self, wiring: WorkloadWiring) -> None:
        self.pod_network.unwire(wiring)

    def check_workload(self, wiring: WorkloadWiring) -> list[str]:
        return self.pod_network.check(wiring)
