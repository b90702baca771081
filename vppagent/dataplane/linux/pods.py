"""Pod interfaces on Linux (the Calico veth model), with pyroute2.

A pod gets a veth pair: the host side ``cali…`` stays in the agent's netns
with the MAC ``ee:ee:ee:ee:ee:ee``, proxy ARP and a /32 (/128) route per pod
address; the other end is created directly inside the pod's netns under the
requested name, holds the host-prefix addresses and routes everything via the
link-local gateways 169.254.1.1 / fe80::ecee:eeff:feee:eeee. Static neighbour
entries on both sides mean no ARP/ND is needed before the first packet, and
proxy ARP / proxy NDP answer anyone who asks anyway.

Every call opens one netlink socket per namespace and runs no subprocess:
the pod side is configured from a thread that entered the pod's netns.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any, Iterable

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from vppagent.dataplane.base import WiredWorkload, WiringError, WorkloadWiring
from vppagent.dataplane.linux.netlink_ns import (
    NetnsGone, delete_link, get_link, link_kind, netns_exists, open_netns, run_in_netns, write_sysctl,
)

log = logging.getLogger(__name__)

HOST_MAC = "ee:ee:ee:ee:ee:ee"
GATEWAY_V4 = "169.254.1.1"
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"
IFF_UP = 0x1
NUD_PERMANENT = 0x80
NTF_PROXY = 0x08
RT_SCOPE_LINK = 253
MAIN_TABLE = 254

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


def _host_prefix(ip: IPInterface) -> IPInterface:
    return ipaddress.ip_interface(f"{ip.ip}/{ip.max_prefixlen}")


def _random_mac() -> str:
    """A random locally administered unicast MAC (set at creation: saves a read-back)."""
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, NetlinkError):
        return f"{os.strerror(exc.code) if exc.code else exc} (netlink error {exc.code})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror if not exc.filename else f"{exc.strerror}: {exc.filename}"
    return str(exc) or type(exc).__name__


@dataclass(frozen=True)
class _PodSide:
    index: int
    mac: str


class LinuxPodNetwork:
    """Wires, unwires and checks pod veths in the calling thread's netns (the node's)."""

    def __init__(self, default_mtu: int = 1500, enable_forwarding: bool = True) -> None:
        self.default_mtu = default_mtu
        self.enable_forwarding = enable_forwarding

    # ------------------------------------------------------------------ ADD

    def wire(self, wiring: WorkloadWiring) -> WiredWorkload:
        """Create (or re-converge) the pod's veth, addresses and routes.

        Idempotent for the same container; on failure everything this call
        created is removed and ``WiringError`` explains what went wrong. The
        common case (a new pod) costs about eight netlink requests.
        """
        ips = tuple(_host_prefix(ip) for ip in wiring.ips)
        mtu = wiring.mtu or self.default_mtu
        host_name, pod_name = wiring.host_interface_name, wiring.interface_name
        try:
            nsfd = open_netns(wiring.netns)
        except NetnsGone as exc:
            raise WiringError(f"cannot wire {host_name}: {exc.strerror}") from None
        created = False
        pod_mac = _random_mac()
        try:
            with IPRoute() as ipr:
                created = self._create_veth(ipr, host_name, pod_name, nsfd, mtu, pod_mac, wiring.netns, must=False)
                host = get_link(ipr, host_name)
                if not created:
                    if host is None:
                        raise WiringError(f"cannot create {pod_name} in {wiring.netns}: an interface with"
                                          " that name already exists there")
                    if not self._pair_matches(ipr, host, nsfd, pod_name):
                        log.info("replacing stale %s (not the veth of %s)", host_name, wiring.netns)
                        delete_link(ipr, host["index"])
                        created = self._create_veth(ipr, host_name, pod_name, nsfd, mtu, pod_mac, wiring.netns,
                                                    must=True)
                        host = get_link(ipr, host_name)
                if host is None:
                    raise WiringError(f"{host_name} vanished right after it was created")
                try:
                    self._configure_host_sysctls(host_name, ips)
                    fresh = (host.get_attr("IFLA_LINK"), pod_mac) if created else None
                    pod = run_in_netns(nsfd, lambda: self._configure_pod(pod_name, ips, mtu, fresh))
                    self._configure_host(ipr, host, mtu, ips, pod.mac, fresh=created)
                except Exception:
                    if created:
                        delete_link(ipr, host["index"])
                    raise
                return WiredWorkload(host_interface_name=host_name, host_mac=HOST_MAC, container_mac=pod.mac)
        except WiringError:
            raise
        except Exception as exc:
            raise WiringError(
                f"cannot wire {pod_name} in {wiring.netns} (host side {host_name}): {_describe(exc)}"
            ) from exc
        finally:
            os.close(nsfd)

    def _pair_matches(self, ipr: IPRoute, host: Any, nsfd: int, pod_name: str) -> bool:
        """Whether ``host`` is a veth whose peer is ``pod_name`` in the pod's netns."""
        if link_kind(host) != "veth":
            return False

        def peer() -> tuple[int, int | None] | None:
            with IPRoute() as pipr:
                link = get_link(pipr, pod_name)
                return None if link is None else (link["index"], link.get_attr("IFLA_LINK"))

        found = run_in_netns(nsfd, peer)
        return found is not None and found[1] == host["index"] and host.get_attr("IFLA_LINK") == found[0]

    @staticmethod
    def _create_veth(ipr: IPRoute, host_name: str, pod_name: str, nsfd: int, mtu: int, pod_mac: str,
                     netns: str, must: bool) -> bool:
        """Create the pair (host end up), the pod end directly in its netns; False if it exists."""
        try:
            ipr.link("add", ifname=host_name, kind="veth", address=HOST_MAC, mtu=mtu, state="up",
                     peer={"ifname": pod_name, "net_ns_fd": nsfd, "mtu": mtu, "address": pod_mac})
            return True
        except NetlinkError as exc:
            if exc.code != errno.EEXIST:
                raise
            if must:
                raise WiringError(f"cannot create {pod_name} in {netns}: an interface with that name"
                                  " already exists there") from None
            return False

    @staticmethod
    def _configure_host_sysctls(host_name: str, ips: Iterable[IPInterface]) -> None:
        has_v6 = any(ip.version == 6 for ip in ips)
        write_sysctl(f"net/ipv4/conf/{host_name}/proxy_arp", "1")
        write_sysctl(f"net/ipv4/neigh/{host_name}/proxy_delay", "0")
        write_sysctl(f"net/ipv4/conf/{host_name}/forwarding", "1")
        if has_v6:
            # DAD would keep the host's link-local (the pods' v6 gateway) tentative for a second.
            write_sysctl(f"net/ipv6/conf/{host_name}/accept_dad", "0")
            write_sysctl(f"net/ipv6/conf/{host_name}/accept_ra", "0")
            write_sysctl(f"net/ipv6/conf/{host_name}/proxy_ndp", "1")
            write_sysctl(f"net/ipv6/conf/{host_name}/forwarding", "1")

    @staticmethod
    def _configure_pod(pod_name: str, ips: tuple[IPInterface, ...], mtu: int,
                       fresh: tuple[int, str] | None) -> _PodSide:
        """Runs inside the pod's netns: addresses, gateway neighbours and routes.

        ``fresh`` is the pod end's (ifindex, MAC) when this call just created
        it (nothing to compare then); otherwise the interface is re-read and
        converged (MTU, stray addresses, link state).
        """
        with IPRoute() as ipr:
            has_v4, has_v6 = any(ip.version == 4 for ip in ips), any(ip.version == 6 for ip in ips)
            if has_v6:
                write_sysctl(f"net/ipv6/conf/{pod_name}/disable_ipv6", "0")
                write_sysctl(f"net/ipv6/conf/{pod_name}/accept_dad", "0")
            if fresh is not None:
                idx, mac = fresh
                ipr.link("set", index=idx, state="up")   # a veth peer is created down
            else:
                link = get_link(ipr, pod_name)
                if link is None:
                    raise WiringError(f"{pod_name} is missing in the pod's network namespace")
                idx, mac = link["index"], link.get_attr("IFLA_ADDRESS")
                if link.get_attr("IFLA_MTU") != mtu:
                    ipr.link("set", index=idx, mtu=mtu)
                if not link["flags"] & IFF_UP:
                    ipr.link("set", index=idx, state="up")
                want = {(str(ip.ip), ip.network.prefixlen) for ip in ips}
                for msg in ipr.addr("dump", index=idx):
                    addr = (msg.get_attr("IFA_ADDRESS"), msg["prefixlen"])
                    if msg["index"] == idx and addr not in want and not addr[0].startswith("fe80:"):
                        ipr.addr("del", index=idx, address=addr[0], prefixlen=addr[1])
            for ip in ips:
                # IFA_F_NODAD: the /128 is usable at once.
                ipr.addr("replace", index=idx, address=str(ip.ip), prefixlen=ip.network.prefixlen,
                         **({"flags": 0x02} if ip.version == 6 else {}))
            if has_v4:
                ipr.route("replace", dst=f"{GATEWAY_V4}/32", oif=idx, scope=RT_SCOPE_LINK)
                ipr.neigh("replace", dst=GATEWAY_V4, lladdr=HOST_MAC, ifindex=idx, state=NUD_PERMANENT)
                ipr.route("replace", dst="0.0.0.0/0", gateway=GATEWAY_V4, oif=idx)
            if has_v6:
                ipr.neigh("replace", dst=GATEWAY_V6, lladdr=HOST_MAC, ifindex=idx, state=NUD_PERMANENT)
                ipr.route("replace", dst="::/0", gateway=GATEWAY_V6, oif=idx)
            return _PodSide(idx, mac)

    def _configure_host(self, ipr: IPRoute, host: Any, mtu: int, ips: tuple[IPInterface, ...], pod_mac: str,
                        fresh: bool) -> None:
        idx = host["index"]
        if not fresh:
            if host.get_attr("IFLA_MTU") != mtu:
                ipr.link("set", index=idx, mtu=mtu)
            if not host["flags"] & IFF_UP:
                ipr.link("set", index=idx, state="up")
        for ip in ips:
            ipr.route("replace", dst=f"{ip.ip}/{ip.max_prefixlen}", oif=idx, scope=RT_SCOPE_LINK)
            ipr.neigh("replace", dst=str(ip.ip), lladdr=pod_mac, ifindex=idx, state=NUD_PERMANENT)
        if any(ip.version == 6 for ip in ips):
            ipr.neigh("replace", dst=GATEWAY_V6, ifindex=idx, flags=NTF_PROXY)
        if self.enable_forwarding:
            write_sysctl("net/ipv4/ip_forward", "1")
            if any(ip.version == 6 for ip in ips):
                write_sysctl("net/ipv6/conf/all/forwarding", "1")

    # ------------------------------------------------------------------ DEL

    def unwire(self, wiring: WorkloadWiring) -> None:
        """Remove the pod's veth (which takes its routes along); fine when already gone."""
        try:
            with IPRoute() as ipr:
                host = get_link(ipr, wiring.host_interface_name)
                if host is not None:
                    delete_link(ipr, host["index"])
                    return
            if wiring.netns and netns_exists(wiring.netns):
                # Only the pod side is left (e.g. the host side was removed by hand).
                nsfd = open_netns(wiring.netns)
                try:
                    run_in_netns(nsfd, lambda: self._delete_orphan(wiring.interface_name))
                finally:
                    os.close(nsfd)
        except NetnsGone:
            return
        except Exception as exc:
            raise WiringError(
                f"cannot remove {wiring.host_interface_name} of {wiring.netns}: {_describe(exc)}") from exc

    @staticmethod
    def _delete_orphan(name: str) -> None:
        with IPRoute() as ipr:
            link = get_link(ipr, name)
            if link is not None and link_kind(link) == "veth":
                delete_link(ipr, link["index"])

    # ------------------------------------------------------------------ CHECK

    def check(self, wiring: WorkloadWiring) -> list[str]:
        """Differences between the wiring asked for and what the kernel holds."""
        ips = tuple(_host_prefix(ip) for ip in wiring.ips)
        mtu = wiring.mtu or self.default_mtu
        host_name, pod_name = wiring.host_interface_name, wiring.interface_name
        drift: list[str] = []
        with IPRoute() as ipr:
            host = get_link(ipr, host_name)
            if host is None:
                drift.append(f"host interface {host_name} is missing")
            else:
                drift += _check_host(ipr, host, mtu, ips)
        try:
            nsfd = open_netns(wiring.netns)
        except NetnsGone:
            return drift + [f"network namespace {wiring.netns} does not exist"]
        try:
            drift += run_in_netns(nsfd, lambda: _check_pod(pod_name, mtu, ips, host))
        finally:
            os.close(nsfd)
        return drift


