"""The gRPC server on a temp unix socket with a fake backend: Apply/Remove
validation, Sync streaming, health, socket permissions, mutual TLS, CNI."""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest

from vppagent.api import gen_modules
from vppagent.api.backend import (
    AgentBackend, CniAddRequest, CniAddResult, CniCheckRequest, CniDelRequest, CniError, CniIP,
    CniPort, CniWorkload,
)
from vppagent.api.cni_service import add_request_to_proto
from vppagent.api.convert import key_to_proto, update_from_proto, update_to_proto
from vppagent.api.server import TLSConfig, serve
from vppagent.api.sync_hub import StatusEventBus, SyncHub
from vppagent.model.state import DataplaneState
from vppagent.model.updates import (
    InSync, IPSetRemove, IPSetType, IPSetUpdate, PolicyID, PolicyRemove, PolicyUpdate,
    RenderedPolicy,
)

g = gen_modules()
pb, pb_grpc = g.dataplane_pb2, g.dataplane_pb2_grpc
cni_pb2, cni_grpc = g.cnibackend_pb2, g.cnibackend_pb2_grpc
health_pb2, health_grpc = g.health_pb2, g.health_pb2_grpc
TIMEOUT = 10


class FakeBackend:
    def __init__(self, max_queue: int = 10_000) -> None:
        self.hub = SyncHub(max_queue=max_queue)
        self.events = StatusEventBus()
        self.ready = False
        self.calls: list[tuple[str, object]] = []
        self.pods: dict[str, CniAddRequest] = {}
        self.deleted: list[CniDelRequest] = []

    def apply(self, updates):
        self.calls.append(("apply", updates))
        self.hub.publish(updates, validate=True)

    def remove(self, keys):
        self.calls.append(("remove", keys))
        self.hub.publish(keys, validate=True)

    def status(self):
        return {
            "ready": self.ready, "agent_state": "running", "datastore_sync_state": "in-sync",
            "dataplane_type": "fake", "dataplane_in_sync": self.hub.in_sync,
            "errors": ["uplink flapping"], "uptime_seconds": 12.5, "node_name": "node1",
        }

    def dump(self):
        _, updates = self.hub.snapshot()
        return updates, json.dumps({"interfaces": ["tap0"]})

    def status_events(self):
        return self.events.subscribe()

    def cni_add(self, req: CniAddRequest) -> CniAddResult:
        if req.workload.pod == "hungry":
            raise CniError("out of buffers: need 4096, have 1024")
        self.pods[req.container_id] = req
        return CniAddResult("tap" + req.container_id[:8], "02:fe:00:00:00:01")

    def cni_del(self, req: CniDelRequest) -> None:
        self.deleted.append(req)
        self.pods.pop(req.container_id, None)

    def cni_check(self, req: CniCheckRequest) -> list[str]:
        if req.container_id in self.pods:
            return []
        return [f"no interface for container {req.container_id}"]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
def server(backend, tmp_path):
    handle = serve(backend, socket_path=str(tmp_path / "run" / "agent.sock"), poll_interval=0.1)
    yield handle
    handle.stop(0)


@pytest.fixture
def channel(server):
    ch = grpc.insecure_channel(f"unix:{server.socket_path}")
    yield ch
    ch.close()


@pytest.fixture
def stub(channel):
    return pb_grpc.DataplaneStub(channel)


def ipset(i: int, n: int = 1) -> IPSetUpdate:
    return IPSetUpdate(f"s{i}", IPSetType.NET, frozenset(f"10.{i % 256}.{j // 256}.{j % 256}/32" for j in range(n)))


def test_fake_backend_satisfies_protocol(backend):
    assert isinstance(backend, AgentBackend)


# ---------------------------------------------------------------- socket

