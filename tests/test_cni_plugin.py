"""The vppagent-cni plugin, run exactly as a container runtime runs it, against a live agent."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.linux_harness import IS_ROOT, ROOT_ONLY, Node
from vppagent.agent.config import parse_config
from vppagent.agent.daemon import Agent
from vppagent.api import gen_modules
from vppagent.api.backend import CniAddRequest, CniCheckRequest, CniDelRequest, CniError, CniIP, CniWorkload
from vppagent.cni import h2grpc, wire
from vppagent.cni.plugin import CniFailure, dumps, loads, parse_cni_args
from vppagent.dataplane.base import WiringError
from vppagent.dataplane.linux import LinuxDataplane
from vppagent.dataplane.none import NoneDataplane

REPO = Path(__file__).resolve().parent.parent
cni_pb2 = gen_modules().cnibackend_pb2


# ---------------------------------------------------------------- no agent needed

def test_wire_encoding_matches_the_generated_protobuf_classes():
    raw = wire.add_request(container_id="abc", netns="/var/run/netns/x", interface_name="eth0",
                           namespace="shop", pod="web", mtu=1400, ips=["10.1.2.3/32"],
                           options={"k": "v"})
    m = cni_pb2.AddRequest.FromString(raw)
    assert (m.container_id, m.netns, m.interface_name, m.settings.mtu) == ("abc", "/var/run/netns/x", "eth0", 1400)
    assert (m.workload.namespace, m.workload.pod, m.workload.endpoint) == ("shop", "web", "eth0")
    assert [ip.address for ip in m.container_ips] == ["10.1.2.3/32"] and dict(m.dataplane_options) == {"k": "v"}
    d = cni_pb2.DelRequest.FromString(wire.del_request(container_id="abc", netns="", interface_name="eth0"))
    assert (d.container_id, d.netns, d.interface_name) == ("abc", "", "eth0")
    reply = cni_pb2.AddReply(successful=True, host_interface_name="cali1", container_mac="02:00:00:00:00:01",
                             assigned_ips=[cni_pb2.IPConfig(address="10.65.0.1/32", gateway="169.254.1.1")],
                             host_mac="ee:ee:ee:ee:ee:ee")
    assert wire.add_reply(reply.SerializeToString()) == {
        "successful": True, "error_message": "", "host_interface_name": "cali1",
        "container_mac": "02:00:00:00:00:01", "host_mac": "ee:ee:ee:ee:ee:ee",
        "assigned_ips": [{"address": "10.65.0.1/32", "gateway": "169.254.1.1"}]}
    check = cni_pb2.CheckReply(successful=False, error_message="x", drift=["a", "b"])
    assert wire.check_reply(check.SerializeToString()) == {"successful": False, "error_message": "x",
                                                            "drift": ["a", "b"]}
    assert wire.varint(300) == b"\xac\x02" and wire.parse(wire.uint(1, 2**40)) == {1: [2**40]}


def test_hpack_decoder_handles_indexing_and_large_integers():
    d = h2grpc.HpackDecoder()
    block = (b"\x20\x88"                                            # size update, :status 200
             + b"\x40" + h2grpc._str("grpc-status") + h2grpc._str("0")  # literal, incremental indexing
             + h2grpc._int(31, 4, 0) + h2grpc._str("application/grpc"))
    assert d.decode(block) == [(":status", "200"), ("grpc-status", "0"), ("content-type", "application/grpc")]
    d2 = h2grpc.HpackDecoder()
    d2.decode(b"\x40" + h2grpc._str("x-a") + h2grpc._str("1"))
    assert d2.decode(b"\xbe") == [("x-a", "1")]                      # index 62: newest dynamic entry
    assert h2grpc.HpackDecoder._read_int(h2grpc._int(1337, 5, 0), 0, 5) == (1337, 3)
    assert h2grpc._percent_decode("bad%20field%3A x") == "bad field: x"


def test_json_without_the_json_module():
    doc = {"a": [1, 2.5, True, None, "é\n"], "b": {"c": "d"}}
    assert json.loads(dumps(doc)) == doc and loads(json.dumps(doc)) == doc
    with pytest.raises(ValueError):
        loads('{"a": 1} trailing')


def test_cni_args_parsing():
    assert parse_cni_args("IgnoreUnknown=1;K8S_POD_NAME=web;FOO=bar") == {
        "IgnoreUnknown": "1", "K8S_POD_NAME": "web", "FOO": "bar"}
    with pytest.raises(CniFailure, match="unknown CNI_ARGS key"):
        parse_cni_args("K8S_POD_NAME=web;FOO=bar")
    with pytest.raises(CniFailure, match="expected KEY=VALUE"):
        parse_cni_args("garbage")


def test_the_plugin_imports_neither_grpc_nor_protobuf_nor_json():
    code = (f"import sys; sys.path.insert(0, {str(REPO)!r}); import vppagent.cni.plugin; "
            "print(' '.join(sorted(sys.modules)))")
    mods = set(subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True,
                              check=True).stdout.split())
    assert not {m for m in mods if m.split(".")[0] in {"grpc", "google", "json", "re", "pyroute2", "yaml",
                                                         "typing", "ipaddress", "vppagent.api"}}
    assert "vppagent.api" not in mods


def _run_plugin(argv, env, stdin=b'{"cniVersion": "1.0.0"}'):
    return subprocess.run(argv, input=stdin, env=env, capture_output=True, timeout=60)


def test_version_from_every_entry_point(tmp_path):
    from vppagent.cni.install import write_launcher

    launcher = write_launcher(tmp_path, "vppagent-cni")
    entry_points = [[launcher], [sys.executable, "-m", "vppagent.cni"]]
    console = Path(sys.executable).parent / "vppagent-cni"
    if console.exists():
        entry_points.append([str(console)])
    for argv in entry_points:
        proc = _run_plugin(argv, {"CNI_COMMAND": "VERSION", "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout) == {"cniVersion": "1.0.0",
                                           "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]}
    proc = _run_plugin([launcher], {"CNI_COMMAND": "VERSION"}, stdin=b"")
    assert json.loads(proc.stdout)["cniVersion"] == "1.1.0"


# ---------------------------------------------------------------- with an agent

def root(fn):
    """Mark a test as needing root (skipped otherwise)."""
    for mark in ROOT_ONLY:
        fn = mark(fn)
    return fn


@pytest.fixture(scope="module")
def node():
    if not IS_ROOT:
        pytest.skip("needs root (network namespaces)")
    with Node("none") as n:
        n.write_manifest("pods", [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}},
            # The manifest claims an address; the endpoint must get IPAM's instead.
            {**n.pod_manifest("shop", "web", {"app": "web"}, [("http", 8080, "TCP")]),
             "status": {"podIPs": [{"ip": "10.99.9.9"}]}},
        ])
        yield n


@root
def test_add_check_del_round_trip(node):
    pod = node.add_pod("shop", "web", manifest=False)
    r = pod.result
    assert r["cniVersion"] == "1.0.0" and r["dns"] == {}
    host, container = r["interfaces"]
    assert host["name"].startswith("cali") and len(host["name"]) <= 15
    assert container == {"name": "eth0", "sandbox": pod.netns_path}      # dataplane none: no MAC
    (addr,) = r["ips"]
    assert addr["gateway"] == "169.254.1.1" and addr["interface"] == 1
    assert ipaddress.ip_interface(addr["address"]).ip in ipaddress.ip_network("10.65.0.0/16")
    assert addr["address"].endswith("/32") and r["routes"] == [{"dst": "0.0.0.0/0"}]
    ep = node.endpoints()["shop/web"]
    assert ep["nets"] == [addr["address"]] and ep["labels"]["app"] == "web"
    assert ep["interface_name"] == host["name"]

    # A repeated ADD of the same container is idempotent.
    again = node.cni("ADD", container_id=pod.container_id, netns=pod.netns_path, namespace="shop", pod="web")
    assert again.ok and again.output["ips"] == r["ips"]

    check = node.cni("CHECK", container_id=pod.container_id, netns=pod.netns_path, namespace="shop",
                     pod="web", config={"prevResult": r})
    assert check.ok and check.output is None, check.output
    wrong = dict(r, ips=[{"address": "10.65.200.1/32", "interface": 1}])
    check = node.cni("CHECK", container_id=pod.container_id, netns=pod.netns_path, namespace="shop",
                     pod="web", config={"prevResult": wrong})
    assert check.error["code"] == 101 and "the runtime expects addresses 10.65.200.1" in check.error["msg"]
    unknown = node.cni("CHECK", container_id="nope", netns=pod.netns_path, config={"prevResult": r})
    assert unknown.error["code"] == 3 and "not known to the agent" in unknown.error["msg"]

    assert node.delete_pod(pod, manifest=False).ok
    # Unwired again: the endpoint is whatever the datastore says (here the manifest's status).
    assert node.endpoints()["shop/web"]["nets"] == ["10.99.9.9/32"]
    assert node.cni("DEL", container_id=pod.container_id, netns="").ok            # idempotent
    assert node.cni("DEL", container_id="never-added", netns="").ok


@root
def test_versions_and_runtime_requested_addresses(node):
    netns = node.add_netns("pv")
    old = node.cni("ADD", container_id=f"{node.token}v04", netns=f"/var/run/netns/{netns}", namespace="shop",
                   pod="v04", config={"cniVersion": "0.4.0", "runtimeConfig": {"ips": ["10.66.1.5/24"]}})
    assert old.ok, old.output
    assert old.output["ips"] == [{"address": "10.66.1.5/32", "gateway": "169.254.1.1", "interface": 1,
                                  "version": "4"}]
    clash = node.cni("ADD", container_id=f"{node.token}v05", netns=f"/var/run/netns/{netns}", namespace="shop",
                     pod="other", config={"args": {"cni": {"ips": ["10.66.1.5"]}}})
    assert clash.error["code"] == 100 and "10.66.1.5 is already used by pod shop/v04" in clash.error["msg"]
    check = node.cni("CHECK", container_id=f"{node.token}v04", netns=f"/var/run/netns/{netns}",
                     config={"cniVersion": "0.3.1", "prevResult": old.output})
    assert check.error["code"] == 1 and check.error["cniVersion"] == "0.3.1"
    bad = node.cni("ADD", container_id="x1", netns="/x", namespace="a", pod="b", config={"cniVersion": "0.2.0"})
    assert bad.error["code"] == 1 and "incompatible CNI version 0.2.0" in bad.error["msg"]
    assert node.cni("DEL", container_id=f"{node.token}v04", netns=f"/var/run/netns/{netns}").ok


@root
@pytest.mark.parametrize("kwargs, code, msg", [
    ({"stdin": b"{not json"}, 6, "cannot decode the network configuration"),
    ({"stdin": b"[1, 2]"}, 6, "must be a JSON object"),
    ({"stdin": b'{"name": "x"}'}, 7, "has no cniVersion"),
    ({"config": {"mtu": "big"}}, 7, "invalid mtu 'big'"),
    ({"config": {"agentSocket": 5}}, 7, "invalid agentSocket"),
    ({"env": {"CNI_CONTAINERID": None}}, 4, "missing environment variable(s) CNI_CONTAINERID"),
    ({"env": {"CNI_CONTAINERID": "bad/id"}}, 4, "invalid CNI_CONTAINERID"),
    ({"env": {"CNI_IFNAME": "much-too-long-name0"}}, 4, "invalid CNI_IFNAME"),
    ({"env": {"CNI_ARGS": "K8S_POD_NAMESPACE=a;K8S_POD_NAME=b;FOO=1"}}, 4, "unknown CNI_ARGS key(s) FOO"),
    ({"env": {"CNI_ARGS": "IgnoreUnknown=1"}}, 4, "CNI_ARGS does not name the pod"),
    ({"env": {"CNI_COMMAND": "FROB"}}, 4, "unknown CNI_COMMAND 'FROB'"),
    ({"config": {"agentSocket": "/nonexistent/agent.sock"}}, 11,
     "cannot reach the vppagent agent at /nonexistent/agent.sock: No such file or directory"),
])
def test_errors_are_cni_error_objects_and_change_nothing(node, kwargs, code, msg):
    before = node.endpoints()
    netns = "/var/run/netns/" + node.netns
    call = node.cni("ADD", container_id=f"{node.token}bad", netns=netns, namespace="shop", pod="bad",
                    in_node=False, **kwargs)
    assert call.returncode != 0 and call.error is not None, call
    assert call.error["code"] == code and msg in call.error["msg"], call.error
    assert set(call.error) <= {"cniVersion", "code", "msg", "details"}
    assert node.endpoints() == before


@root
def test_status_and_gc(node):
    assert node.cni("STATUS", container_id="", config={"cniVersion": "1.1.0"}).output is None
    status = node.cni("STATUS", container_id="", config={"cniVersion": "1.1.0", "agentSocket": "/nonexistent"})
    assert status.error["code"] == 50 and "cannot reach the vppagent agent" in status.error["msg"]
    gc = node.cni("GC", container_id="", config={"cniVersion": "1.1.0", "cni.dev/valid-attachments": []})
    assert gc.ok


@root
def test_restart_dual_stack_exhaustion_and_del_after_restart():
    with Node("none", pools=["10.77.0.0/31", "fd77::/127"]) as node:
        a = node.add_pod("ns1", "a")
        assert [ip["address"] for ip in a.result["ips"]] == ["10.77.0.0/32", "fd77::/128"]
        assert a.result["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}]
        assert a.result["ips"][1]["gateway"] == "fe80::ecee:eeff:feee:eeee"
        node.add_pod("ns1", "b")
        netns = node.add_netns("pc")
        full = node.cni("ADD", container_id=f"{node.token}c", netns=f"/var/run/netns/{netns}",
                        namespace="ns1", pod="c")
        assert full.error["code"] == 100
        assert "no free IPv4 address" in full.error["msg"] and "10.77.0.0/31" in full.error["msg"]

        node.stop_agent()
        down = node.cni("DEL", container_id=a.container_id, netns=a.netns_path)
        assert down.error["code"] == 11 and "cannot reach the vppagent agent" in down.error["msg"]
        node.start_agent()
        assert node.endpoints()["ns1/a"]["nets"] == ["10.77.0.0/32", "fd77::/128"]   # persisted
        assert node.delete_pod(a).ok
        c = node.cni("ADD", container_id=f"{node.token}c", netns=f"/var/run/netns/{netns}",
                     namespace="ns1", pod="c")
        assert c.ok and c.output["ips"][0]["address"] == "10.77.0.0/32"           # released, reused


class PodsOnly(LinuxDataplane):
    """Linux pod wiring without any policy (the in-process agent's dataplane)."""

    name = "linux-pods"

    def on_update(self, update, state):
        pass


@root
def test_pods_wired_through_the_plugin_talk_and_check_sees_drift():
    with Node(PodsOnly, pools=["10.65.0.0/16", "fd65::/48"]) as node:
        a, b = node.add_pod("ns1", "a"), node.add_pod("ns1", "b")
        host, container = a.result["interfaces"]
        assert host["mac"] == "ee:ee:ee:ee:ee:ee" and container["mac"] and container["sandbox"] == a.netns_path
        assert node.endpoints()["ns1/a"]["mac"] == container["mac"]
        assert node.ping(a, b) and node.ping(a, b, family=6) and node.ping(b, "node")
        assert node.reachable(a, b, 8080) and node.reachable("client", a, 5353, proto="udp")
        assert node.reachable("client", b, 8443, family=6)

        node.exec_in("node", ["ip", "link", "del", host["name"]], check=True)
        check = node.cni("CHECK", container_id=a.container_id, netns=a.netns_path, config={"prevResult": a.result})
        assert check.error["code"] == 101 and f"host interface {host['name']} is missing" in check.error["msg"]
        again = node.cni("ADD", container_id=a.container_id, netns=a.netns_path, namespace="ns1", pod="a")
        assert again.ok and again.output["ips"] == a.result["ips"]            # same addresses, repaired
        assert node.cni("CHECK", container_id=a.container_id, netns=a.netns_path,
                        config={"prevResult": again.output}).ok
        assert node.ping("client", a)

        assert node.delete_pod(b).ok
        assert b.host_interface not in node.exec_in("node", ["ip", "-o", "link"]).stdout
        assert not node.ping(a, b, timeout=0.3)

        # A wiring failure gives back the addresses IPAM had assigned for it.
        gone = node.cni("ADD", container_id=f"{node.token}gone", netns="/var/run/netns/no-such-netns",
                        namespace="ns1", pod="gone")
        assert gone.error["code"] == 100 and "does not exist" in gone.error["msg"]
        c = node.add_pod("ns1", "c")
        assert c.result["ips"] == b.result["ips"]          # b's released addresses, not a new one


# ---------------------------------------------------------------- the agent's CNI flow, in-process

def _agent(tmp_path, dataplane=None) -> Agent:
    manifests = tmp_path / "manifests"
    manifests.mkdir(exist_ok=True)
    config = parse_config({"nodeName": "n1", "datastore": {"type": "file", "path": str(manifests)},
                           "grpc": {"socket": str(tmp_path / "a.sock")}, "health": {"port": 0},
                           "stateDir": str(tmp_path / "state"), "ipam": {"defaultPools": ["10.80.0.0/24"]}})
    agent = Agent(config, dataplane=dataplane or NoneDataplane())
    agent.poll_once()
    return agent


def _write_pod(tmp_path, labels, status_ip="10.99.0.1"):
    doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web", "namespace": "shop", "labels": labels},
           "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}]},
           "status": {"podIPs": [{"ip": status_ip}]}}
    (tmp_path / "manifests" / "pod.yaml").write_text(yaml.safe_dump(doc))


