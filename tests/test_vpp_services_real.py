"""Services through a real VPP: cnat translations, rejects and SNAT with real
TCP and UDP between network namespaces.

One VPP per module, started from ``$VPP_BIN`` with a 4k-page startup.conf
in a temp dir (plugins from ``$VPP_PLUGIN_PATH``).  Namespaces hang off VPP
through af_packet on veth pairs (with ``CKSUM_GSO`` so VPP completes the
checksums Linux leaves partial, which cnat's incremental updates need):

- ``c``: an external client behind VPP's "uplink" 10.R.1.1/24; that address is
  also the node address NodePorts listen on;
- ``b0``, ``b1``: pods of this node, 10.R.1{0,1}.2/24, each on its own VPP
  interface with the pod role (cnat feature on, marked POD; ``b1`` is in a
  natOutgoing pool);
- ``b2``: 10.R.12.2/24 behind a non-pod VPP interface, standing for a pod
  on another node (the route to it leaves through the uplink, so that
  interface gets the uplink's role).

Every namespace serves TCP and UDP on 8080, answering with its name and the
client address it saw.  Each test programs its service with the descriptors
through a reconciler, checks traffic, and removes it again; VPP and the
namespaces are always torn down.

The module runs twice: ``fib`` (the cnat feature arc only on pod
interfaces: services match in the FIB) and ``uplink-feature`` (also on the
uplink, as natOutgoing and npol host endpoints need), where VPP 26.10
masquerades external clients only towards remote backends and node-address
rejects are left to the node (see ``services``).

Run with ``VPP_BIN=... VPP_PLUGIN_PATH=... pytest -m vpp``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from vppagent.dataplane.service_plan import Frontend, plan_service, stale_udp_backends
from vppagent.dataplane.vpp import services as svc
from vppagent.dataplane.vpp.services import CnatInterface, CnatInterfaceKey, OwnershipStore, SnatConfig
from vppagent.manifests.loader import load_objects
from vppagent.model.updates import ServiceUpdate
from vppagent.reconciler import Reconciler
from vppagent.vpp.connection import VppConnection

pytestmark = [pytest.mark.vpp,
              pytest.mark.skipif(not os.environ.get("VPP_BIN"), reason="VPP_BIN not set"),
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root for namespaces")]

NODE = "n1"
PLUGINS = ("af_packet", "tap", "cnat", "ping")
AF_PACKET_CKSUM_GSO = 2
# cnat's scanner looks at its whole session table for at most 100 us per
# tick; with the default table (16M sessions) a full pass, which is what
# expires the sessions of a removed backend, takes many minutes.
CNAT_CONFIG = "cnat { session-max 65536 session-cleanup-timeout 0.1 }"

SERVER = r'''
import socket, sys, threading
name, port, ready = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def udp(s):
    while True:
        d, a = s.recvfrom(2048)
        s.sendto(f"{name} {a[0]}".encode(), a)
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", port)); t.listen(128)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("0.0.0.0", port))
threading.Thread(target=udp, args=(u,), daemon=True).start()
open(ready, "w").close()
while True:
    c, a = t.accept()
    try:
        c.sendall(f"{name} {a[0]}\n".encode())
    finally:
        c.close()
'''

CLIENT = r'''
import json, socket, sys, time
proto, ip, port, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
sport = int(sys.argv[5]) if len(sys.argv) > 5 else 0
out = []
for _ in range(n):
    t = time.monotonic()
    try:
        if proto == "tcp":
            s = socket.create_connection((ip, port), timeout=3)
            d = s.recv(200).decode().strip()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.settimeout(2)
            if sport:
                s.bind(("0.0.0.0", sport))
            s.connect((ip, port)); s.send(b"?")
            d = s.recv(200).decode()
        s.close()
        out.append({"ok": d, "t": time.monotonic() - t})
    except OSError as e:
        out.append({"err": e.errno, "msg": str(e), "t": time.monotonic() - t})
print(json.dumps(out))
'''


def sh(cmd: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(cmd)}: {r.stderr.strip()}")
    return r


def poll(what: str, check: Callable[[], Any], timeout: float = 10.0, every: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


# --------------------------------------------------------------- environment

class Vpp:
    """``$VPP_BIN`` with a minimal startup.conf in a temp dir."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="vsvc-")
        self.socket = f"{self.dir}/api.sock"
        plugin_path = os.environ.get("VPP_PLUGIN_PATH", "")
        plugins = "".join(f" plugin {p}_plugin.so {{ enable }}" for p in PLUGINS)
        (Path(self.dir) / "startup.conf").write_text(
            f"unix {{ nodaemon nosyslog runtime-dir {self.dir} cli-listen {self.dir}/cli.sock"
            f" poll-sleep-usec 100 }}\n"
            f"api-segment {{ prefix vsvc{os.getpid()} }}\n"
            f"socksvr {{ socket-name {self.socket} }}\n"
            f"statseg {{ socket-name {self.dir}/stats.sock size 32m page-size 4k }}\n"
            f"memory {{ main-heap-size 512M main-heap-page-size 4k }}\n"
            f"buffers {{ buffers-per-numa 16384 page-size 4k }}\n"
            f"cpu {{ main-core 0 }}\n"
            f"{CNAT_CONFIG}\n"
            f"plugins {{ {'path ' + plugin_path if plugin_path else ''} plugin default {{ disable }}"
            f"{plugins} }}\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> VppConnection:
        with open(Path(self.dir) / "vpp.log", "ab") as log:
            self.proc = subprocess.Popen([os.environ["VPP_BIN"], "-c", f"{self.dir}/startup.conf"],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        conn = VppConnection(self.socket, client_name="svc-test", timeout=5.0)

        def connected() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"VPP exited: {self.log()[-2000:]}")
            if not os.path.exists(self.socket):
                return False
            try:
                conn.connect()
                return True
            except Exception:
                return False
        poll("VPP's API socket", connected, timeout=30, every=0.1)
        return conn

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (Path(self.dir) / "vpp.log").read_text(errors="replace")
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class Netns:
    name: str
    ip: str
    gateway: str
    sw_if_index: int


@dataclass
class Env:
    vpp: Vpp
    conn: VppConnection
    tag: str
    net: int                                   # second octet of every address here
    mode: str                                  # fib | uplink-feature
    namespaces: dict[str, Netns] = field(default_factory=dict)
    links: list[str] = field(default_factory=list)
    servers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def addr(self, third: int, host: int) -> str:
        return f"10.{self.net}.{third}.{host}"

    @property
    def node_ip(self) -> ipaddress.IPv4Address:
        return ipaddress.IPv4Address(self.addr(1, 1))

    def attach(self, short: str, third: int) -> Netns:
        """A namespace on its own VPP af_packet interface and /24."""
        ns, host = f"vsvc{self.tag}{short}", f"vs{self.tag}{short}"
        sh(["ip", "netns", "add", ns])
        self.namespaces[short] = Netns(ns, self.addr(third, 2), self.addr(third, 1), -1)
        sh(["ip", "link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", ns])
        self.links.append(host)
        sh(["ip", "link", "set", host, "up"])
        for cmd in (["link", "set", "lo", "up"], ["addr", "add", f"{self.addr(third, 2)}/24", "dev", "eth0"],
                    ["link", "set", "eth0", "up"], ["route", "add", "default", "via", self.addr(third, 1)]):
            sh(["ip", "-n", ns] + cmd)
        idx = self.conn.call("af_packet_create_v3", host_if_name=host, mode=1, use_random_hw_addr=True,
                             flags=AF_PACKET_CKSUM_GSO, num_rx_queues=1, num_tx_queues=1,
                             rx_frame_size=2048, tx_frame_size=2048, rx_frames_per_block=32,
                             tx_frames_per_block=32).sw_if_index
        self.conn.call("sw_interface_set_flags", sw_if_index=idx, flags=1)
        self.conn.call("sw_interface_add_del_address", sw_if_index=idx, is_add=True,
                       prefix=f"{self.addr(third, 1)}/24")
        self.namespaces[short].sw_if_index = idx
        return self.namespaces[short]

    def serve(self, short: str, scripts: Path) -> None:
        ready = scripts / f"ready-{short}"
        self.servers.append(subprocess.Popen(
            ["ip", "netns", "exec", self.namespaces[short].name, sys.executable, str(scripts / "server.py"),
             short, "8080", str(ready)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        poll(f"server in {short}", ready.exists)

    def probe(self, short: str, proto: str, ip: Any, port: int, n: int = 1, sport: int = 0) -> list[dict[str, Any]]:
        r = sh(["ip", "netns", "exec", self.namespaces[short].name, sys.executable,
                str(Path(self.vpp.dir) / "client.py"), proto, str(ip), str(port), str(n), str(sport)])
        return json.loads(r.stdout)

    def close(self) -> None:
        for p in self.servers:
            p.kill()
            with contextlib.suppress(Exception):
                p.wait(timeout=5)
        with contextlib.suppress(Exception):
            self.conn.disconnect()
        self.vpp.stop()
        for ns in self.namespaces.values():
            sh(["ip", "netns", "del", ns.name], check=False)
        for link in self.links:
            sh(["ip", "link", "del", link], check=False)


@pytest.fixture(scope="module", params=["fib", "uplink-feature"])
def env(request: pytest.FixtureRequest) -> Iterator[Env]:
    vpp = Vpp()
    scripts = Path(vpp.dir)
    (scripts / "server.py").write_text(SERVER)
    (scripts / "client.py").write_text(CLIENT)
    e: Env | None = None
    try:
        conn = vpp.start()
        e = Env(vpp, conn, secrets.token_hex(2), random.randint(100, 199), request.param)
        e.attach("c", 1)
        e.serve("c", scripts)
        for i in range(3):
            e.attach(f"b{i}", 10 + i)
            e.serve(f"b{i}", scripts)
        yield e
    finally:
        if e is not None:
            e.close()
        else:
            vpp.stop()


# ------------------------------------------------------------------ services

class Agent:
    """The service descriptors behind a reconciler, as the dataplane runs them."""

    def __init__(self, env: Env, store: OwnershipStore | None = None) -> None:
        self.env = env
        self.options = svc.ServiceOptions(node_address_rejects=env.mode == "fib")
        self.engine = Reconciler(seed=1)
        for d in svc.service_descriptors(env.conn, store=store, options=self.options):
            self.engine.register(d)
        self.engine.mark_in_sync()
        self.keys: set[Any] = set()

    def snat(self) -> SnatConfig:
        return SnatConfig(ip4=self.env.node_ip, pool_cidrs=(ipaddress.ip_network(self.env.addr(8, 0) + "/21"),),
                          service_cidrs=(ipaddress.ip_network("10.96.0.0/16"),), node_addresses=(self.env.node_ip,))

    def roles(self) -> dict[str, CnatInterface]:
        out = {"b0": CnatInterface(feature=True, pod=True),
               "b1": CnatInterface(feature=True, pod=True, nat_outgoing=frozenset({4}))}
        if self.env.mode == "uplink-feature":
            out["c"] = CnatInterface(feature=True)
            out["b2"] = CnatInterface(feature=True)      # "another node" is reached over the uplink
        return out

    def apply(self, frontends: list[Frontend]) -> None:
        state = svc.desired_service_state(frontends, [self.env.node_ip], snat=self.snat(), options=self.options)
        for short, role in self.roles().items():
            state[CnatInterfaceKey(self.env.namespaces[short].sw_if_index)] = role
        with self.engine.transaction() as txn:
            for key in self.keys - set(state):
                txn.delete(key)
            for key, value in state.items():
                txn.set(key, value)
        self.keys = set(state)
        report = txn.report
        assert report is not None and report.failed == 0 and not report.errors, self.engine.dump()

    def clear(self) -> None:
        with self.engine.transaction() as txn:
            for key in self.keys:
                txn.delete(key)
        self.keys = set()
        assert not self.env.conn.dump("cnat_translation_dump")


@pytest.fixture
def agent(env: Env) -> Iterator[Agent]:
    a = Agent(env)
    try:
        yield a
    finally:
        a.clear()


def service(env: Env, vip: str, backends: list[str], spec: dict[str, Any] | None = None,
            name: str = "s", nodes: dict[str, str] | None = None,
            protocols: tuple[str, ...] = ("TCP", "UDP")) -> list[Frontend]:
    """Frontends of one service (port 80 per protocol, NodePort 30000 + the
    VIP's last octet) whose endpoints are backend namespaces."""
    node_port = 30000 + int(vip.split(".")[-1])
    base = {"type": "NodePort", "clusterIP": vip,
            "ports": [{"name": p.lower(), "port": 80, "targetPort": 8080, "protocol": p, "nodePort": node_port}
                      for p in protocols]}
    base.update(spec or {})
    eps = [{"addresses": [env.namespaces[b].ip], "nodeName": (nodes or {}).get(b, NODE),
            "conditions": {"ready": True}} for b in backends]
    objs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "t"},
             "spec": base},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": f"{name}-1", "namespace": "t", "labels": {"kubernetes.io/service-name": name}},
             "addressType": "IPv4", "ports": [{"name": p.lower(), "port": 8080, "protocol": p} for p in protocols],
             "endpoints": eps}]
    s, e = load_objects(objs)
    return plan_service(ServiceUpdate(s.key, s, (e,)), NODE)


