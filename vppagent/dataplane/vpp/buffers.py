"""Buffer admission: refuse a pod whose rings VPP could not fill.

A VPP interface keeps buffers in its rings (queues × ring size per
direction); when the pool runs dry VPP drops packets on every interface
("out of buffers", Calico/VPP issue #330).  The agent therefore adds up what
its pods hold and refuses a new pod that would not fit, with a message that
says so, instead of degrading everyone.
"""

from __future__ import annotations

import logging
from typing import Iterable

from vppagent.dataplane.base import WiringError
from vppagent.dataplane.vpp.config import BufferAdmission

log = logging.getLogger(__name__)
AF_PACKET_RX_BATCH = 256          # af_packet copies out of its own mmap ring: one frame of buffers per queue


def demand(kind: str, rx_queues: int, tx_queues: int, ring_size: int) -> int:
    if kind == "af_packet":
        return rx_queues * AF_PACKET_RX_BATCH
    return (rx_queues + tx_queues) * ring_size


def free_from_stats(socket_path: str) -> int | None:
    """Free buffers across pools from VPP's stats segment (None when unreadable)."""
    try:
        from vpp_papi.vpp_stats import VPPStats
        stats = VPPStats(socket_path)
        stats.connect()
        try:
            values = stats.dump(stats.ls(["^/buffer-pools/"]))
        finally:
            stats.disconnect()
    except Exception as exc:   # stats are an optimisation; fall back to accounting
        log.warning("cannot read VPP buffer stats from %s: %s", socket_path, exc)
        return None
    free = [v for k, v in values.items() if k.endswith("/available")]
    return int(sum(free)) if free else None


def admit(cfg: BufferAdmission, new: int, existing: Iterable[int], ifname: str) -> None:
    """Raise ``WiringError`` when ``new`` more buffers do not fit."""
    if not cfg.enabled:
        return
    held = sum(existing)
    free = free_from_stats(cfg.stats_socket) if cfg.stats_socket else None
    if free is None:
        free = cfg.buffers - held
    if new > free - cfg.reserve:
        raise WiringError(
            f"out of buffers: {ifname} needs {new} VPP buffers for its rings, {max(free, 0)} are free and "
            f"{cfg.reserve} are kept in reserve (pods hold {held}); use fewer queues or smaller rings "
            f"(annotations vpp.vppagent.io/queues, vpp.vppagent.io/ring-size) or give VPP more buffers "
            f"(buffers-per-numa)")