def _add(agent, cid="c1", pod="web", ips=()):
    return agent.cni_add(CniAddRequest(container_id=cid, netns="/var/run/netns/x", interface_name="eth0",
                                       ips=tuple(ips), workload=CniWorkload(namespace="shop", pod=pod)))


def _wep(agent, pod="web"):
    eps = [r for (k, _), r in agent.graph.resources.items() if k == "WorkloadEndpoint" and r.pod == pod]
    return eps[0] if len(eps) == 1 else eps


def test_endpoint_merges_datastore_pod_with_ipam_addresses(tmp_path):
    agent = _agent(tmp_path)
    _write_pod(tmp_path, {"app": "web"})
    out = _add(agent)                         # the agent re-reads the datastore for a pod it does not know
    assert [str(ip.address) for ip in out.ips] == ["10.80.0.0/32"] and str(out.ips[0].gateway) == "169.254.1.1"
    ep = _wep(agent)
    assert [str(n) for n in ep.nets] == ["10.80.0.0/32"] and dict(ep.labels)["app"] == "web"
    _write_pod(tmp_path, {"app": "web2"}, status_ip="10.99.0.2")       # labels change, status lies
    os.utime(tmp_path / "manifests" / "pod.yaml", (1, 1))
    agent.poll_once()
    ep = _wep(agent)
    assert [str(n) for n in ep.nets] == ["10.80.0.0/32"] and dict(ep.labels)["app"] == "web2"
    (tmp_path / "manifests" / "pod.yaml").unlink()
    agent.poll_once()
    assert [str(n) for n in _wep(agent).nets] == ["10.80.0.0/32"]      # still wired: falls back to CNI data
    assert agent.cni_check(CniCheckRequest("c1", "/var/run/netns/x", "eth0",
                                           (("expected_ips", "10.80.0.0/32"),))) == []
    drift = agent.cni_check(CniCheckRequest("c1", "/var/run/netns/x", "eth0", (("expected_ips", "10.80.0.9"),)))
    assert "the runtime expects addresses 10.80.0.9" in drift[0]
    agent.cni_del(CniDelRequest("c1", "", "eth0"))
    assert _wep(agent) == [] and agent.ipam.addresses("c1") == []