def answers(results: list[dict[str, Any]]) -> list[tuple[str, str]]:
    assert all("ok" in r for r in results), results
    return [tuple(r["ok"].split()) for r in results]      # type: ignore[misc]


_last_reject = [0.0]
# VPP's ip4-null node (ICMP prohibit/unreachable routes) sends at most one
# error per hash slot per 100 ms, and in 26.10 its hash has only 4 slots
# (ip_null_dpo.c indexes a 256-bit bitmap with bit c/64 of word c/64), so
# two rejects within 100 ms collide one time in four whatever their
# addresses.  A reject probe therefore starts a fresh 100 ms window.
REJECT_WINDOW = 0.12


def refused_quickly(env: Env, proto: str, ip: Any, port: int) -> dict[str, Any]:
    """The probe is refused (EHOSTUNREACH from VPP's ICMP prohibit) well
    before any timeout."""
    wait = _last_reject[0] + REJECT_WINDOW - time.monotonic()
    if wait > 0:
        time.sleep(wait)
    r = env.probe("c", proto, ip, port)[0]
    _last_reject[0] = time.monotonic()
    assert r.get("err") == 113 and r["t"] < 0.5, r
    return r


# --------------------------------------------------------------------- tests

def test_cluster_ip_spreads_tcp_and_udp_over_every_backend(env: Env, agent: Agent) -> None:
    agent.apply(service(env, "10.96.0.10", ["b0", "b1", "b2"], {"type": "ClusterIP"}))
    tcp = answers(env.probe("c", "tcp", "10.96.0.10", 80, n=40))
    assert {b for b, _ in tcp} == {"b0", "b1", "b2"}
    seen = {b: {ip for name, ip in tcp if name == b} for b in ("b0", "b1", "b2")}
    assert seen["b0"] == seen["b1"] == {env.namespaces["c"].ip}      # ClusterIP: no SNAT to local pods
    # to a remote pod, the K8S SNAT policy masquerades external clients when
    # the uplink has the cnat feature (kube-proxy does too, for non-pod clients)
    assert seen["b2"] == {str(env.node_ip) if env.mode == "uplink-feature" else env.namespaces["c"].ip}
    udp = answers(env.probe("c", "udp", "10.96.0.10", 80, n=40))
    assert {b for b, _ in udp} == {"b0", "b1", "b2"}


