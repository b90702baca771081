"""The Linux half of a VPP pod interface (pyroute2, no subprocesses).

``af_packet``: a veth pair; the pod end (created directly in the pod's
netns under the requested name) gets the pod's host-prefix addresses, a
permanent neighbour for the gateways 169.254.1.1 / fe80::ecee:eeff:feee:eeee
pointing at VPP's interface MAC and default routes through them, so the pod
never needs ARP or ND.  The host end lives in VPP's netns, where VPP's
af_packet reads it; it has its own random MAC so the kernel there treats the
pod's frames as someone else's and never routes them itself.

``tap``: VPP creates the TUN device inside the pod (``tap_create_v3``
``host_namespace``); only addresses and routes are added here.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from vppagent.dataplane.base import WiringError
from vppagent.dataplane.linux.netlink_ns import (
    NetnsGone, get_link as _link, netns_exists, open_netns, run_in_netns, write_sysctl,
)

GATEWAY_V4 = "169.254.1.1"
GATEWAY_V6 = "fe80::ecee:eeff:feee:eeee"
VPP_MAC = "ee:ee:ee:ee:ee:ee"
NUD_PERMANENT = 0x80
RT_SCOPE_LINK = 253
IFF_UP = 0x1
T = TypeVar("T")


def random_mac() -> str:
    b = bytearray(os.urandom(6))
    b[0] = (b[0] & 0xFE) | 0x02
    return ":".join(f"{x:02x}" for x in b)


def _netlink_error(exc: BaseException) -> str:
    code = getattr(exc, "code", None)
    if code:
        return f"{os.strerror(code)} (netlink error {code})"
    return str(exc) or type(exc).__name__


def _in_ns(netns: str | None, fn: Callable[[], T]) -> T:
    """Run ``fn`` in ``netns`` (None: the calling thread's own)."""
    if netns is None:
        return fn()
    fd = open_netns(netns)
    try:
        return run_in_netns(fd, fn)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class PodSide:
    """What the pod end looks like, as CNI reports it."""

    mac: str


class PodLinux:
    """Creates, removes and checks the Linux side of pod interfaces."""

    def __init__(self, vpp_netns: str | None) -> None:
        self.vpp_netns = vpp_netns

    # ------------------------------------------------------------ af_packet

    def create_veth(self, host: str, netns: str, pod_ifname: str, ips: tuple[str, ...], mtu: int,
                    pod_mac: str) -> None:
        """The pair, host end up in VPP's netns, pod end configured; removed again on failure."""
        from pyroute2 import IPRoute
        from pyroute2.netlink.exceptions import NetlinkError
        try:
            nsfd = open_netns(netns)
        except NetnsGone as exc:
            raise WiringError(f"cannot wire {host}: {exc.strerror}") from None
        try:
            def make() -> None:
                with IPRoute() as ipr:
                    old = _link(ipr, host)
                    if old is not None:
                        ipr.link("del", index=old["index"])   # a leftover of an earlier sandbox
                    ipr.link("add", ifname=host, kind="veth", address=random_mac(), mtu=mtu,
                             peer={"ifname": pod_ifname, "net_ns_fd": nsfd, "mtu": mtu, "address": pod_mac})
                    idx = _link(ipr, host)["index"]
                    write_sysctl(f"net/ipv6/conf/{host}/disable_ipv6", "1")
                    ipr.link("set", index=idx, state="up")
            try:
                _in_ns(self.vpp_netns, make)
            except NetlinkError as exc:
                if exc.code == errno.EEXIST:
                    raise WiringError(f"cannot create {pod_ifname} in {netns}: an interface with that name "
                                      "already exists there") from None
                raise
            try:
                run_in_netns(nsfd, lambda: _configure_pod(pod_ifname, ips, mtu, VPP_MAC))
            except BaseException:
                self.delete_veth(host)
                raise
        except WiringError:
            raise
        except Exception as exc:
            raise WiringError(f"cannot wire {pod_ifname} in {netns} (host side {host}): "
                              f"{_netlink_error(exc)}") from exc
        finally:
            os.close(nsfd)

    def delete_veth(self, host: str) -> None:
        from pyroute2 import IPRoute

        def drop() -> None:
            with IPRoute() as ipr:
                link = _link(ipr, host)
                if link is not None:
                    ipr.link("del", index=link["index"])
        try:
            _in_ns(self.vpp_netns, drop)
        except NetnsGone:
            return

    def host_end_exists(self, host: str) -> bool:
        from pyroute2 import IPRoute

        def look() -> bool:
            with IPRoute() as ipr:
                return _link(ipr, host) is not None
        try:
            return _in_ns(self.vpp_netns, look)
        except NetnsGone:
            return False

    # ------------------------------------------------------------ tap / any

    def configure_l3(self, netns: str, pod_ifname: str, ips: tuple[str, ...], mtu: int) -> None:
        """Addresses and device routes on VPP's TUN inside the pod."""
        try:
            _in_ns(netns, lambda: _configure_pod(pod_ifname, ips, mtu, None))
        except Exception as exc:
            raise WiringError(f"cannot configure {pod_ifname} in {netns}: {_netlink_error(exc)}") from exc

    def delete_pod_link(self, netns: str, pod_ifname: str) -> None:
        """Remove the pod-side device (a persistent TUN survives VPP's tap_delete)."""
        from pyroute2 import IPRoute
        if not netns or not netns_exists(netns):
            return

        def drop() -> None:
            with IPRoute() as ipr:
                link = _link(ipr, pod_ifname)
                if link is not None:
                    ipr.link("del", index=link["index"])
        try:
            _in_ns(netns, drop)
        except NetnsGone:
            return

    def check(self, netns: str, pod_ifname: str, ips: tuple[str, ...], mtu: int) -> list[str]:
        """Drift of the pod side: link, MTU, addresses, default routes."""
        try:
            return _in_ns(netns, lambda: _check_pod(pod_ifname, ips, mtu))
        except NetnsGone:
            return [f"network namespace {netns} does not exist"]


def _configure_pod(name: str, ips: tuple[str, ...], mtu: int, gateway_mac: str | None) -> None:
    """Inside the pod's netns: up, MTU, addresses, gateway neighbours and default routes.

    ``gateway_mac`` None: an L3 (TUN) device, routes point at the device."""
    from pyroute2 import IPRoute
    nets = [ipaddress.ip_interface(ip) for ip in ips]
    has_v4, has_v6 = any(n.version == 4 for n in nets), any(n.version == 6 for n in nets)
    with IPRoute() as ipr:
        link = _link(ipr, name)
        if link is None:
            raise WiringError(f"{name} is missing in the pod's network namespace")
        idx = link["index"]
        if has_v6:
            write_sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "0")
            write_sysctl(f"net/ipv6/conf/{name}/accept_dad", "0")
            write_sysctl(f"net/ipv6/conf/{name}/accept_ra", "0")
        ipr.link("set", index=idx, mtu=mtu, state="up")
        for n in nets:
            ipr.addr("replace", index=idx, address=str(n.ip), prefixlen=n.max_prefixlen,
                     **({"flags": 0x02} if n.version == 6 else {}))   # IFA_F_NODAD
        if has_v4:
            if gateway_mac:
                ipr.route("replace", dst=f"{GATEWAY_V4}/32", oif=idx, scope=RT_SCOPE_LINK)
                ipr.neigh("replace", dst=GATEWAY_V4, lladdr=gateway_mac, ifindex=idx, state=NUD_PERMANENT)
                ipr.route("replace", dst="0.0.0.0/0", gateway=GATEWAY_V4, oif=idx)
            else:
                ipr.route("replace", dst="0.0.0.0/0", oif=idx, scope=RT_SCOPE_LINK)
        if has_v6:
            if gateway_mac:
                ipr.neigh("replace", dst=GATEWAY_V6, lladdr=gateway_mac, ifindex=idx, state=NUD_PERMANENT)
                ipr.route("replace", dst="::/0", gateway=GATEWAY_V6, oif=idx)
            else:
                ipr.route("replace", dst="::/0", oif=idx)


