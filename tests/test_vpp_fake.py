"""The fake VPP, scenario by scenario (create, query, remove, re-query), in
the style of VPP's own test framework.  Retvals are the ones VPP 26.10
gives (several were checked against a real VPP; see the fake's comments)."""

from __future__ import annotations

import ipaddress
from typing import Iterator

import pytest

from vpp_env import fake_vpp
from vppagent.vpp.connection import VppConnection
from vppagent.vpp.errors import VppApiError, VppArgumentError
from vppagent.vpp.fake import FIB_SOURCE_API, FIB_SOURCE_INTERFACE, FakeVpp

ALL = 0xFFFFFFFF
TAP_TUN, TAP_PERSIST, TAP_ATTACH, TAP_GSO, TAP_GRO = 16, 4, 8, 1, 32


@pytest.fixture
def fake() -> Iterator[FakeVpp]:
    with fake_vpp(host_interfaces={"eth0", "veth-pod1"}, pci_devices={"pci/0000:00:05.0"}) as f:
        yield f


@pytest.fixture
def vpp(fake: FakeVpp) -> Iterator[VppConnection]:
    c = VppConnection(client_factory=fake.client_factory, timeout=2.0)
    c.connect()
    yield c
    c.disconnect()


def err(c: VppConnection, name: str, **args: object) -> str:
    with pytest.raises(VppApiError) as e:
        c.call(name, **args)
    return e.value.name


def names(c: VppConnection) -> list[str]:
    return [d.interface_name for d in c.dump("sw_interface_dump")]


def loopback(c: VppConnection) -> int:
    return c.call("create_loopback_instance", is_specified=False).sw_if_index


def route(prefix: str, table: int = 0, **path: object) -> dict:
    return {"table_id": table, "prefix": prefix, "paths": [path] if path else []}


def routes(c: VppConnection, table: int = 0, src: int = 0, v6: bool = False) -> dict[str, list]:
    return {str(d.route.prefix): d.route.paths
            for d in c.dump("ip_route_v2_dump", src=src, table={"table_id": table, "is_ip6": v6})}


# ----------------------------------------------------------- interfaces

def test_loopback_lifecycle_and_index_reuse(vpp: VppConnection) -> None:
    a, b = loopback(vpp), loopback(vpp)
    assert names(vpp) == ["local0", "loop0", "loop1"]
    d = vpp.dump("sw_interface_dump", sw_if_index=b)[0]
    assert (d.interface_dev_type, str(d.l2_address), d.flags) == ("Loopback", "de:ad:00:00:00:01", 0)
    vpp.call("delete_loopback", sw_if_index=a)
    assert names(vpp) == ["local0", "loop1"]
    assert vpp.dump("sw_interface_dump", sw_if_index=a) == []
    assert err(vpp, "delete_loopback", sw_if_index=a) == "INVALID_SW_IF_INDEX"
    assert err(vpp, "delete_loopback", sw_if_index=0) == "INVALID_SW_IF_INDEX"     # not a loopback
    assert loopback(vpp) == a                          # VPP reuses freed indices
    r = vpp.call("create_loopback_instance", is_specified=True, user_instance=7, mac_address="02:00:00:00:00:07")
    assert vpp.dump("sw_interface_dump", sw_if_index=r.sw_if_index)[0].interface_name == "loop7"
    assert err(vpp, "create_loopback_instance", is_specified=True, user_instance=7) == "INVALID_REGISTRATION"


def test_admin_state_tag_mtu_and_mac(vpp: VppConnection) -> None:
    i = loopback(vpp)
    vpp.call("sw_interface_set_flags", sw_if_index=i, flags=1)
    vpp.call("sw_interface_tag_add_del", sw_if_index=i, is_add=True, tag="vppagent:pod/ns/a")
    vpp.call("sw_interface_set_mtu", sw_if_index=i, mtu=[1450, 0, 0, 0])
    vpp.call("sw_interface_set_mac_address", sw_if_index=i, mac_address="02:11:22:33:44:55")
    d = vpp.dump("sw_interface_dump", sw_if_index=i)[0]
    assert (int(d.flags), d.tag, d.mtu, str(d.l2_address)) == (3, "vppagent:pod/ns/a", [1450, 0, 0, 0],
                                                               "02:11:22:33:44:55")
    assert err(vpp, "sw_interface_tag_add_del", sw_if_index=i, is_add=True, tag="") == "INVALID_VALUE"
    assert err(vpp, "sw_interface_set_mtu", sw_if_index=i, mtu=[10000, 0, 0, 0]) == "INVALID_VALUE"
    vpp.call("sw_interface_tag_add_del", sw_if_index=i, is_add=False, tag="")
    vpp.call("sw_interface_set_flags", sw_if_index=i, flags=0)
    d = vpp.dump("sw_interface_dump", sw_if_index=i)[0]
    assert (int(d.flags), d.tag) == (0, "")


def test_tap_keeps_create_time_attributes_dumps_do_not_return(vpp: VppConnection, fake: FakeVpp) -> None:
    flags = TAP_TUN | TAP_PERSIST | TAP_ATTACH | TAP_GSO | TAP_GRO
    r = vpp.call("tap_create_v3", id=ALL, num_rx_queues=2, rx_ring_sz=1024, tx_ring_sz=1024,
                 host_if_name_set=True, host_if_name="eth0", host_namespace_set=True,
                 host_namespace="/var/run/netns/pod1", host_mtu_set=True, host_mtu_size=1430,
                 host_ip4_prefix_set=True, host_ip4_prefix="10.1.1.5/32", host_ip4_gw_set=True,
                 host_ip4_gw="169.254.1.1", tap_flags=flags, tag="vppagent:pod1")
    i = r.sw_if_index
    d = vpp.dump("sw_interface_tap_v2_dump", sw_if_index=i)[0]
    assert (d.id, d.rx_ring_sz, d.host_if_name, d.host_namespace, d.host_mtu_size, int(d.tap_flags)) == (
        0, 1024, "eth0", "/var/run/netns/pod1", 1430, flags)
    assert str(d.host_ip4_prefix) == "10.1.1.5/32"
    assert not hasattr(d, "num_rx_queues") and not hasattr(d, "host_ip4_gw")   # kept from desired state
    assert fake.state.interfaces[i].create["num_rx_queues"] == 2
    s = vpp.dump("sw_interface_dump", sw_if_index=i)[0]
    assert (s.interface_name, s.tag, str(s.l2_address)) == ("tun0", "vppagent:pod1", "00:00:00:00:00:00")
    assert err(vpp, "tap_create_v3", id=0) == "INVALID_INTERFACE"              # id in use
    assert err(vpp, "tap_create_v3", rx_ring_sz=1000) == "INIT_FAILED"          # not a power of 2
    assert err(vpp, "tap_delete_v2", sw_if_index=0) == "INVALID_SW_IF_INDEX"    # not a tap
    vpp.call("tap_delete_v2", sw_if_index=i)
    assert vpp.dump("sw_interface_tap_v2_dump") == [] and names(vpp) == ["local0"]


