"""The agent daemon end to end: file datastore → calc → gRPC/health → dataplane."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
import yaml

from vppagent.agent.config import load_config, parse_config
from vppagent.agent.daemon import Agent
from vppagent.api import gen_modules
from vppagent.cli import main
from vppagent.model.errors import ValidationError
from vppagent.testbed.wait import wait_for

ROOT = Path(__file__).resolve().parent.parent


def http(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.fixture
def agent(tmp_path):
    manifests = tmp_path / "manifests"
    shutil.copytree(ROOT / "examples", manifests)
    config = parse_config({
        "nodeName": "node1",
        "datastore": {"type": "file", "path": str(manifests), "pollInterval": 0.05},
        "dataplane": {"type": "none"},
        "grpc": {"socket": str(tmp_path / "agent.sock")},
        "health": {"port": 0},
        "stateDir": str(tmp_path / "state"),
    })
    a = Agent(config)
    t = threading.Thread(target=a.run, kwargs={"install_signals": False}, daemon=True)
    t.start()
    assert a.running.wait(10)
    wait_for(a.ready, what="agent ready")
    yield a
    a.stop()
    t.join(10)
    assert not t.is_alive()


def stubs(sock):
    gen = gen_modules()
    channel = grpc.insecure_channel(f"unix://{sock}")
    return gen, channel, gen.dataplane_pb2_grpc.DataplaneStub(channel)


def test_health_readiness_metrics_status(agent, tmp_path):
    port = agent.health.port
    assert http(port, "/liveness")[0] == 200
    assert http(port, "/readiness") == (200, "ready\n")
    code, body = http(port, "/metrics")
    assert code == 200 and "vppagent_updates_applied_total" in body and "vppagent_sync_latency_seconds" in body
    status = json.loads(http(port, "/status")[1])
    assert status["counts"]["workload_endpoints"] == 4 and status["datastore_sync_state"] == "in-sync"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["status", "--socket", str(tmp_path / "agent.sock")]) == 0
    text = out.getvalue()
    assert "running (ready)" in text and "Workload endpoints" in text and "none (in sync)" in text
    assert oct(os.stat(tmp_path / "agent.sock").st_mode & 0o777) == "0o600"


def test_sync_stream_gets_snapshot_then_live_changes(agent, tmp_path):
    gen, channel, stub = stubs(tmp_path / "agent.sock")
    pb = gen.dataplane_pb2
    stream = stub.Sync(pb.SyncRequest(node_name="node1", client_name="test"), timeout=20)
    kinds = []
    for msg in stream:
        kinds.append(msg.update.WhichOneof("kind"))
        if kinds[-1] in ("in_sync",):
            break
    assert "workload_endpoint" in kinds and kinds[-1] == "in_sync"
    # A new policy file appears: the stream carries it.
    (Path(agent.config.datastore_path) / "99-new.yaml").write_text(yaml.safe_dump({
        "apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
        "metadata": {"name": "new-one"}, "spec": {"selector": "app == 'api'", "ingress": [{"action": "Allow"}]}}))
    for msg in stream:
        if msg.update.WhichOneof("kind") == "policy" and msg.update.policy.id.name == "new-one":
            break
    stream.cancel()
    channel.close()


def test_bad_manifest_reported_and_previous_state_kept(agent):
    before = agent.hub.counts()
    path = Path(agent.config.datastore_path) / "20-policies.yaml"
    path.write_text(path.read_text().replace("port: 9000, protocol: TCP", "port: 99999, protocol: TCP"))
    wait_for(lambda: agent.status()["errors"], what="error reported")
    (err,) = agent.status()["errors"]
    assert "20-policies.yaml#3 spec.ingress[0].ports[0].port" in err
    assert agent.hub.counts() == before
    code, body = http(agent.health.port, "/metrics")
    assert 'vppagent_errors_total{component="datastore"}' in body


def test_invalid_apply_is_rejected_and_nothing_changes(agent, tmp_path):
    gen, channel, stub = stubs(tmp_path / "agent.sock")
    pb = gen.dataplane_pb2
    before = agent.hub.sequence
    bad = pb.Update()
    bad.ipset.id = "s:x"
    bad.ipset.type = 1
    bad.ipset.members.extend(["10.0.0.1/32", "10.0.0.300/32"])
    with pytest.raises(grpc.RpcError) as exc:
        stub.Apply(pb.ApplyRequest(updates=[bad]), timeout=5)
    assert exc.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "updates[0].ipset.members[1]" in exc.value.details()
    assert agent.hub.sequence == before
    good = pb.Update()
    good.ipset.id = "s:orchestrator"
    good.ipset.type = 1
    good.ipset.members.append("10.0.0.1/32")
    stub.Apply(pb.ApplyRequest(updates=[good]), timeout=5)
    assert agent.hub.counts()["ipsets"] >= 1 and agent.hub.sequence > before
    dump = stub.Dump(pb.DumpRequest(), timeout=5)
    assert any(u.WhichOneof("kind") == "ipset" and u.ipset.id == "s:orchestrator"
               for u in dump.desired)
    assert json.loads(dump.actual_json)
    channel.close()


def test_cni_add_del_check_over_grpc(agent, tmp_path):
    gen = gen_modules()
    cni = gen.cnibackend_pb2
    channel = grpc.insecure_channel(f"unix://{tmp_path / 'agent.sock'}")
    stub = gen.cnibackend_pb2_grpc.CniDataplaneStub(channel)
    req = cni.AddRequest(interface_name="eth0", netns="/var/run/netns/x", container_id="c1")
    req.container_ips.add(address="10.65.9.9/32")
    req.workload.namespace = "shop"
    req.workload.pod = "newpod"
    req.workload.labels["app"] = "api"
    reply = stub.Add(req, timeout=5)
    assert reply.successful, reply.error_message
    assert reply.host_interface_name.startswith("cali")
    wait_for(lambda: agent.hub.counts()["workload_endpoints"] == 5, what="endpoint added")
    check = stub.Check(cni.CheckRequest(container_id="c1", netns="/var/run/netns/x", interface_name="eth0"), timeout=5)
    assert check.successful, check.error_message
    stub.Del(cni.DelRequest(container_id="c1", interface_name="eth0"), timeout=5)
    wait_for(lambda: agent.hub.counts()["workload_endpoints"] == 4, what="endpoint removed")
    assert stub.Del(cni.DelRequest(container_id="c1", interface_name="eth0"), timeout=5).successful
    channel.close()


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValidationError, match=r"config datastore.pth: unknown field"):
        parse_config({"datastore": {"type": "file", "pth": "x"}})
    with pytest.raises(ValidationError, match=r"health.port: 70000 is outside"):
        parse_config({"health": {"port": 70000}})
    bad = tmp_path / "agent.yaml"
    bad.write_text("nodeName: n\nbogus: 1\n")
    with pytest.raises(ValidationError, match="agent.yaml bogus: unknown field"):
        load_config(bad)


def test_sigterm_stops_gracefully(tmp_path):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(yaml.safe_dump({
        "nodeName": "n1", "datastore": {"type": "file", "path": str(ROOT / "examples"), "pollInterval": 0.1},
        "grpc": {"socket": str(tmp_path / "a.sock")}, "health": {"port": 0},
        "stateDir": str(tmp_path / "state")}))
    proc = subprocess.Popen([sys.executable, "-m", "vppagent", "run", "--config", str(cfg)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: (tmp_path / "a.sock").exists(), what="socket")
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            wait_for(lambda: main(["status", "--socket", str(tmp_path / "a.sock"), "--json"]) == 0
                 and '"ready": true' in out.getvalue(), what="ready")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        assert not (tmp_path / "a.sock").exists()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
