"""IPAM over gRPC: the server side (in the sync layer) and a node agent's client.

Node agents in ``datastore: {type: sync}`` mode never touch the datastore;
they ask the sync layer, which owns the blocks, knows the pools and every
node's labels, and remembers which pod each address is for.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping, Protocol

import grpc

from vppagent.api import gen_modules
from vppagent.ipam.blocks import IPAddress, IPAMError, PoolExhaustedError
from vppagent.model.errors import ValidationError
from vppagent.model.resources import IPPool

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface


class IpamBackend(Protocol):
    def ipam_assign(self, node: str, handle: str, attrs: dict[str, str],
                    avoid: list[IPAddress]) -> list[IPInterface]: ...

    def ipam_release(self, node: str, handle: str) -> list[IPAddress]: ...

    def ipam_addresses(self, handle: str) -> list[IPAddress]: ...


def _base():  # the generated servicer class, resolved lazily (protogen on first use)
    return gen_modules().ipam_pb2_grpc.IpamServicer


def make_ipam_service(backend: IpamBackend) -> Any:
    """A ``vppagent.v1.Ipam`` servicer calling ``backend``."""
    pb = gen_modules().ipam_pb2

    class IpamService(_base()):  # type: ignore[misc, valid-type]
        def _run(self, context: grpc.ServicerContext, fn: Any) -> Any:
            try:
                return fn()
            except ValidationError as exc:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except PoolExhaustedError as exc:
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(exc))
            except IPAMError as exc:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))

        def Assign(self, request: Any, context: grpc.ServicerContext) -> Any:
            def run() -> Any:
                if not request.node:
                    raise ValidationError("node", "node is required")
                if not request.handle:
                    raise ValidationError("handle", "handle (the container id) is required")
                avoid = []
                for i, a in enumerate(request.avoid):
                    try:
                        avoid.append(ipaddress.ip_address(a))
                    except ValueError:
                        raise ValidationError(f"avoid[{i}]", f"invalid IP address {a!r}") from None
                got = backend.ipam_assign(request.node, request.handle, dict(request.attributes), avoid)
                return pb.AssignReply(addresses=[str(i) for i in got])
            return self._run(context, run)

        def Release(self, request: Any, context: grpc.ServicerContext) -> Any:
            def run() -> Any:
                if not request.handle:
                    raise ValidationError("handle", "handle (the container id) is required")
                freed = backend.ipam_release(request.node, request.handle)
                return pb.ReleaseReply(addresses=[str(a) for a in freed])
            return self._run(context, run)

        def Addresses(self, request: Any, context: grpc.ServicerContext) -> Any:
            return self._run(context, lambda: pb.AddressesReply(
                addresses=[str(a) for a in backend.ipam_addresses(request.handle)]))

    return IpamService()


def add_ipam_service(backend: IpamBackend, server: grpc.Server) -> None:
    gen_modules().ipam_pb2_grpc.add_IpamServicer_to_server(make_ipam_service(backend), server)


class RemoteIPAM:
    """The ``IPAM`` methods the agent uses, answered by the sync layer.

    Pools and node labels are the sync layer's business, so the arguments
    the local allocator needs are accepted and ignored.
    """

    def __init__(self, channel: grpc.Channel, node: str, timeout: float = 10.0) -> None:
        g = gen_modules()
        self._pb = g.ipam_pb2
        self._stub = g.ipam_pb2_grpc.IpamStub(channel)
        self.node = node
        self.timeout = timeout

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code, detail = exc.code(), exc.details()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                raise PoolExhaustedError(detail) from None
            raise IPAMError(f"sync layer IPAM: {detail or code.name}") from None

    def assign(self, handle: str, attrs: Mapping[str, str], pools: Iterable[IPPool] = (),
               node_labels: Mapping[str, str] | None = None, avoid: Iterable[IPAddress] = ()) -> list[IPInterface]:
        reply = self._call(self._stub.Assign, self._pb.AssignRequest(
            node=self.node, handle=handle, attributes=dict(attrs), avoid=[str(a) for a in avoid]))
        return [ipaddress.ip_interface(a) for a in reply.addresses]

    def release(self, handle: str) -> list[IPAddress]:
        reply = self._call(self._stub.Release, self._pb.ReleaseRequest(node=self.node, handle=handle))
        return [ipaddress.ip_address(a) for a in reply.addresses]

    def addresses(self, handle: str) -> list[IPAddress]:
        reply = self._call(self._stub.Addresses, self._pb.AddressesRequest(handle=handle))
        return [ipaddress.ip_address(a) for a in reply.addresses]