def _check_host(ipr: IPRoute, host: Any, mtu: int, ips: tuple[IPInterface, ...]) -> list[str]:
    name, idx = host.get_attr("IFLA_IFNAME"), host["index"]
    drift = []
    if link_kind(host) != "veth":
        drift.append(f"{name} is a {link_kind(host) or 'non-veth'} interface, not a veth")
    if not host["flags"] & IFF_UP:
        drift.append(f"{name} is down")
    if host.get_attr("IFLA_ADDRESS") != HOST_MAC:
        drift.append(f"{name} has MAC {host.get_attr('IFLA_ADDRESS')}, expected {HOST_MAC}")
    if host.get_attr("IFLA_MTU") != mtu:
        drift.append(f"{name} has MTU {host.get_attr('IFLA_MTU')}, expected {mtu}")
    routes = _routes(ipr)
    for ip in ips:
        dst = (str(ip.ip), ip.max_prefixlen)
        oifs = routes.get(dst, [])
        if idx not in oifs:
            drift.append(f"host route to {ip.ip}/{ip.max_prefixlen} via {name} is missing")
    try:
        with open(f"/proc/sys/net/ipv4/conf/{name}/proxy_arp") as f:
            if f.read().strip() != "1":
                drift.append(f"proxy ARP is off on {name}")
    except FileNotFoundError:
        pass
    return drift