def test_af_packet_and_memif(vpp: VppConnection) -> None:
    r = vpp.call("af_packet_create_v3", mode=1, use_random_hw_addr=True, host_if_name="veth-pod1",
                 num_rx_queues=1, flags=1)
    assert [(d.sw_if_index, d.host_if_name) for d in vpp.dump("af_packet_dump")] == [(r.sw_if_index, "veth-pod1")]
    assert names(vpp)[-1] == "host-veth-pod1"
    assert err(vpp, "af_packet_create_v3", mode=1, use_random_hw_addr=True, host_if_name="veth-pod1") == \
        "IF_ALREADY_EXISTS"
    assert err(vpp, "af_packet_create_v3", mode=1, use_random_hw_addr=True, host_if_name="nope0") == \
        "INVALID_INTERFACE"
    vpp.call("af_packet_delete", host_if_name="veth-pod1")
    assert err(vpp, "af_packet_delete", host_if_name="veth-pod1") == "SYSCALL_ERROR_1"

    sid = vpp.call("memif_socket_filename_add_del_v2", is_add=True, socket_filename="@netns:pod1/memif.sock").socket_id
    assert [(d.socket_id, d.socket_filename) for d in vpp.dump("memif_socket_filename_dump")] == [
        (0, "/run/vpp/memif.sock"), (sid, "@netns:pod1/memif.sock")]
    m = vpp.call("memif_create_v2", role=0, mode=1, id=0, socket_id=sid, ring_size=2048, buffer_size=4096,
                 secret="hunter2", rx_queues=2, tx_queues=2)
    d = vpp.dump("memif_dump")[0]
    assert (d.sw_if_index, d.id, d.socket_id, d.if_name) == (m.sw_if_index, 0, sid, f"memif{sid}/0")
    assert not hasattr(d, "secret") and d.ring_size == 1      # sizes only once a peer connected
    assert err(vpp, "memif_create_v2", role=0, mode=1, id=0, socket_id=sid) == "SUBIF_ALREADY_EXISTS"
    assert err(vpp, "memif_create_v2", role=1, mode=1, id=1, socket_id=sid) == "SUBIF_ALREADY_EXISTS"
    assert err(vpp, "memif_create_v2", role=0, mode=1, id=1, socket_id=99) == "INVALID_ARGUMENT"
    assert err(vpp, "memif_socket_filename_add_del_v2", is_add=False, socket_id=sid,
               socket_filename="") == "UNEXPECTED_INTF_STATE"
    vpp.call("memif_delete", sw_if_index=m.sw_if_index)
    vpp.call("memif_socket_filename_add_del_v2", is_add=False, socket_id=sid, socket_filename="")
    assert vpp.dump("memif_dump") == [] and len(vpp.dump("memif_socket_filename_dump")) == 1


def test_rx_mode_and_placement(vpp: VppConnection, fake: FakeVpp) -> None:
    i = loopback(vpp)
    vpp.call("sw_interface_set_rx_mode", sw_if_index=i, mode=3, queue_id_valid=False)
    assert err(vpp, "sw_interface_set_rx_placement", sw_if_index=i, queue_id=0, worker_id=0,
               is_main=False) == "UNIMPLEMENTED"                  # no workers here
    vpp.call("sw_interface_set_rx_placement", sw_if_index=i, queue_id=0, worker_id=0, is_main=True)
    d = vpp.dump("sw_interface_rx_placement_dump", sw_if_index=i)
    assert [(x.queue_id, x.worker_id, int(x.mode)) for x in d] == [(0, 0, 3)]


def test_vxlan_and_dev(vpp: VppConnection) -> None:
    r = vpp.call("vxlan_add_del_tunnel_v3", is_add=True, src_address="192.0.2.1", dst_address="192.0.2.2", vni=7)
    d = vpp.dump("vxlan_tunnel_v2_dump", sw_if_index=ALL)[0]
    assert (d.sw_if_index, str(d.dst_address), d.vni, d.dst_port) == (r.sw_if_index, "192.0.2.2", 7, 4789)
    assert err(vpp, "vxlan_add_del_tunnel_v3", is_add=True, src_address="192.0.2.1",
               dst_address="192.0.2.2", vni=7) == "TUNNEL_EXIST"
    vpp.call("vxlan_add_del_tunnel_v3", is_add=False, src_address="192.0.2.1", dst_address="192.0.2.2", vni=7)
    assert vpp.dump("vxlan_tunnel_v2_dump", sw_if_index=ALL) == []

    dev = vpp.call("dev_attach", device_id="pci/0000:00:05.0", driver_name="iavf").dev_index
    port = vpp.call("dev_create_port_if", dev_index=dev, intf_name="vf0", num_rx_queues=2).sw_if_index
    assert names(vpp)[-1] == "vf0"
    with pytest.raises(VppApiError):
        vpp.call("dev_attach", device_id="pci/0000:00:06.0", driver_name="iavf")
    vpp.call("dev_detach", dev_index=dev)                 # takes its ports along
    assert vpp.dump("sw_interface_dump", sw_if_index=port) == []