def test_session_affinity_keeps_a_client_on_one_backend(env: Env, agent: Agent) -> None:
    agent.apply(service(env, "10.96.0.11", ["b0", "b1", "b2"], {"type": "ClusterIP", "sessionAffinity": "ClientIP"}))
    tcp = answers(env.probe("c", "tcp", "10.96.0.11", 80, n=40))
    assert len({b for b, _ in tcp}) == 1, tcp
    udp = answers(env.probe("c", "udp", "10.96.0.11", 80, n=20))
    assert len({b for b, _ in udp}) == 1, udp


def test_services_without_endpoints_are_refused_at_once(env: Env, agent: Agent) -> None:
    empty = service(env, "10.96.0.12", [], {"externalIPs": [env.addr(50, 1)]})
    working = service(env, "10.96.0.13", ["b0"], {"type": "ClusterIP"}, name="w")
    agent.apply(empty + working)
    refused_quickly(env, "tcp", "10.96.0.12", 80)                 # ClusterIP: the guard route
    refused_quickly(env, "tcp", "10.96.0.13", 81)                 # unknown port of a working ClusterIP
    refused_quickly(env, "udp", env.addr(50, 1), 80)              # externalIP: its guard route
    if env.mode == "fib":                                         # left to the node otherwise
        refused_quickly(env, "tcp", env.node_ip, 30012)           # NodePort: a reject sink
        refused_quickly(env, "udp", env.node_ip, 30012)           # (another sink address)
    assert answers(env.probe("c", "tcp", "10.96.0.13", 80)) == [("b0", env.namespaces["c"].ip)]
    # endpoints arrive: the same frontends now answer
    agent.apply(service(env, "10.96.0.12", ["b1"], {"externalIPs": [env.addr(50, 1)]}) + working)
    assert answers(env.probe("c", "tcp", "10.96.0.12", 80)) == [("b1", env.namespaces["c"].ip)]
    assert answers(env.probe("c", "udp", env.node_ip, 30012)) == [("b1", masqueraded_local(env))]
    assert answers(env.probe("c", "tcp", env.addr(50, 1), 80)) == [("b1", masqueraded_local(env))]