def _check_pod(pod_name: str, mtu: int, ips: tuple[IPInterface, ...], host: Any | None) -> list[str]:
    with IPRoute() as ipr:
        link = get_link(ipr, pod_name)
        if link is None:
            return [f"{pod_name} is missing in the pod's network namespace"]
        idx = link["index"]
        drift = []
        if host is not None and (link.get_attr("IFLA_LINK") != host["index"]
                                 or host.get_attr("IFLA_LINK") != idx):
            drift.append(f"{pod_name} is not the peer of {host.get_attr('IFLA_IFNAME')}")
        if not link["flags"] & IFF_UP:
            drift.append(f"{pod_name} is down")
        if link.get_attr("IFLA_MTU") != mtu:
            drift.append(f"{pod_name} has MTU {link.get_attr('IFLA_MTU')}, expected {mtu}")
        have = {(m.get_attr("IFA_ADDRESS"), m["prefixlen"]) for m in ipr.addr("dump", index=idx)
                if m["index"] == idx}
        for ip in ips:
            if (str(ip.ip), ip.network.prefixlen) not in have:
                drift.append(f"address {ip} is missing on {pod_name}")
        routes = _routes(ipr, with_gateway=True)
        for version, gw, dst in ((4, GATEWAY_V4, "0.0.0.0"), (6, GATEWAY_V6, "::")):
            if any(ip.version == version for ip in ips) and (gw, idx) not in routes.get((dst, 0), []):
                drift.append(f"default route via {gw} on {pod_name} is missing")
        return drift


def _routes(ipr: IPRoute, with_gateway: bool = False) -> dict[tuple[str, int], list[Any]]:
    """Main-table routes by (dst, prefix length): their oifs (or (gateway, oif) pairs)."""
    out: dict[tuple[str, int], list[Any]] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.route("dump", family=family):
            table = r.get_attr("RTA_TABLE") or r["table"]
            if table != MAIN_TABLE:
                continue
            dst = r.get_attr("RTA_DST") or ("0.0.0.0" if family == socket.AF_INET else "::")
            oif = r.get_attr("RTA_OIF")
            value = (r.get_attr("RTA_GATEWAY"), oif) if with_gateway else oif
            out.setdefault((dst, r["dst_len"]), []).append(value)
    return out