def test_records_survive_a_restart_and_netns_path_ids_are_stored_safely(tmp_path):
    agent = _agent(tmp_path)
    _add(agent, cid="/var/run/netns/cni-1234", pod="calico")            # Calico's plugin: no container id
    _add(agent, cid="c2", pod="other")
    again = _agent(tmp_path)                                             # a new agent on the same state dir
    assert {str(n) for ep in (_wep(again, "calico"), _wep(again, "other")) for n in ep.nets} == {
        "10.80.0.0/32", "10.80.0.1/32"}
    assert _add(again, cid="c2", pod="other").ips == _add(agent, cid="c2", pod="other").ips   # idempotent
    again.cni_del(CniDelRequest("/var/run/netns/cni-1234", "", "eth0"))
    assert sorted(os.listdir(tmp_path / "state" / "workloads")) == ["c2.json"]
    assert str(_add(again, cid="c3", pod="third").ips[0].address) == "10.80.0.0/32"


def test_requested_addresses_conflicts_and_datastore_claims(tmp_path):
    agent = _agent(tmp_path)
    _write_pod(tmp_path, {}, status_ip="10.80.0.0")                     # an unwired pod claims .0
    agent.poll_once()
    assert str(_add(agent, cid="c1", pod="a").ips[0].address) == "10.80.0.1/32"
    fixed = _add(agent, cid="c2", pod="b", ips=[CniIP(ipaddress.ip_interface("10.80.0.7/24"))])
    assert [str(ip.address) for ip in fixed.ips] == ["10.80.0.7/32"] and agent.ipam.addresses("c2") == []
    with pytest.raises(CniError, match=r"address 10.80.0.7 is already used by pod shop/b \(container c2\)"):
        _add(agent, cid="c3", pod="c", ips=[CniIP(ipaddress.ip_interface("10.80.0.7/32"))])
    with pytest.raises(CniError, match="container c1 is already wired as shop/a"):
        _add(agent, cid="c1", pod="zzz")


class _FailingWire(NoneDataplane):
    def wire_workload(self, wiring):
        raise WiringError(f"cannot create {wiring.interface_name}: simulated")


def test_a_wiring_failure_releases_ipam_and_records_nothing(tmp_path):
    agent = _agent(tmp_path, _FailingWire())
    with pytest.raises(CniError, match="cannot create eth0: simulated"):
        _add(agent)
    assert agent.ipam.addresses("c1") == [] and agent.workloads.get("c1") is None and _wep(agent) == []