def masqueraded_local(env: Env) -> str:
    """What a local backend of an externalTrafficPolicy Cluster frontend sees
    of an external client: the node address (kube-proxy's rule), except
    with the cnat feature on the uplink, where VPP 26.10 keeps the client's."""
    return str(env.node_ip) if env.mode == "fib" else env.namespaces["c"].ip


def test_node_port_source_address_cluster_vs_local(env: Env, agent: Agent) -> None:
    cluster = service(env, "10.96.0.14", ["b0"], name="cl")
    remote = service(env, "10.96.0.19", ["b2"], name="re", nodes={"b2": "n2"})
    local = service(env, "10.96.0.15", ["b1", "b2"], {"externalTrafficPolicy": "Local"}, name="lo",
                    nodes={"b2": "n2"})                           # b2 lives on another node
    agent.apply(cluster + remote + local)
    assert answers(env.probe("c", "tcp", env.node_ip, 30014, n=3)) == [("b0", masqueraded_local(env))] * 3
    assert answers(env.probe("c", "udp", env.node_ip, 30019, n=3)) == [("b2", str(env.node_ip))] * 3
    seen = answers(env.probe("c", "tcp", env.node_ip, 30015, n=10))
    assert set(seen) == {("b1", env.namespaces["c"].ip)}          # local backend only, client kept


