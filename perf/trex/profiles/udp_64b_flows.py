"""TRex STL profile: 64-byte UDP frames over many flows (RFC 2544 small-packet throughput).

Load it in TRex (``start -f udp_64b_flows.py -m 50% -t flows=100000``) or
through ``perf/trex/runner.py``.  ``flows`` distinct 5-tuples are cycled
(source address x source port, ``STLVmTupleGen``) so a flow-table based
dataplane (VPP's cnat/NAT sessions, conntrack) sees many sessions, not one.
Direction 1 swaps the address ranges (for the port pair's return side).
Importable without TRex (``describe`` is the stream plan used in tests).
"""

from __future__ import annotations

try:   # TRex loads profiles with its client library on the path; tests and tools do not have it
    from trex_stl_lib.api import (  # type: ignore[import-not-found]
        IP, UDP, Ether, STLPktBuilder, STLScVmRaw, STLStream, STLTXCont, STLVmFixIpv4, STLVmTupleGen,
        STLVmWrFlowVar,
    )
    HAVE_TREX = True
except ImportError:
    try:
        from trex.stl.api import (  # type: ignore[import-not-found,no-redef]
            IP, UDP, Ether, STLPktBuilder, STLScVmRaw, STLStream, STLTXCont, STLVmFixIpv4, STLVmTupleGen,
            STLVmWrFlowVar,
        )
        HAVE_TREX = True
    except ImportError:
        HAVE_TREX = False

FCS = 4


def describe(direction: int = 0, frame_size: int = 64, flows: int = 10_000, src_net: str = "16.0.0",
             dst: str = "48.0.0.1", dport: int = 12, **_: object) -> dict:
    """The stream plan: what ``get_streams`` builds, as plain data."""
    if frame_size < 64 or frame_size > 9216:
        raise ValueError(f"frame_size must be 64..9216, got {frame_size}")
    if flows < 1 or flows > 254 * 64511:
        raise ValueError(f"flows must be 1..{254 * 64511}, got {flows}")
    src_min, src_max = f"{src_net}.1", f"{src_net}.254"
    if direction:
        src_min, src_max, dst = dst, dst, f"{src_net}.1"
    return {"streams": [{"frame_size": frame_size, "pps_weight": 1, "proto": "udp", "dst": dst, "dport": dport,
                         "src_range": (src_min, src_max), "sport_range": (1025, 65535), "flows": flows}],
            "avg_frame_size": frame_size}


class STLS1:
    """64-byte UDP, many flows."""

    def get_streams(self, direction: int = 0, **kwargs: object) -> list:
        if not HAVE_TREX:
            raise RuntimeError("TRex's client library (trex_stl_lib) is needed to build streams")
        (spec,) = describe(direction, **kwargs)["streams"]
        udp = UDP(sport=1025, dport=spec["dport"], chksum=0)         # 0: no checksum (ports vary per flow)
        base = Ether() / IP(src=spec["src_range"][0], dst=spec["dst"]) / udp
        pad = max(0, spec["frame_size"] - FCS - len(base)) * b"x"
        vm = STLScVmRaw([
            STLVmTupleGen(ip_min=spec["src_range"][0], ip_max=spec["src_range"][1], port_min=spec["sport_range"][0],
                          port_max=spec["sport_range"][1], limit_flows=spec["flows"], name="tuple"),
            STLVmWrFlowVar(fv_name="tuple.ip", pkt_offset="IP.src"),
            STLVmWrFlowVar(fv_name="tuple.port", pkt_offset="UDP.sport"),
            STLVmFixIpv4(offset="IP"),
        ])
        return [STLStream(packet=STLPktBuilder(pkt=base / pad, vm=vm), mode=STLTXCont())]


def register() -> STLS1:
    return STLS1()