def _check_pod(name: str, ips: tuple[str, ...], mtu: int) -> list[str]:
    from pyroute2 import IPRoute
    with IPRoute() as ipr:
        link = _link(ipr, name)
        if link is None:
            return [f"{name} is missing in the pod's network namespace"]
        idx = link["index"]
        drift = []
        if not link["flags"] & IFF_UP:
            drift.append(f"{name} is down")
        if link.get_attr("IFLA_MTU") != mtu:
            drift.append(f"{name} has MTU {link.get_attr('IFLA_MTU')}, expected {mtu}")
        have = {(m.get_attr("IFA_ADDRESS"), m["prefixlen"]) for m in ipr.addr("dump", index=idx) if m["index"] == idx}
        for ip in ips:
            n = ipaddress.ip_interface(ip)
            if (str(n.ip), n.max_prefixlen) not in have:
                drift.append(f"address {n.ip}/{n.max_prefixlen} is missing on {name}")
        for family, dst in ((socket.AF_INET, 4), (socket.AF_INET6, 6)):
            if not any(ipaddress.ip_interface(ip).version == dst for ip in ips):
                continue
            defaults = [r for r in ipr.route("dump", family=family) if r["dst_len"] == 0
                        and r.get_attr("RTA_OIF") == idx]
            if not defaults:
                drift.append(f"IPv{dst} default route on {name} is missing")
        return drift