def test_removed_udp_backend_loses_its_flows(env: Env, agent: Agent) -> None:
    agent.apply(service(env, "10.96.0.16", ["b0", "b1"], {"type": "ClusterIP"}, protocols=("UDP",)))
    sport = random.randint(20000, 30000)
    first = answers(env.probe("c", "udp", "10.96.0.16", 80, n=3, sport=sport))
    assert len({b for b, _ in first}) == 1                        # one flow, one backend
    gone = first[0][0]
    kept = "b1" if gone == "b0" else "b0"
    before = service(env, "10.96.0.16", ["b0", "b1"], {"type": "ClusterIP"}, protocols=("UDP",))
    after = service(env, "10.96.0.16", [kept], {"type": "ClusterIP"}, protocols=("UDP",))
    stale = stale_udp_backends(before[0], after[0])
    assert [str(b.ip) for b in stale] == [env.namespaces[gone].ip]
    assert svc.stale_sessions(env.conn, stale)                    # the flow's session exists...
    agent.apply(after)
    poll("VPP to expire the removed backend's sessions",       # ...and VPP drops it by itself
         lambda: not svc.stale_sessions(env.conn, stale), timeout=10)
    again = answers(env.probe("c", "udp", "10.96.0.16", 80, n=3, sport=sport))
    assert {b for b, _ in again} == {kept}


