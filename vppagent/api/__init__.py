"""The agent's gRPC API: dataplane sync/apply, CNI, health.

Importing this package is cheap (no grpc, no generated code). The generated
protobuf modules come from :func:`gen_modules`, which builds them on first use
when ``vppagent/api/gen/`` is missing or stale (a fresh checkout installed with
``pip install -e .`` works without a separate ``make`` step)::

    from vppagent.api import gen_modules
    g = gen_modules()
    g.dataplane_pb2.Update(...)

Main entry points (import from the submodules):

* :func:`vppagent.api.server.serve` - run the gRPC server for an ``AgentBackend``.
* :class:`vppagent.api.sync_hub.SyncHub` - state + fan-out behind the Sync RPC.
* :mod:`vppagent.api.convert` - model <-> protobuf conversion and validation.
* :mod:`vppagent.api.backend` - the ``AgentBackend`` protocol and CNI dataclasses.
"""

from __future__ import annotations

import importlib
import threading
from dataclasses import dataclass
from types import ModuleType

__all__ = ["GenModules", "gen_modules"]


@dataclass(frozen=True)
class GenModules:
    """The generated protobuf and gRPC modules."""

    dataplane_pb2: ModuleType
    dataplane_pb2_grpc: ModuleType
    cnibackend_pb2: ModuleType
    cnibackend_pb2_grpc: ModuleType
    health_pb2: ModuleType
    health_pb2_grpc: ModuleType
    ipam_pb2: ModuleType
    ipam_pb2_grpc: ModuleType


_MODULES = {
    "dataplane_pb2": "vppagent.api.gen.vppagent.v1.dataplane_pb2",
    "dataplane_pb2_grpc": "vppagent.api.gen.vppagent.v1.dataplane_pb2_grpc",
    "cnibackend_pb2": "vppagent.api.gen.cni.cnibackend_pb2",
    "cnibackend_pb2_grpc": "vppagent.api.gen.cni.cnibackend_pb2_grpc",
    "health_pb2": "vppagent.api.gen.grpc.health.v1.health_pb2",
    "health_pb2_grpc": "vppagent.api.gen.grpc.health.v1.health_pb2_grpc",
    "ipam_pb2": "vppagent.api.gen.vppagent.v1.ipam_pb2",
    "ipam_pb2_grpc": "vppagent.api.gen.vppagent.v1.ipam_pb2_grpc",
}

_lock = threading.Lock()
_cached: GenModules | None = None


def gen_modules() -> GenModules:
    """The generated modules, generating them first if missing or stale."""
    global _cached
    if _cached is not None:
        return _cached
    with _lock:
        if _cached is None:
            from vppagent.api import protogen

            protogen.ensure_generated()
            importlib.invalidate_caches()
            _cached = GenModules(**{k: importlib.import_module(v) for k, v in _MODULES.items()})
    return _cached