# ------------------------------------------------------------ addresses

def test_addresses_add_query_remove(vpp: VppConnection) -> None:
    i, j = loopback(vpp), loopback(vpp)
    vpp.call("sw_interface_add_del_address", sw_if_index=i, is_add=True, prefix="10.0.0.1/24")
    vpp.call("sw_interface_add_del_address", sw_if_index=i, is_add=True, prefix="10.0.0.2/24")
    vpp.call("sw_interface_add_del_address", sw_if_index=i, is_add=True, prefix="fd00::1/64")
    got = [str(d.prefix) for d in vpp.dump("ip_address_dump", sw_if_index=i, is_ipv6=False)]
    assert got == ["10.0.0.1/24", "10.0.0.2/24"]
    assert [str(d.prefix) for d in vpp.dump("ip_address_dump", sw_if_index=i, is_ipv6=True)] == ["fd00::1/64"]
    add = dict(is_add=True, sw_if_index=j)
    assert err(vpp, "sw_interface_add_del_address", **add, prefix="10.0.0.9/24") == "ADDRESS_IN_USE"
    assert err(vpp, "sw_interface_add_del_address", is_add=True, sw_if_index=i,
               prefix="10.0.0.1/24") == "ADDRESS_IN_USE"
    assert err(vpp, "sw_interface_add_del_address", is_add=False, sw_if_index=i,
               prefix="10.9.0.1/24") == "ADDRESS_NOT_FOUND_FOR_INTERFACE"
    vpp.call("sw_interface_add_del_address", sw_if_index=i, is_add=False, prefix="10.0.0.2/24")
    assert len(vpp.dump("ip_address_dump", sw_if_index=i, is_ipv6=False)) == 1
    vpp.call("sw_interface_add_del_address", sw_if_index=i, is_add=False, del_all=True, prefix="0.0.0.0/0")
    assert vpp.dump("ip_address_dump", sw_if_index=i, is_ipv6=False) == []
    assert vpp.dump("ip_address_dump", sw_if_index=99, is_ipv6=False) == []


def test_address_replace_keeps_what_is_readded(vpp: VppConnection) -> None:
    i = loopback(vpp)
    for p in ("10.0.0.1/24", "10.0.1.1/24"):
        vpp.call("sw_interface_add_del_address", sw_if_index=i, is_add=True, prefix=p)
    vpp.call("sw_interface_address_replace_begin")
    vpp.call("sw_interface_add_del_address", sw_if_index=i, is_add=True, prefix="10.0.1.1/24")
    vpp.call("sw_interface_add_del_address", sw_if_index=i, is_add=True, prefix="10.0.2.1/24")
    vpp.call("sw_interface_address_replace_end")
    assert [str(d.prefix) for d in vpp.dump("ip_address_dump", sw_if_index=i, is_ipv6=False)] == [
        "10.0.1.1/24", "10.0.2.1/24"]


def test_unnumbered_pod_interface(vpp: VppConnection) -> None:
    lo, tap = loopback(vpp), vpp.call("tap_create_v3", tap_flags=TAP_TUN).sw_if_index
    vpp.call("sw_interface_add_del_address", sw_if_index=lo, is_add=True, prefix="10.1.1.5/32")
    # the API names are backwards: sw_if_index lends its addresses to unnumbered_sw_if_index
    vpp.call("sw_interface_set_unnumbered", sw_if_index=lo, unnumbered_sw_if_index=tap, is_add=True)
    assert [(d.sw_if_index, d.ip_sw_if_index) for d in vpp.dump("ip_unnumbered_dump")] == [(tap, lo)]
    assert vpp.dump("ip_address_dump", sw_if_index=tap, is_ipv6=False) == []       # as 26.10 answers
    assert err(vpp, "sw_interface_set_unnumbered", sw_if_index=77, unnumbered_sw_if_index=tap,
               is_add=True) == "INVALID_SW_IF_INDEX_2"
    vpp.call("delete_loopback", sw_if_index=lo)
    assert vpp.dump("ip_unnumbered_dump") == []


# -------------------------------------------------------- tables, routes

def test_tables_and_interface_binding(vpp: VppConnection) -> None:
    i = loopback(vpp)
    assert err(vpp, "sw_interface_set_table", sw_if_index=i, is_ipv6=False, vrf_id=10) == "NO_SUCH_FIB"
    vpp.call("ip_table_add_del", is_add=True, table={"table_id": 10, "is_ip6": False, "name": "pod-a"})
    vpp.call("ip_table_add_del", is_add=True, table={"table_id": 10, "is_ip6": True})
    tables = [(d.table.table_id, d.table.is_ip6, d.table.name) for d in vpp.dump("ip_table_dump")]
    assert tables == [(0, False, "ipv4-VRF:0"), (10, False, "pod-a"), (0, True, "ipv6-VRF:0"),
                      (10, True, "ipv6-VRF:10")]
    vpp.call("sw_interface_set_table", sw_if_index=i, is_ipv6=False, vrf_id=10)
    vpp.call("sw_interface_add_del_address", sw_if_index=i, is_add=True, prefix="10.0.0.1/24")
    assert err(vpp, "sw_interface_set_table", sw_if_index=i, is_ipv6=False, vrf_id=0) == \
        "ADDRESS_FOUND_FOR_INTERFACE"
    vpp.call("ip_table_add_del", is_add=False, table={"table_id": 10, "is_ip6": True})
    vpp.call("ip_table_add_del", is_add=False, table={"table_id": 0, "is_ip6": False})   # never goes
    assert [(d.table.table_id, d.table.is_ip6) for d in vpp.dump("ip_table_dump")] == [
        (0, False), (10, False), (0, True)]


