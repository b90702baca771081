"""Deleting conntrack entries that would keep UDP flows on a backend that went away.

UDP has no connection to end: without this, a client that keeps sending from
the same port stays DNATed to the old backend for as long as it keeps talking
(the classic kube-proxy bug).
"""

from __future__ import annotations

import logging

from vppagent.dataplane.iptables.commands import CommandError, Runner
from vppagent.dataplane.service_plan import Backend, Frontend

log = logging.getLogger(__name__)


def forget_udp(runner: Runner, frontend: Frontend, backend: Backend) -> bool:
    """``conntrack -D`` the frontend's entries DNATed to ``backend``; False on failure (logged)."""
    argv = ["conntrack", "-D", "-f", "ipv4" if frontend.family == 4 else "ipv6", "-p", "udp"]
    if frontend.ip is not None:
        argv += ["--orig-dst", str(frontend.ip)]
    argv += ["--orig-port-dst", str(frontend.port), "--dst-nat", str(backend.ip)]
    try:
        proc = runner.run(argv, check=False)
    except CommandError as exc:
        log.warning("conntrack cleanup for %s failed: %s", frontend.service, exc)
        return False
    if proc.returncode not in (0, 1):   # 1: there was nothing to delete
        log.warning("conntrack cleanup for %s failed: %s", frontend.service, proc.stderr.strip())
        return False
    return True