def test_hairpin_a_pod_reaches_itself_through_its_service(env: Env, agent: Agent) -> None:
    agent.apply(service(env, "10.96.0.17", ["b0"], {"type": "ClusterIP"}))
    got = answers(env.probe("b0", "tcp", "10.96.0.17", 80, n=3))
    assert got == [("b0", str(env.node_ip))] * 3                  # source-NATed, or Linux drops it
    got = answers(env.probe("b1", "tcp", "10.96.0.17", 80))
    assert got == [("b0", env.namespaces["b1"].ip)]               # another pod keeps its address


def test_nat_outgoing_pods_leave_with_the_node_address(env: Env, agent: Agent) -> None:
    agent.apply([])                                               # SNAT entry and interface roles
    client = env.namespaces["c"].ip
    assert answers(env.probe("b0", "tcp", client, 8080)) == [("c", env.namespaces["b0"].ip)]
    # b1's pool has natOutgoing; cnat source-NATs it on the uplink's output,
    # so only where the feature is enabled there
    seen = str(env.node_ip) if env.mode == "uplink-feature" else env.namespaces["b1"].ip
    assert answers(env.probe("b1", "tcp", client, 8080)) == [("c", seen)]
    assert answers(env.probe("b1", "udp", client, 8080)) == [("c", seen)]
    assert answers(env.probe("b1", "tcp", env.namespaces["b0"].ip, 8080)) == \
        [("b0", env.namespaces["b1"].ip)]                         # pod to pod: never NATed


def test_restarted_agent_adopts_without_touching_traffic(env: Env, tmp_path: Path) -> None:
    store = str(tmp_path / "cnat.json")
    first = Agent(env, OwnershipStore(store))
    fes = service(env, "10.96.0.18", ["b0", "b1"], {"sessionAffinity": "ClientIP"})
    try:
        first.apply(fes)
        before = answers(env.probe("c", "tcp", "10.96.0.18", 80, n=5))
        ids = {d.translation.id for d in env.conn.dump("cnat_translation_dump")}
        second = Agent(env, OwnershipStore(store))          # the agent restarts, VPP keeps running
        second.apply(fes)
        assert second.engine.history == []                  # everything adopted, nothing written
        assert {d.translation.id for d in env.conn.dump("cnat_translation_dump")} == ids
        assert answers(env.probe("c", "tcp", "10.96.0.18", 80, n=5)) == before
        second.apply([])
        assert not env.conn.dump("cnat_translation_dump")
    finally:
        if env.conn.dump("cnat_translation_dump"):
            first.clear()