def test_routes_add_query_multipath_remove(vpp: VppConnection) -> None:
    i, j = loopback(vpp), loopback(vpp)
    add = dict(is_add=True, is_multipath=False)
    vpp.call("ip_route_add_del", **add, route=route("10.2.0.0/16", sw_if_index=i,
                                                    nh={"address": {"ip4": "10.0.0.2"}}))
    mine = routes(vpp, src=FIB_SOURCE_API)
    assert list(mine) == ["10.2.0.0/16"]
    assert [(p.sw_if_index, str(p.nh.address.ip4)) for p in mine["10.2.0.0/16"]] == [(i, "10.0.0.2")]
    assert {"0.0.0.0/0", "224.0.0.0/4", "255.255.255.255/32"} <= set(routes(vpp))   # VPP's own entries
    second = {"sw_if_index": j, "nh": {"address": {"ip4": "10.0.1.2"}}}
    vpp.call("ip_route_add_del", is_add=True, is_multipath=True, route=route("10.2.0.0/16", **second))
    assert len(routes(vpp, src=FIB_SOURCE_API)["10.2.0.0/16"]) == 2
    vpp.call("ip_route_add_del", is_add=False, is_multipath=True, route=route("10.2.0.0/16", **second))
    assert len(routes(vpp, src=FIB_SOURCE_API)["10.2.0.0/16"]) == 1
    vpp.call("ip_route_add_del", is_add=False, is_multipath=False, route=route("10.2.0.0/16"))
    assert routes(vpp, src=FIB_SOURCE_API) == {}
    vpp.call("ip_route_add_del", is_add=False, is_multipath=False, route=route("10.2.0.0/16"))  # no-op
    assert err(vpp, "ip_route_add_del", **add, route=route("10.3.0.0/16", table=5, sw_if_index=i)) == \
        "NO_SUCH_FIB"
    assert err(vpp, "ip_route_add_del", **add, route=route("10.3.0.0/16", sw_if_index=42)) == \
        "NO_MATCHING_INTERFACE"
    assert err(vpp, "ip_route_add_del", **add, route=route("10.3.0.0/16")) == "NO_PATHS_IN_ROUTE"
    vpp.call("ip_route_add_del", **add, route={"table_id": 0, "prefix": "fd00:1::/64",
                                               "paths": [{"sw_if_index": i, "proto": 1}]})
    assert list(routes(vpp, v6=True, src=FIB_SOURCE_API)) == ["fd00:1::/64"]


def test_interface_routes_follow_admin_state(vpp: VppConnection) -> None:
    i = loopback(vpp)
    vpp.call("sw_interface_add_del_address", sw_if_index=i, is_add=True, prefix="10.5.0.1/24")
    assert routes(vpp, src=FIB_SOURCE_INTERFACE) == {}
    vpp.call("sw_interface_set_flags", sw_if_index=i, flags=1)
    assert set(routes(vpp, src=FIB_SOURCE_INTERFACE)) == {"10.5.0.0/24", "10.5.0.0/32", "10.5.0.1/32",
                                                          "10.5.0.255/32"}
    vpp.call("delete_loopback", sw_if_index=i)
    assert routes(vpp, src=FIB_SOURCE_INTERFACE) == {}


def test_neighbors(vpp: VppConnection) -> None:
    i = loopback(vpp)
    n = {"sw_if_index": i, "ip_address": "10.0.0.9", "mac_address": "02:00:00:00:00:09", "flags": 1}
    vpp.call("ip_neighbor_add_del", is_add=True, neighbor=n)
    vpp.call("ip_neighbor_add_del", is_add=True, neighbor=n)            # an update, not an error
    d = vpp.dump("ip_neighbor_dump", sw_if_index=ALL, af=0)
    assert [(x.neighbor.sw_if_index, str(x.neighbor.ip_address), str(x.neighbor.mac_address)) for x in d] == [
        (i, "10.0.0.9", "02:00:00:00:00:09")]
    assert vpp.dump("ip_neighbor_dump", sw_if_index=ALL, af=1) == []
    vpp.call("ip_neighbor_add_del", is_add=False, neighbor=n)
    assert err(vpp, "ip_neighbor_add_del", is_add=False, neighbor=n) == "NO_SUCH_ENTRY"


def test_proxy_arp_is_idempotent(vpp: VppConnection) -> None:
    i = loopback(vpp)
    vpp.call("proxy_arp_intfc_enable_disable", sw_if_index=i, enable=False)
    vpp.call("proxy_arp_intfc_enable_disable", sw_if_index=i, enable=True)
    vpp.call("proxy_arp_intfc_enable_disable", sw_if_index=i, enable=True)
    assert [d.sw_if_index for d in vpp.dump("proxy_arp_intfc_dump")] == [i]


# ------------------------------------------------------------------ ACL

def rule(permit: int, src: str, dst: str = "0.0.0.0/0", proto: int = 6, port: int = 80) -> dict:
    return {"is_permit": permit, "src_prefix": src, "dst_prefix": dst, "proto": proto,
            "srcport_or_icmptype_first": 0, "srcport_or_icmptype_last": 65535,
            "dstport_or_icmpcode_first": port, "dstport_or_icmpcode_last": port}


