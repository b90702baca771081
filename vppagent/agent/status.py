"""`vppagent status`: the running agent's state over its gRPC socket."""

from __future__ import annotations

import json
import sys

import grpc


def print_status(socket_path: str, as_json: bool = False) -> int:
    from vppagent.api import gen_modules

    gen = gen_modules()
    pb, pb_grpc = gen.dataplane_pb2, gen.dataplane_pb2_grpc
    channel = grpc.insecure_channel(f"unix://{socket_path}")
    try:
        reply = pb_grpc.DataplaneStub(channel).GetStatus(pb.StatusRequest(), timeout=5)
    except grpc.RpcError as exc:
        print(f"vppagent: cannot reach the agent at {socket_path}: {exc.details() or exc.code().name}",
              file=sys.stderr)
        return 3
    finally:
        channel.close()
    from google.protobuf.json_format import MessageToDict

    data = MessageToDict(reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    if as_json:
        print(json.dumps(data, indent=2))
        return 0
    counts = data.get("counts", {})
    rows = [
        ("Agent", f"{data.get('agent_state', '?')} ({'ready' if data.get('ready') else 'not ready'})"),
        ("Node", data.get("node_name", "")),
        ("Version", data.get("version", "")),
        ("Uptime", f"{float(data.get('uptime_seconds', 0)):.0f} s"),
        ("Datastore", data.get("datastore_sync_state", "")),
        ("Dataplane", f"{data.get('dataplane_type', '')} ({'in sync' if data.get('dataplane_in_sync') else 'not in sync'})"),
    ]
    for key in sorted(counts):
        rows.append((key.replace("_", " ").capitalize(), str(counts[key])))
    width = max(len(k) for k, _ in rows)
    print("vppagent node status")
    print("+" + "-" * (width + 2) + "+" + "-" * 40)
    for k, v in rows:
        print(f"| {k:<{width}} | {v}")
    errors = data.get("errors") or []
    if errors:
        print("\nErrors:")
        for e in errors:
            print(f"  - {e}")
    return 0
