"""Asking a running agent what it holds: gRPC status, endpoints, Apply; HTTP metrics.

grpc and the generated modules are imported on first use: most testbed users
only send packets.
"""

from __future__ import annotations

import json
import urllib.request
from typing import Any, Sequence

from vppagent.testbed.netns import call_in


def _grpc() -> tuple[Any, Any]:
    import grpc

    from vppagent.api import gen_modules

    return grpc, gen_modules()


def status(socket: str) -> dict:
    """``Dataplane.GetStatus`` as a dict (proto field names)."""
    from google.protobuf.json_format import MessageToDict

    grpc, g = _grpc()
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        reply = g.dataplane_pb2_grpc.DataplaneStub(ch).GetStatus(g.dataplane_pb2.StatusRequest(), timeout=10)
    return MessageToDict(reply, preserving_proto_field_name=True)


def endpoints(socket: str) -> dict[str, dict]:
    """Workload endpoints in the agent's desired state: "ns/pod" → fields (nets, labels, …)."""
    grpc, g = _grpc()
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        reply = g.dataplane_pb2_grpc.DataplaneStub(ch).Dump(g.dataplane_pb2.DumpRequest(), timeout=10)
    out = {}
    for u in reply.desired:
        if u.WhichOneof("kind") == "workload_endpoint":
            w = u.workload_endpoint
            out[f"{w.namespace}/{w.pod}"] = {
                "id": w.id, "node": w.node, "interface_name": w.interface_name, "mac": w.mac,
                "nets": list(w.nets), "labels": {kv.key: kv.value for kv in w.labels},
                "profile_ids": list(w.profile_ids),
            }
    return out


def actual(socket: str) -> dict:
    """The dataplane's own account (``Dump.actual_json``). The agent builds it on the thread that
    applies updates, so it also waits until any apply under way has finished."""
    grpc, g = _grpc()
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        reply = g.dataplane_pb2_grpc.DataplaneStub(ch).Dump(g.dataplane_pb2.DumpRequest(), timeout=30)
    return json.loads(reply.actual_json or "{}")


def apply(socket: str, updates: Sequence[Any]) -> None:
    """``Dataplane.Apply`` with ``vppagent.v1.Update`` messages; raises ``grpc.RpcError`` on refusal."""
    grpc, g = _grpc()
    with grpc.insecure_channel(f"unix:{socket}") as ch:
        g.dataplane_pb2_grpc.DataplaneStub(ch).Apply(g.dataplane_pb2.ApplyRequest(updates=list(updates)), timeout=10)


def metrics(netns: str, port: int, host: str = "127.0.0.1") -> str:
    """The agent's Prometheus text, fetched from inside the node netns."""
    def get() -> str:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
            return r.read().decode()

    return call_in(netns, get)


def metric_value(text: str, name: str, labels: str = "") -> float:
    """One sample of Prometheus text (``labels`` as written, e.g. ``component="datastore"``); 0 if absent."""
    want = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return 0.0