def test_acl_lifecycle(vpp: VppConnection) -> None:
    i = loopback(vpp)
    a = vpp.call("acl_add_replace", acl_index=ALL, tag="vppagent:pol1", r=[rule(2, "10.0.0.0/8")]).acl_index
    b = vpp.call("acl_add_replace", acl_index=ALL, tag="vppagent:deny", r=[rule(0, "0.0.0.0/0", port=22)]).acl_index
    vpp.call("acl_add_replace", acl_index=a, tag="vppagent:pol1", r=[rule(2, "10.0.0.0/8"), rule(1, "10.1.0.0/16")])
    d = {x.acl_index: x for x in vpp.dump("acl_dump", acl_index=ALL)}
    assert d[a].count == 2 and str(d[a].r[1].src_prefix) == "10.1.0.0/16" and d[a].tag == "vppagent:pol1"
    assert err(vpp, "acl_add_replace", acl_index=9, r=[]) == "NO_SUCH_ENTRY"
    assert err(vpp, "acl_add_replace", acl_index=ALL, r=[rule(1, "10.0.0.0/8", dst="fd00::/8")]) == "INVALID_VALUE"
    vpp.call("acl_interface_set_acl_list", sw_if_index=i, n_input=1, acls=[a, b])
    assert [(x.sw_if_index, x.n_input, x.acls) for x in vpp.dump("acl_interface_list_dump")] == [
        (0, 0, []), (i, 1, [a, b])]
    assert err(vpp, "acl_del", acl_index=a) == "ACL_IN_USE_INBOUND"
    assert err(vpp, "acl_del", acl_index=b) == "ACL_IN_USE_OUTBOUND"
    assert err(vpp, "acl_interface_set_acl_list", sw_if_index=i, n_input=0, acls=[77]) == "NO_SUCH_ENTRY"
    vpp.call("acl_interface_set_acl_list", sw_if_index=i, n_input=0, acls=[])
    vpp.call("acl_del", acl_index=a)
    assert [x.acl_index for x in vpp.dump("acl_dump", acl_index=ALL)] == [b]


# ----------------------------------------------------------------- npol

def test_npol_ipsets_rules_policies_and_interfaces(vpp: VppConnection, fake: FakeVpp) -> None:
    i = loopback(vpp)
    ips = vpp.call("npol_ipset_create", type=0).set_id
    vpp.call("npol_ipset_add_del_members", set_id=ips, is_add=True,
             members=[{"val": {"address": "10.0.0.1"}}, {"val": {"address": "10.0.0.2"}}])
    vpp.call("npol_ipset_add_del_members", set_id=ips, is_add=False, members=[{"val": {"address": "10.0.0.1"}}])
    assert fake.state.ipsets[ips] == (0, [ipaddress.ip_address("10.0.0.2")])
    nets = vpp.call("npol_ipset_create", type=2).set_id
    vpp.call("npol_ipset_add_del_members", set_id=nets, is_add=True, members=[{"val": {"prefix": "10.8.0.0/16"}}])
    assert fake.state.ipsets[nets][1] == [ipaddress.ip_network("10.8.0.0/16")]
    with pytest.raises(VppArgumentError, match="rule.filters: expected exactly 3"):
        vpp.call("npol_rule_create", rule={"action": 0, "filters": [{"type": 3, "value": 6}]})
    r = vpp.call("npol_rule_create", rule={
        "action": 0, "filters": [{"type": 3, "value": 6, "should_match": 1}, {}, {}],
        "matches": [{"is_src": True, "type": 3, "data": {"set_id": {"set_id": ips}}},
                    {"is_src": False, "type": 1, "data": {"port_range": {"start": 80, "end": 80}}}]}).rule_id
    assert fake.state.rules[r]["action"] == 0 and len(fake.state.rules[r]["matches"]) == 2
    p = vpp.call("npol_policy_create", rules=[{"is_inbound": True, "rule_id": r}]).policy_id
    conf = dict(sw_if_index=i, num_rx_policies=0, num_tx_policies=1, total_ids=1, policy_ids=[p],
                policy_default_rx=1, policy_default_tx=1, profile_default_rx=0, profile_default_tx=0)
    vpp.call("npol_configure_policies", **conf)
    assert fake.state.npol_interfaces[i]["tx_policies"] == [p]
    with pytest.raises(VppApiError) as e:                      # unknown policy: npol answers 1
        vpp.call("npol_configure_policies", **{**conf, "policy_ids": [p + 5]})
    assert e.value.retval == 1
    assert err(vpp, "npol_configure_policies", **{**conf, "sw_if_index": 99}) == "INVALID_SW_IF_INDEX"
    vpp.call("npol_rule_update", rule_id=r, rule={"action": 1})
    assert fake.state.rules[r]["action"] == 1
    vpp.call("npol_policy_update", policy_id=p, rules=[])
    for name, key, ident in (("npol_policy_delete", "policy_id", p), ("npol_rule_delete", "rule_id", r),
                             ("npol_ipset_delete", "set_id", ips)):
        vpp.call(name, **{key: ident})
        assert err(vpp, name, **{key: ident}) == "NO_SUCH_ENTRY"
    assert vpp.call("npol_get_version").major == 0


# ----------------------------------------------------------------- cnat

def ep(addr: str, port: int) -> dict:
    return {"addr": addr, "port": port, "sw_if_index": ALL}


def test_cnat_translations(vpp: VppConnection) -> None:
    tr = {"vip": ep("10.96.0.10", 53), "ip_proto": 17, "is_real_ip": 0, "flags": 0, "lb_type": 1,
          "paths": [{"dst_ep": ep("10.1.1.5", 5353), "src_ep": ep("0.0.0.0", 0)}]}
    t = vpp.call("cnat_translation_update", translation=tr).id
    tr["paths"].append({"dst_ep": ep("10.1.1.6", 5353), "src_ep": ep("0.0.0.0", 0)})
    assert vpp.call("cnat_translation_update", translation=tr).id == t      # same VIP: same id
    other = vpp.call("cnat_translation_update", translation={**tr, "ip_proto": 6}).id
    assert other != t
    d = {x.translation.id: x.translation for x in vpp.dump("cnat_translation_dump")}
    assert str(d[t].vip.addr) == "10.96.0.10" and d[t].n_paths == 2 and int(d[t].lb_type) == 1
    assert vpp.dump("cnat_session_dump") == []
    vpp.call("cnat_translation_del", id=t)
    assert err(vpp, "cnat_translation_del", id=t) == "NO_SUCH_ENTRY"
    assert [x.translation.id for x in vpp.dump("cnat_translation_dump")] == [other]


