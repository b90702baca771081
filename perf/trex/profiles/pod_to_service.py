"""TRex STL profile: pods to a Kubernetes Service (ClusterIP) through the node's dataplane.

Many pod source addresses and ports send to one service VIP and port, so
every packet goes through service load balancing (VPP cnat translations,
kube-proxy's DNAT) and creates or hits a session: ``flows`` sessions in all.
``proto=udp`` (default) measures forwarding with sessions; ``proto=tcp``
sends SYNs only, i.e. the session set-up rate.  Direction 1 is the return
side (the VIP answering the pods).  Importable without TRex.
"""

from __future__ import annotations

import ipaddress

try:
    from trex_stl_lib.api import (  # type: ignore[import-not-found]
        IP, TCP, UDP, CTRexVmInsFixHwCs, Ether, STLPktBuilder, STLScVmRaw, STLStream, STLTXCont,
        STLVmFixChecksumHw, STLVmFixIpv4, STLVmTupleGen, STLVmWrFlowVar,
    )
    HAVE_TREX = True
except ImportError:
    try:
        from trex.stl.api import (  # type: ignore[import-not-found,no-redef]
            IP, TCP, UDP, CTRexVmInsFixHwCs, Ether, STLPktBuilder, STLScVmRaw, STLStream, STLTXCont,
            STLVmFixChecksumHw, STLVmFixIpv4, STLVmTupleGen, STLVmWrFlowVar,
        )
        HAVE_TREX = True
    except ImportError:
        HAVE_TREX = False

FCS = 4


def describe(direction: int = 0, vip: str = "10.96.0.10", port: int = 80, proto: str = "udp",
             pods: str = "10.65.0.0/22", flows: int = 50_000, frame_size: int = 64, **_: object) -> dict:
    """The stream plan: what ``get_streams`` builds, as plain data."""
    if proto not in ("udp", "tcp"):
        raise ValueError(f"proto must be udp or tcp, got {proto!r}")
    net = ipaddress.ip_network(pods)
    first, last = str(net.network_address + 2), str(net.broadcast_address - 1)
    ipaddress.ip_address(vip)
    if not 1 <= port <= 65535:
        raise ValueError(f"port must be 1..65535, got {port}")
    if direction:
        return {"streams": [{"frame_size": frame_size, "pps_weight": 1, "proto": proto, "src_range": (vip, vip),
                             "sport_range": (port, port), "dst": first, "dport": 1025, "flows": flows}],
                "avg_frame_size": frame_size}
    return {"streams": [{"frame_size": frame_size, "pps_weight": 1, "proto": proto, "src_range": (first, last),
                         "sport_range": (1025, 65535), "dst": vip, "dport": port, "flows": flows}],
            "avg_frame_size": frame_size}


class STLPodToService:
    def get_streams(self, direction: int = 0, **kwargs: object) -> list:
        if not HAVE_TREX:
            raise RuntimeError("TRex's client library (trex_stl_lib) is needed to build streams")
        (spec,) = describe(direction, **kwargs)["streams"]
        l4 = (TCP(sport=1025, dport=spec["dport"], flags="S") if spec["proto"] == "tcp"
              else UDP(sport=1025, dport=spec["dport"], chksum=0))
        base = Ether() / IP(src=spec["src_range"][0], dst=spec["dst"]) / l4
        pad = max(0, spec["frame_size"] - FCS - len(base)) * b"x"
        vm = STLScVmRaw([
            STLVmTupleGen(ip_min=spec["src_range"][0], ip_max=spec["src_range"][1], port_min=spec["sport_range"][0],
                          port_max=spec["sport_range"][1], limit_flows=spec["flows"], name="tuple"),
            STLVmWrFlowVar(fv_name="tuple.ip", pkt_offset="IP.src"),
            STLVmWrFlowVar(fv_name="tuple.port", pkt_offset=f"{spec['proto'].upper()}.sport"),
            # UDP goes without a checksum (0 is valid for IPv4); a SYN's checksum is fixed per packet
            STLVmFixChecksumHw(l3_offset="IP", l4_offset="TCP", l4_type=CTRexVmInsFixHwCs.L4_TYPE_TCP)
            if spec["proto"] == "tcp" else STLVmFixIpv4(offset="IP"),
        ])
        return [STLStream(packet=STLPktBuilder(pkt=base / pad, vm=vm), mode=STLTXCont())]


def register() -> STLPodToService:
    return STLPodToService()
