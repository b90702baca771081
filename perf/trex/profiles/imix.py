"""TRex STL profile: IMIX (64/570/1518-byte UDP frames at 7:4:1 by packet rate).

The classic simple IMIX (average frame 353.83 bytes): a throughput closer to
real traffic than 64 bytes, still packet-rate bound on a software dataplane.
Each size is its own stream with a source-address/port flow range.
Importable without TRex (``describe`` is the stream plan used in tests).
"""

from __future__ import annotations

try:
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
IMIX = ((64, 7), (570, 4), (1518, 1))


def describe(direction: int = 0, flows: int = 1000, src_net: str = "16.0.0", dst: str = "48.0.0.1",
             dport: int = 12, **_: object) -> dict:
    """The stream plan: what ``get_streams`` builds, as plain data."""
    if flows < 1:
        raise ValueError(f"flows must be positive, got {flows}")
    src_min, src_max = f"{src_net}.1", f"{src_net}.254"
    if direction:
        src_min, src_max, dst = dst, dst, f"{src_net}.1"
    streams = [{"frame_size": size, "pps_weight": weight, "proto": "udp", "dst": dst, "dport": dport,
                "src_range": (src_min, src_max), "sport_range": (1025, 65535), "flows": flows}
               for size, weight in IMIX]
    total = sum(w for _, w in IMIX)
    return {"streams": streams, "avg_frame_size": sum(s * w for s, w in IMIX) / total}


class STLImix:
    def get_streams(self, direction: int = 0, **kwargs: object) -> list:
        if not HAVE_TREX:
            raise RuntimeError("TRex's client library (trex_stl_lib) is needed to build streams")
        out = []
        for spec in describe(direction, **kwargs)["streams"]:
            udp = UDP(sport=1025, dport=spec["dport"], chksum=0)     # 0: no checksum (ports vary per flow)
            base = Ether() / IP(src=spec["src_range"][0], dst=spec["dst"]) / udp
            pad = max(0, spec["frame_size"] - FCS - len(base)) * b"x"
            vm = STLScVmRaw([
                STLVmTupleGen(ip_min=spec["src_range"][0], ip_max=spec["src_range"][1],
                              port_min=spec["sport_range"][0], port_max=spec["sport_range"][1],
                              limit_flows=spec["flows"], name="tuple"),
                STLVmWrFlowVar(fv_name="tuple.ip", pkt_offset="IP.src"),
                STLVmWrFlowVar(fv_name="tuple.port", pkt_offset="UDP.sport"),
                STLVmFixIpv4(offset="IP"),
            ])
            # pps is relative: the runner's multiplier scales all streams together
            out.append(STLStream(packet=STLPktBuilder(pkt=base / pad, vm=vm),
                                 mode=STLTXCont(pps=spec["pps_weight"])))
        return out


def register() -> STLImix:
    return STLImix()