def test_cnat_snat(vpp: VppConnection, fake: FakeVpp) -> None:
    i = loopback(vpp)
    assert err(vpp, "cnat_get_snat_addresses") == "FEATURE_DISABLED"
    vpp.call("cnat_set_snat_addresses_v2", snat_ip4="192.0.2.10", snat_ip6="2001:db8::10", sw_if_index=ALL)
    r = vpp.call("cnat_get_snat_addresses")
    assert (str(r.snat_ip4), str(r.snat_ip6)) == ("192.0.2.10", "2001:db8::10")
    vpp.call("cnat_set_snat_policy", policy=2)
    vpp.call("cnat_snat_policy_add_del_exclude_pfx", is_add=1, prefix="10.0.0.0/8")
    vpp.call("cnat_snat_policy_add_del_exclude_pfx", is_add=0, prefix="10.99.0.0/16")    # no-op, as in VPP
    vpp.call("cnat_snat_policy_add_del_if", sw_if_index=i, is_add=1, table=2)
    vpp.call("feature_cnat_enable_disable", sw_if_index=i, enable_disable=True)
    st = fake.state
    assert (st.snat_policy, st.snat_exclude, st.snat_interfaces, st.cnat_features) == (
        2, {ipaddress.ip_network("10.0.0.0/8")}, {(i, 2)}, {i})
    vpp.call("delete_loopback", sw_if_index=i)
    # As on a real VPP: the SNAT role outlives the interface (a reused index inherits it).
    assert st.snat_interfaces == {(i, 2)} and st.cnat_features == set()


# ----------------------------------------------------------------- nat44

def test_nat44(vpp: VppConnection) -> None:
    i = loopback(vpp)
    assert err(vpp, "nat44_interface_add_del_feature", is_add=True, sw_if_index=i, flags=32) == "UNSUPPORTED"
    vpp.call("nat44_ed_plugin_enable_disable", enable=True)
    assert err(vpp, "nat44_ed_plugin_enable_disable", enable=True) == "FEATURE_ALREADY_ENABLED"
    vpp.call("nat44_interface_add_del_feature", is_add=True, sw_if_index=i, flags=32)
    vpp.call("nat44_interface_add_del_feature", is_add=True, sw_if_index=i, flags=16)
    vpp.call("nat44_interface_add_del_feature", is_add=True, sw_if_index=i, flags=32)     # no-op
    assert [(d.sw_if_index, int(d.flags)) for d in vpp.dump("nat44_interface_dump")] == [(i, 48)]
    vpp.call("nat44_add_del_address_range", first_ip_address="192.0.2.1", last_ip_address="192.0.2.2",
             vrf_id=ALL, is_add=True)
    assert [str(d.ip_address) for d in vpp.dump("nat44_address_dump")] == ["192.0.2.1", "192.0.2.2"]
    sm = dict(local_ip_address="10.1.1.5", external_ip_address="192.0.2.1", vrf_id=0, protocol=6,
              local_port=80, external_port=8080, flags=0)
    vpp.call("nat44_add_del_static_mapping_v2", is_add=True, **sm)
    assert err(vpp, "nat44_add_del_static_mapping_v2", is_add=True, **sm) == "VALUE_EXIST"
    assert [(str(d.local_ip_address), d.external_port) for d in vpp.dump("nat44_static_mapping_dump")] == [
        ("10.1.1.5", 8080)]
    vpp.call("nat44_add_del_static_mapping_v2", is_add=False, **sm)
    assert err(vpp, "nat44_add_del_static_mapping_v2", is_add=False, **sm) == "NO_SUCH_ENTRY"
    vpp.call("nat44_ed_plugin_enable_disable", enable=False)
    assert vpp.dump("nat44_interface_dump") == [] and vpp.dump("nat44_address_dump") == []


# --------------------------------------------------- the fake itself

def test_the_fake_validates_at_its_boundary(fake: FakeVpp) -> None:
    client = fake.client_factory()
    client.connect("direct")
    try:
        with pytest.raises(VppArgumentError, match="sw_interface_set_flags: up: unknown field"):
            client.api.sw_interface_set_flags(sw_if_index=0, flags=1, up=True)
        with pytest.raises(VppArgumentError, match="required field missing"):
            client.api.sw_interface_add_del_address(sw_if_index=0, prefix="10.0.0.1/24")
        with pytest.raises(AttributeError):
            client.api.sw_interface_frobnicate()
        assert client.api.control_ping().vpe_pid == fake.pid            # vpp_papi's sync style
        assert [d.interface_name for d in client.api.sw_interface_dump()] == ["local0"]
    finally:
        client.disconnect()


def test_restart_wipes_state(vpp: VppConnection, fake: FakeVpp) -> None:
    loopback(vpp)
    vpp.call("acl_add_replace", acl_index=ALL, r=[])
    fake.restart()
    vpp.reconnect()
    assert names(vpp) == ["local0"] and vpp.dump("acl_dump", acl_index=ALL) == []
    assert fake.calls["create_loopback_instance"] == 1                 # counters survive for tests


# --------------------------------------- the fake against a real VPP

