"""kube-proxy semantics in the shared service plan."""

from __future__ import annotations

from vppagent.dataplane.service_plan import FrontendKind, plan_service, stale_udp_backends
from vppagent.manifests.loader import load_objects
from vppagent.model.updates import ServiceUpdate


def svc_update(spec_extra=None, endpoints=None, status=None):
    spec = {"type": "NodePort", "clusterIP": "10.96.0.10", "externalIPs": ["198.51.100.1"],
            "ports": [{"name": "web", "port": 80, "targetPort": 8080, "nodePort": 30080}]}
    spec.update(spec_extra or {})
    objs = [{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s", "namespace": "n"},
             "spec": spec, "status": status or {}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": "s-a", "namespace": "n", "labels": {"kubernetes.io/service-name": "s"}},
             "addressType": "IPv4", "ports": [{"name": "web", "port": 8080, "protocol": "TCP"}],
             "endpoints": endpoints if endpoints is not None else [
                 {"addresses": ["10.0.0.1"], "nodeName": "n1", "conditions": {"ready": True}},
                 {"addresses": ["10.0.0.2"], "nodeName": "n2", "conditions": {"ready": True}},
                 {"addresses": ["10.0.0.3"], "nodeName": "n1", "conditions": {"ready": False, "serving": True, "terminating": True}},
             ]}]
    svc, eps = load_objects(objs)
    return ServiceUpdate(svc.key, svc, (eps,))


def test_frontends_and_ready_backends():
    fes = plan_service(svc_update(), "n1")
    kinds = {f.kind: f for f in fes}
    assert set(kinds) == {FrontendKind.CLUSTER_IP, FrontendKind.EXTERNAL_IP, FrontendKind.NODE_PORT}
    assert [str(b.ip) for b in kinds[FrontendKind.CLUSTER_IP].backends] == ["10.0.0.1", "10.0.0.2"]
    assert kinds[FrontendKind.NODE_PORT].port == 30080 and kinds[FrontendKind.NODE_PORT].ip is None
    assert kinds[FrontendKind.NODE_PORT].masquerade_external
    assert not kinds[FrontendKind.CLUSTER_IP].masquerade_external


def test_external_traffic_local_uses_local_backends_without_snat():
    fes = plan_service(svc_update({"externalTrafficPolicy": "Local"}), "n1")
    np = next(f for f in fes if f.kind is FrontendKind.NODE_PORT)
    assert [str(b.ip) for b in np.backends] == ["10.0.0.1"] and not np.masquerade_external
    cluster = next(f for f in fes if f.kind is FrontendKind.CLUSTER_IP)
    assert len(cluster.backends) == 2


def test_terminating_fallback_and_reject():
    fes = plan_service(svc_update(endpoints=[
        {"addresses": ["10.0.0.3"], "nodeName": "n1", "conditions": {"ready": False, "serving": True, "terminating": True}}]), "n1")
    assert [str(b.ip) for b in fes[0].backends] == ["10.0.0.3"]
    fes = plan_service(svc_update(endpoints=[]), "n1")
    assert all(f.rejects for f in fes)


def test_affinity_and_lb_ips_and_stale_udp():
    u = svc_update({"type": "LoadBalancer", "sessionAffinity": "ClientIP",
                    "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
                   status={"loadBalancer": {"ingress": [{"ip": "203.0.113.9"}]}})
    fes = plan_service(u, "n1")
    assert {f.kind for f in fes} >= {FrontendKind.LOAD_BALANCER}
    assert all(f.affinity_timeout == 60 for f in fes)
    before = fes[0]
    after = plan_service(svc_update(endpoints=[{"addresses": ["10.0.0.1"], "nodeName": "n1"}]), "n1")[0]
    assert stale_udp_backends(before, after) == []   # TCP: nothing to flush