def test_socket_mode_is_0600_and_parent_created(server):
    st = os.stat(server.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o600


def test_stale_socket_is_replaced_and_live_one_refused(backend, tmp_path):
    path = tmp_path / "agent.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # a socket file nobody listens on
    handle = serve(backend, socket_path=str(path))
    try:
        with pytest.raises(RuntimeError, match="already serving"):
            serve(backend, socket_path=str(path))
    finally:
        handle.stop(0)
    assert not path.exists()
    path.write_text("not a socket")
    with pytest.raises(RuntimeError, match="not a socket"):
        serve(backend, socket_path=str(path))


def test_tcp_without_tls_is_refused(backend, tmp_path):
    with pytest.raises(ValueError, match="without mutual TLS"):
        serve(backend, socket_path=str(tmp_path / "a.sock"), tcp_address="127.0.0.1:0")
    assert not (tmp_path / "a.sock").exists()


# ---------------------------------------------------------------- Apply / Remove

def test_apply_valid(stub, backend):
    req = pb.ApplyRequest(updates=[update_to_proto(ipset(1)), update_to_proto(InSync())])
    reply = stub.Apply(req, timeout=TIMEOUT)
    assert reply.applied == 2
    assert backend.calls == [("apply", [ipset(1), InSync()])]
    assert backend.hub.in_sync


def test_apply_invalid_field_is_rejected_before_backend(stub, backend):
    bad = update_to_proto(ipset(1))
    bad.ipset.members.append("10.0.0.300/32")
    req = pb.ApplyRequest(updates=[update_to_proto(ipset(2)), bad])
    with pytest.raises(grpc.RpcError) as info:
        stub.Apply(req, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "updates[1].ipset.members[1]: invalid CIDR '10.0.0.300/32'"
    assert backend.calls == []
    assert backend.hub.sequence == 0


def test_apply_dangling_reference_is_rejected_before_backend(stub, backend):
    m = pb.Update()
    m.policy.id.tier = "default"
    m.policy.id.name = "p"
    m.policy.inbound_rules.add(action=pb.ACTION_DENY, src_ip_set_ids=["missing"])
    with pytest.raises(grpc.RpcError) as info:
        stub.Apply(pb.ApplyRequest(updates=[m]), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "updates[0].policy.inbound_rules[0].src_ip_set_ids[0]: unknown IP set 'missing'" == info.value.details()
    assert backend.calls == []


def test_remove(stub, backend):
    pid = PolicyID("default", "ns/p")
    backend.hub.publish([ipset(1), PolicyUpdate(pid, RenderedPolicy())])
    keys = [key_to_proto(PolicyRemove(pid)), key_to_proto(IPSetRemove("s1"))]
    assert stub.Remove(pb.RemoveRequest(keys=keys), timeout=TIMEOUT).removed == 2
    assert backend.calls == [("remove", [PolicyRemove(pid), IPSetRemove("s1")])]
    assert backend.hub.counts()["ipsets"] == 0
    with pytest.raises(grpc.RpcError) as info:
        stub.Remove(pb.RemoveRequest(keys=[pb.ResourceKey(kind=pb.ResourceKey.POLICY, id="x")]), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "keys[0].tier: tier must not be empty"


def test_backend_failure_is_internal(stub, backend):
    def boom(updates):
        raise RuntimeError("vpp went away")
    backend.apply = boom
    with pytest.raises(grpc.RpcError) as info:
        stub.Apply(pb.ApplyRequest(updates=[update_to_proto(ipset(1))]), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert "vpp went away" in info.value.details()


# ---------------------------------------------------------------- status / dump / events

def test_get_status_and_dump(stub, backend):
    backend.hub.publish([ipset(1), ipset(2), InSync()])
    st = stub.GetStatus(pb.StatusRequest(), timeout=TIMEOUT)
    assert st.agent_state == "running" and st.dataplane_type == "fake" and st.dataplane_in_sync
    assert st.counts.ipsets == 2 and st.errors == ["uplink flapping"] and st.uptime_seconds == 12.5
    assert st.sequence == 3 and st.node_name == "node1" and not st.ready
    dump = stub.Dump(pb.DumpRequest(), timeout=TIMEOUT)
    assert [update_from_proto(u) for u in dump.desired] == [ipset(1), ipset(2), InSync()]
    assert json.loads(dump.actual_json) == {"interfaces": ["tap0"]}


def test_watch_status(stub, backend):
    backend.events.publish("vpp", "running", "pid 7", when=1700000000.5)
    stream = stub.WatchStatus(pb.StatusRequest(), timeout=TIMEOUT)
    first = next(stream)
    assert (first.component, first.state, first.message) == ("vpp", "running", "pid 7")
    assert first.time.ToNanoseconds() == 1700000000_500000000
    backend.events.publish("datastore", "in-sync")
    assert next(stream).component == "datastore"
    stream.cancel()


# ---------------------------------------------------------------- Sync

def test_sync_snapshot_insync_then_live(stub, backend):
    backend.hub.publish([ipset(1), ipset(2), InSync()])
    stream = stub.Sync(pb.SyncRequest(node_name="node1", client_name="test"), timeout=TIMEOUT)
    got = [next(stream) for _ in range(3)]
    assert [m.update.WhichOneof("kind") for m in got] == ["ipset", "ipset", "in_sync"]
    assert [m.sequence for m in got] == [3, 3, 3]
    assert got[0].resync and not got[1].resync
    stub.Apply(pb.ApplyRequest(updates=[update_to_proto(ipset(3)), update_to_proto(IPSetRemove("s1"))]),
               timeout=TIMEOUT)
    live = [next(stream), next(stream)]
    assert [m.sequence for m in live] == [4, 5]
    assert [update_from_proto(m.update) for m in live] == [ipset(3), IPSetRemove("s1")]
    assert [s.name for s in backend.hub.subscribers()] == ["test"]
    stream.cancel()
    deadline = time.monotonic() + 5
    while backend.hub.subscribers() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert backend.hub.subscribers() == []


def test_sync_wrong_node_is_refused(stub):
    with pytest.raises(grpc.RpcError) as info:
        next(stub.Sync(pb.SyncRequest(node_name="other"), timeout=TIMEOUT))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def _fold(messages, state=None):
    state = state or DataplaneState()
    for m in messages:
        if m.resync:
            state = DataplaneState()
        state.apply(update_from_proto(m.update))
    return state


def test_sync_slow_client_is_resnapshotted_while_other_keeps_up(tmp_path):
    backend = FakeBackend(max_queue=100)
    handle = serve(backend, socket_path=str(tmp_path / "s.sock"), poll_interval=0.1)
    # A small receive window so the slow client's stream backs up into its queue.
    opts = [("grpc.http2.lookahead_bytes", 8192), ("grpc.http2.bdp_probe", 0)]
    slow_ch = grpc.insecure_channel(f"unix:{handle.socket_path}", options=opts)
    fast_ch = grpc.insecure_channel(f"unix:{handle.socket_path}")
    try:
        backend.hub.publish([InSync()])
        slow = pb_grpc.DataplaneStub(slow_ch).Sync(pb.SyncRequest(client_name="slow"), timeout=60)
        fast = pb_grpc.DataplaneStub(fast_ch).Sync(pb.SyncRequest(client_name="fast"), timeout=60)
        slow_msgs = [next(slow)]
        fast_msgs = [next(fast)]
        total = 600
        fast_done = threading.Event()

        def read_fast():
            for m in fast:
                fast_msgs.append(m)
                if m.sequence == total + 1:
                    fast_done.set()
                    return

        reader = threading.Thread(target=read_fast)
        reader.start()
        for i in range(total):  # ~1.5 kB each
            backend.hub.publish([ipset(i % 50, 60)])
            if i % 20 == 19:
                time.sleep(0.01)
        assert fast_done.wait(30)
        reader.join(5)
        # The fast client saw every update, in order, without a re-snapshot.
        assert [m.sequence for m in fast_msgs] == list(range(1, total + 2))
        assert sum(m.resync for m in fast_msgs) == 1
        subs = {s.name: s for s in backend.hub.subscribers()}
        assert subs["slow"].overflows >= 1 and subs["fast"].overflows == 0
        # The slow one eventually gets a fresh snapshot + InSync and converges.
        # Read until the last update arrived and no snapshot is half-delivered.
        in_snapshot = False
        while True:
            m = next(slow)
            slow_msgs.append(m)
            in_snapshot = (in_snapshot or m.resync) and m.update.WhichOneof("kind") != "in_sync"
            if m.sequence == total + 1 and not in_snapshot:
                break
        assert sum(m.resync for m in slow_msgs) >= 2
        with backend.hub.locked_state() as truth:
            assert _fold(slow_msgs) == truth == _fold(fast_msgs)
        slow.cancel()
        fast.cancel()
    finally:
        slow_ch.close()
        fast_ch.close()
        handle.stop(0)


# ---------------------------------------------------------------- health

def test_health_check(channel, backend):
    h = health_grpc.HealthStub(channel)
    R = health_pb2.HealthCheckResponse
    assert h.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == R.NOT_SERVING
    backend.ready = True
    assert h.Check(health_pb2.HealthCheckRequest(), timeout=TIMEOUT).status == R.SERVING
    assert h.Check(health_pb2.HealthCheckRequest(service="vppagent.v1.Dataplane"), timeout=TIMEOUT).status == R.SERVING
    with pytest.raises(grpc.RpcError) as info:
        h.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def test_health_watch(channel, backend):
    h = health_grpc.HealthStub(channel)
    R = health_pb2.HealthCheckResponse
    stream = h.Watch(health_pb2.HealthCheckRequest(), timeout=TIMEOUT)
    assert next(stream).status == R.NOT_SERVING
    backend.ready = True
    assert next(stream).status == R.SERVING
    stream.cancel()


# ---------------------------------------------------------------- mutual TLS

def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl CLI not available")
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "1",
             "-subj", "/CN=vppagent-test-ca", cwd=d)
    (d / "server.ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", f"{name}.ext", cwd=d)
    return d


def test_mutual_tls_tcp(backend, tmp_path, certs):
    tls = TLSConfig(cert=certs / "server.crt", key=certs / "server.key", client_ca=certs / "ca.crt")
    handle = serve(backend, socket_path=str(tmp_path / "a.sock"), tcp_address="127.0.0.1:0", tls=tls)
    try:
        assert handle.tcp_port
        target = f"127.0.0.1:{handle.tcp_port}"
        good = grpc.ssl_channel_credentials(
            root_certificates=(certs / "ca.crt").read_bytes(),
            private_key=(certs / "client.key").read_bytes(),
            certificate_chain=(certs / "client.crt").read_bytes(),
        )
        with grpc.secure_channel(target, good) as ch:
            st = pb_grpc.DataplaneStub(ch).GetStatus(pb.StatusRequest(), timeout=TIMEOUT)
            assert st.node_name == "node1"
        # No client certificate: the handshake fails.
        anon = grpc.ssl_channel_credentials(root_certificates=(certs / "ca.crt").read_bytes())
        with grpc.secure_channel(target, anon) as ch:
            with pytest.raises(grpc.RpcError) as info:
                pb_grpc.DataplaneStub(ch).GetStatus(pb.StatusRequest(), timeout=5)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        # The unix socket still works alongside, with its 0600 mode.
        assert stat.S_IMODE(os.stat(handle.socket_path).st_mode) == 0o600
        with grpc.insecure_channel(f"unix:{handle.socket_path}") as ch:
            assert pb_grpc.DataplaneStub(ch).GetStatus(pb.StatusRequest(), timeout=TIMEOUT).node_name == "node1"
    finally:
        handle.stop(0)


# ---------------------------------------------------------------- CNI

def _calico_add_request(**over) -> object:
    """An AddRequest shaped the way Calico's grpc dataplane client builds it."""
    req = cni_pb2.AddRequest(
        interface_name="eth0", netns="/var/run/netns/cni-1234", desired_host_interface_name="cali12345",
        settings=cni_pb2.ContainerSettings(allow_ip_forwarding=False, mtu=1410),
        container_ips=[cni_pb2.IPConfig(address="10.65.0.3/32", gateway="<nil>"),
                       cni_pb2.IPConfig(address="fd20::3/128", gateway="fd20::1")],
        container_routes=["0.0.0.0/0", "::/0"],
        workload=cni_pb2.WorkloadIDs(
            name="node1-k8s-web-eth0", namespace="default", labels={"app": "web"},
            annotations={"a": "b"}, endpoint="eth0", node="node1", orchestrator="k8s", pod="web",
            ports=[cni_pb2.Port(name="http", protocol="TCP", port=8080)],
        ),
        dataplane_options={"type": "grpc"},
        container_id="abcdef0123456789",
    )
    for k, v in over.items():
        setattr(req, k, v)
    return req


def test_cni_add_del_check_round_trip(channel, backend):
    cni = cni_grpc.CniDataplaneStub(channel)
    reply = cni.Add(_calico_add_request(), timeout=TIMEOUT)
    assert reply.successful and reply.host_interface_name == "tapabcdef01"
    assert reply.container_mac == "02:fe:00:00:00:01"
    req = backend.pods["abcdef0123456789"]
    assert req == CniAddRequest(
        container_id="abcdef0123456789", netns="/var/run/netns/cni-1234", interface_name="eth0",
        host_interface_name="cali12345", mtu=1410, allow_ip_forwarding=False,
        ips=(CniIP(ipaddress.ip_interface("10.65.0.3/32"), None),
             CniIP(ipaddress.ip_interface("fd20::3/128"), ipaddress.ip_address("fd20::1"))),
        routes=(ipaddress.ip_network("0.0.0.0/0"), ipaddress.ip_network("::/0")),
        workload=CniWorkload(
            name="node1-k8s-web-eth0", namespace="default", labels=(("app", "web"),),
            annotations=(("a", "b"),), endpoint="eth0", node="node1", orchestrator="k8s", pod="web",
            ports=(CniPort("http", 6, 8080),),
        ),
        dataplane_options=(("type", "grpc"),),
    )
    # The dataclass converts back to the same wire message (modulo "<nil>").
    again = add_request_to_proto(req)
    assert again.container_ips[1].gateway == "fd20::1" and again.workload.ports[0].protocol == "TCP"

    check = cni.Check(cni_pb2.CheckRequest(
        interface_name="eth0", netns="/var/run/netns/cni-1234", container_id="abcdef0123456789"), timeout=TIMEOUT)
    assert check.successful and not check.drift
    check = cni.Check(cni_pb2.CheckRequest(
        interface_name="eth0", netns="/var/run/netns/x", container_id="other"), timeout=TIMEOUT)
    assert not check.successful and list(check.drift) == ["no interface for container other"]

    d = cni.Del(cni_pb2.DelRequest(interface_name="eth0", netns="", container_id="abcdef0123456789"),
                timeout=TIMEOUT)
    assert d.successful
    assert backend.deleted[0].netns == "" and "abcdef0123456789" not in backend.pods


def test_cni_backend_failure_is_reported_in_reply(channel):
    cni = cni_grpc.CniDataplaneStub(channel)
    req = _calico_add_request()
    req.workload.pod = "hungry"
    reply = cni.Add(req, timeout=TIMEOUT)
    assert not reply.successful and "out of buffers" in reply.error_message


@pytest.mark.parametrize("mutate, details", [
    (lambda r: r.container_ips[0].__setattr__("address", "10.65.0.300/32"),
     "container_ips[0].address: invalid address '10.65.0.300/32'"),
    (lambda r: r.container_ips[1].__setattr__("gateway", "10.0.0.1"), "container_ips[1].gateway: gateway 10.0.0.1 is not IPv6"),
    (lambda r: r.ClearField("container_id"), "container_id: container id is required"),
    (lambda r: r.__setattr__("netns", ""), "netns: network namespace is required"),
    (lambda r: r.__setattr__("interface_name", "eth0/../x"), "interface_name: invalid interface name"),
    (lambda r: r.container_routes.append("10.0.0.1/8"), "container_routes[2]: invalid route '10.0.0.1/8'"),
    (lambda r: r.workload.ports[0].__setattr__("protocol", "XTP"), "workload.ports[0].protocol: unknown protocol 'XTP'"),
    (lambda r: r.settings.__setattr__("mtu", 20), "settings.mtu: MTU 20 out of range"),
])
def test_cni_invalid_requests(channel, backend, mutate, details):
    cni = cni_grpc.CniDataplaneStub(channel)
    req = _calico_add_request()
    mutate(req)
    with pytest.raises(grpc.RpcError) as info:
        cni.Add(req, timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details().startswith(details)
    assert backend.pods == {}


def test_cni_del_and_check_validation(channel):
    cni = cni_grpc.CniDataplaneStub(channel)
    with pytest.raises(grpc.RpcError) as info:
        cni.Del(cni_pb2.DelRequest(interface_name="eth0", netns="/var/run/netns/x"), timeout=TIMEOUT)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == "container_id: container id is required"
    with pytest.raises(grpc.RpcError) as info:
        cni.Check(cni_pb2.CheckRequest(interface_name="eth0", container_id="c1"), timeout=TIMEOUT)
    assert info.value.details() == "netns: network namespace is required"


def test_calico_plugin_without_container_id(backend, tmp_path):
    """Calico's plugin sends no container id; opt in to the netns fallback."""
    handle = serve(backend, socket_path=str(tmp_path / "c.sock"), require_container_id=False)
    try:
        with grpc.insecure_channel(f"unix:{handle.socket_path}") as ch:
            cni = cni_grpc.CniDataplaneStub(ch)
            req = _calico_add_request()
            req.ClearField("container_id")
            assert cni.Add(req, timeout=TIMEOUT).successful
            assert "/var/run/netns/cni-1234" in backend.pods
            d = cni.Del(cni_pb2.DelRequest(interface_name="eth0", netns="/var/run/netns/cni-1234"), timeout=TIMEOUT)
            assert d.successful and backend.pods == {}
    finally:
        handle.stop(0)


# Field numbers of Calico's cni-plugin/pkg/dataplane/grpc/proto/cnibackend.proto.
CALICO_FIELDS = {
    "AddRequest": {"interface_name": 1, "netns": 2, "desired_host_interface_name": 3, "settings": 4,
                   "container_ips": 5, "container_routes": 6, "workload": 7, "dataplane_options": 8},
    "ContainerSettings": {"allow_ip_forwarding": 1, "mtu": 2},
    "IPConfig": {"address": 1, "gateway": 2},
    "WorkloadIDs": {"name": 1, "namespace": 2, "labels": 3, "annotations": 4, "endpoint": 5, "node": 6,
                    "orchestrator": 7, "pod": 8, "ports": 9},
    "Port": {"name": 1, "protocol": 2, "port": 3, "host_port": 4, "host_ip": 5},
    "AddReply": {"successful": 1, "error_message": 2, "host_interface_name": 3, "container_mac": 4},
    "DelRequest": {"interface_name": 1, "netns": 2, "dataplane_options": 3},
    "DelReply": {"successful": 1, "error_message": 2},
}


def test_cni_proto_is_wire_compatible_with_calico():
    fd = cni_pb2.DESCRIPTOR
    assert fd.package == "cni"
    for msg, fields in CALICO_FIELDS.items():
        desc = fd.message_types_by_name[msg]
        for name, number in fields.items():
            assert desc.fields_by_name[name].number == number, (msg, name)
        extra = {f.number for f in desc.fields if f.name not in fields}
        assert all(n >= 100 for n in extra), (msg, extra)
    svc = fd.services_by_name["CniDataplane"]
    assert {m.name for m in svc.methods} == {"Add", "Del", "Check"}
    assert svc.methods_by_name["Add"].input_type.name == "AddRequest"