def transcript(c: VppConnection, settle: float = 0.0) -> list[tuple[str, object]]:
    """One pass over everything the fake models, as (step, outcome) pairs
    that a fresh VPP and a fresh fake must produce identically."""
    import time

    out: list[tuple[str, object]] = []

    def do(name: str, **a: object) -> object:
        try:
            r = c.call(name, **a)
            out.append((name, "ok"))
            return r
        except VppApiError as e:
            out.append((name, e.name if e.retval < 0 else e.retval))
            return None

    def dump(name: str, fmt, **a: object) -> None:
        out.append((name, sorted(fmt(d) for d in c.dump(name, **a))))

    def api_routes(table: int = 0, v6: bool = False) -> None:
        dump("ip_route_v2_dump", lambda d: (str(d.route.prefix), d.route.src, len(d.route.paths)),
             table={"table_id": table, "is_ip6": v6})

    c.call("want_interface_events", enable_disable=1, pid=4242)
    lo = do("create_loopback_instance", is_specified=False).sw_if_index          # type: ignore[union-attr]
    lo2 = do("create_loopback_instance", is_specified=False).sw_if_index         # type: ignore[union-attr]
    do("create_loopback_instance", is_specified=True, user_instance=0)
    do("sw_interface_set_flags", sw_if_index=lo, flags=1)
    do("sw_interface_set_flags", sw_if_index=99, flags=1)
    do("sw_interface_tag_add_del", sw_if_index=lo, is_add=True, tag="vppagent:x")
    do("sw_interface_tag_add_del", sw_if_index=lo2, is_add=True, tag="")
    do("sw_interface_set_mtu", sw_if_index=lo2, mtu=[1400, 0, 0, 0])
    dump("sw_interface_dump", lambda d: (d.sw_if_index, d.interface_name, int(d.flags), d.tag, tuple(d.mtu),
                                         d.interface_dev_type))
    # addresses
    for p in ("10.0.0.1/24", "10.0.0.2/24", "10.0.0.1/24", "fd00::1/64"):
        do("sw_interface_add_del_address", sw_if_index=lo, is_add=True, prefix=p)
    do("sw_interface_add_del_address", sw_if_index=lo2, is_add=True, prefix="10.0.0.9/24")
    do("sw_interface_add_del_address", sw_if_index=lo, is_add=False, prefix="10.9.9.9/24")
    dump("ip_address_dump", lambda d: str(d.prefix), sw_if_index=lo, is_ipv6=False)
    dump("ip_address_dump", lambda d: str(d.prefix), sw_if_index=lo, is_ipv6=True)
    # tables
    do("sw_interface_set_table", sw_if_index=lo2, is_ipv6=False, vrf_id=10)
    do("ip_table_add_del", is_add=True, table={"table_id": 10, "is_ip6": False})
    do("ip_table_add_del", is_add=True, table={"table_id": 10, "is_ip6": False})
    do("sw_interface_set_table", sw_if_index=lo2, is_ipv6=False, vrf_id=10)
    do("sw_interface_set_table", sw_if_index=lo, is_ipv6=False, vrf_id=10)
    dump("ip_table_dump", lambda d: (d.table.table_id, d.table.is_ip6, d.table.name))
    # routes
    path = {"sw_if_index": lo, "nh": {"address": {"ip4": "10.0.0.5"}}}
    path2 = {"sw_if_index": lo, "nh": {"address": {"ip4": "10.0.0.6"}}}
    do("ip_route_add_del", is_add=True, is_multipath=False, route=route("10.2.0.0/16", **path))
    do("ip_route_add_del", is_add=True, is_multipath=True, route=route("10.2.0.0/16", **path2))
    api_routes()
    api_routes(v6=True)
    api_routes(table=10)
    do("ip_route_add_del", is_add=False, is_multipath=True, route=route("10.2.0.0/16", **path2))
    do("ip_route_add_del", is_add=True, is_multipath=False, route=route("10.3.0.0/16", table=11, **path))
    do("ip_route_add_del", is_add=True, is_multipath=False, route=route("10.3.0.0/16", sw_if_index=77))
    do("ip_route_add_del", is_add=True, is_multipath=False, route=route("10.3.0.0/16"))
    do("ip_route_add_del", is_add=False, is_multipath=False, route=route("10.2.0.0/16"))
    do("ip_route_add_del", is_add=False, is_multipath=False, route=route("10.2.0.0/16"))
    api_routes()
    # neighbours, proxy ARP, unnumbered
    n = {"sw_if_index": lo, "ip_address": "10.0.0.7", "mac_address": "02:00:00:00:00:07", "flags": 1}
    for is_add in (True, True, False, False):
        do("ip_neighbor_add_del", is_add=is_add, neighbor=n)
    for enable in (False, True, True):
        do("proxy_arp_intfc_enable_disable", sw_if_index=lo, enable=enable)
    dump("proxy_arp_intfc_dump", lambda d: d.sw_if_index)
    do("sw_interface_set_unnumbered", sw_if_index=lo, unnumbered_sw_if_index=lo2, is_add=True)
    do("sw_interface_set_unnumbered", sw_if_index=99, unnumbered_sw_if_index=lo2, is_add=True)
    do("sw_interface_set_unnumbered", sw_if_index=lo, unnumbered_sw_if_index=99, is_add=True)
    dump("ip_unnumbered_dump", lambda d: (d.sw_if_index, d.ip_sw_if_index), sw_if_index=ALL)
    dump("ip_address_dump", lambda d: str(d.prefix), sw_if_index=lo2, is_ipv6=False)
    # ACL
    a = do("acl_add_replace", acl_index=ALL, tag="t", r=[rule(2, "10.0.0.0/8")])
    do("acl_add_replace", acl_index=0, tag="t2", r=[rule(1, "10.0.0.0/8"), rule(0, "0.0.0.0/0")])
    do("acl_add_replace", acl_index=5, r=[])
    do("acl_interface_set_acl_list", sw_if_index=lo, n_input=1, acls=[0])
    do("acl_interface_set_acl_list", sw_if_index=lo, n_input=1, acls=[3])
    do("acl_del", acl_index=0)
    dump("acl_dump", lambda d: (d.acl_index, d.tag, d.count), acl_index=ALL)
    dump("acl_interface_list_dump", lambda d: (d.sw_if_index, d.n_input, tuple(d.acls)), sw_if_index=ALL)
    do("acl_interface_set_acl_list", sw_if_index=lo, n_input=0, acls=[])
    do("acl_del", acl_index=0)
    do("acl_del", acl_index=0)
    assert a is not None
    # npol
    ips = do("npol_ipset_create", type=0).set_id                                 # type: ignore[union-attr]
    do("npol_ipset_add_del_members", set_id=ips, is_add=True, members=[{"val": {"address": "10.0.0.1"}}])
    do("npol_ipset_add_del_members", set_id=ips + 9, is_add=True, members=[])
    r = do("npol_rule_create", rule={"action": 1, "matches": [
        {"is_src": True, "type": 3, "data": {"set_id": {"set_id": ips}}}]}).rule_id   # type: ignore[union-attr]
    p = do("npol_policy_create", rules=[{"is_inbound": True, "rule_id": r}]).policy_id   # type: ignore[union-attr]
    conf = dict(num_rx_policies=1, num_tx_policies=0, total_ids=1, policy_default_rx=1, policy_default_tx=0,
                profile_default_rx=0, profile_default_tx=0)
    do("npol_configure_policies", sw_if_index=lo, policy_ids=[p], **conf)
    do("npol_configure_policies", sw_if_index=lo, policy_ids=[p + 7], **conf)
    do("npol_configure_policies", sw_if_index=99, policy_ids=[p], **conf)
    for name, key, ident in (("npol_policy_delete", "policy_id", p), ("npol_rule_delete", "rule_id", r),
                             ("npol_ipset_delete", "set_id", ips)):
        do(name, **{key: ident})
        do(name, **{key: ident})
    # cnat
    tr = {"vip": ep("10.96.0.10", 53), "ip_proto": 17, "paths": [{"dst_ep": ep("10.1.1.5", 53),
                                                                   "src_ep": ep("0.0.0.0", 0)}]}
    do("cnat_translation_update", translation=tr)
    do("cnat_translation_update", translation=tr)
    dump("cnat_translation_dump", lambda d: (d.translation.id, str(d.translation.vip.addr), d.translation.n_paths))
    do("cnat_translation_del", id=0)
    do("cnat_translation_del", id=0)
    do("cnat_get_snat_addresses")
    do("cnat_set_snat_addresses_v2", snat_ip4="192.0.2.1", snat_ip6="2001:db8::1", sw_if_index=ALL)
    do("cnat_get_snat_addresses")
    do("cnat_set_snat_policy", policy=2)
    for is_add in (1, 1, 0, 0):
        do("cnat_snat_policy_add_del_exclude_pfx", is_add=is_add, prefix="10.0.0.0/8")
    do("cnat_snat_policy_add_del_if", sw_if_index=lo, is_add=1, table=2)
    do("feature_cnat_enable_disable", sw_if_index=lo, enable_disable=True)
    # NAT44
    do("nat44_interface_add_del_feature", is_add=True, sw_if_index=lo, flags=32)
    do("nat44_ed_plugin_enable_disable", enable=True)
    do("nat44_ed_plugin_enable_disable", enable=True)
    do("nat44_interface_add_del_feature", is_add=True, sw_if_index=lo, flags=32)
    do("nat44_interface_add_del_feature", is_add=True, sw_if_index=lo, flags=32)
    do("nat44_interface_add_del_feature", is_add=False, sw_if_index=lo2, flags=32)
    do("nat44_add_del_address_range", first_ip_address="192.0.2.1", last_ip_address="192.0.2.1",
       vrf_id=ALL, is_add=True)
    do("nat44_add_del_address_range", first_ip_address="192.0.2.1", last_ip_address="192.0.2.1",
       vrf_id=ALL, is_add=True)
    dump("nat44_interface_dump", lambda d: (d.sw_if_index, int(d.flags)))
    dump("nat44_address_dump", lambda d: str(d.ip_address))
    do("nat44_ed_plugin_enable_disable", enable=False)
    do("nat44_ed_plugin_enable_disable", enable=False)
    # memif
    do("memif_socket_filename_add_del_v2", is_add=True, socket_id=5, socket_filename="/tmp/vppagent-test-m5.sock")
    do("memif_socket_filename_add_del_v2", is_add=True, socket_id=0, socket_filename="/tmp/x.sock")
    m = do("memif_create_v2", role=0, mode=0, id=1, socket_id=5, ring_size=2048, secret="s")
    do("memif_create_v2", role=0, mode=0, id=1, socket_id=5)
    do("memif_create_v2", role=0, mode=0, id=2, socket_id=9)
    do("memif_create_v2", role=0, mode=0, id=2, socket_id=5, ring_size=1000)
    dump("memif_dump", lambda d: (d.id, d.socket_id, d.ring_size, d.buffer_size, d.if_name))
    do("memif_socket_filename_add_del_v2", is_add=False, socket_id=5, socket_filename="")
    do("memif_delete", sw_if_index=m.sw_if_index)                               # type: ignore[union-attr]
    do("memif_socket_filename_add_del_v2", is_add=False, socket_id=5, socket_filename="")
    do("memif_socket_filename_add_del_v2", is_add=False, socket_id=5, socket_filename="")
    # teardown, then what VPP reported along the way
    do("delete_loopback", sw_if_index=lo2)
    do("delete_loopback", sw_if_index=lo2)
    do("delete_loopback", sw_if_index=0)
    do("tap_delete_v2", sw_if_index=lo)
    dump("sw_interface_dump", lambda d: (d.sw_if_index, d.interface_name))
    time.sleep(settle)
    out.append(("events", [(e.sw_if_index, int(e.flags), bool(e.deleted)) for e in c.poll_events()]))
    return out


def test_fake_transcript_is_self_consistent(vpp: VppConnection) -> None:
    t = dict(transcript(vpp))
    assert t["sw_interface_dump"] == [(0, "local0"), (1, "loop0")]
    assert t["events"][-1] == (2, 0, True)


@pytest.mark.vpp
@pytest.mark.skipif(not __import__("os").environ.get("VPP_BIN"), reason="VPP_BIN not set")
def test_the_fake_answers_like_a_real_vpp() -> None:
    from test_vpp_messages import running_vpp

    fake = FakeVpp()
    try:
        c = VppConnection(client_factory=fake.client_factory)
        c.connect()
        expected = transcript(c)
        c.disconnect()
    finally:
        fake.close()
    with running_vpp() as vpp:
        c = VppConnection(vpp.socket)
        c.connect()
        try:
            real = transcript(c, settle=0.5)
        finally:
            c.disconnect()
    diffs = [(i, f, r) for i, (f, r) in enumerate(zip(expected, real)) if f != r]
    assert not diffs, "\n".join(f"step {i}: fake {f} / VPP {r}" for i, f, r in diffs)
