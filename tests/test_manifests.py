"""Manifests: every resource kind loads; bad input names file, document and field."""

from __future__ import annotations

import ipaddress
import textwrap

import pytest

from vppagent.manifests.loader import load_objects, load_path, load_strict
from vppagent.model.errors import ValidationError
from vppagent.model.resources import (
    Action, Direction, EndpointSlice, HostEndpoint, IPPool, Namespace, NetworkSet, Node, Policy,
    PortRange, Profile, Service, ServiceAccount, Tier, TierDefault, WorkloadEndpoint,
)


def write(tmp_path, name, text):
    (tmp_path / name).write_text(textwrap.dedent(text))


ALL_KINDS = """
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: sec}
spec: {order: 10, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sec.g}
spec:
  tier: sec
  selector: has(app)
  namespaceSelector: team == 'a'
  ingress: [{action: Deny, protocol: TCP, destination: {ports: [22, "1000:2000", http]}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: n, namespace: x}
spec:
  egress: [{action: Allow, protocol: ICMP, icmp: {type: 8, code: 0}, destination: {nets: [10.0.0.0/8]}}]
---
apiVersion: projectcalico.org/v3
kind: Profile
metadata: {name: prof}
spec: {labelsToApply: {a: b}, ingress: [{action: Allow}]}
---
apiVersion: projectcalico.org/v3
kind: HostEndpoint
metadata: {name: h, labels: {role: node}}
spec: {node: n1, interfaceName: eth0, expectedIPs: [192.0.2.1]}
---
apiVersion: projectcalico.org/v3
kind: WorkloadEndpoint
metadata: {name: w, namespace: x}
spec: {node: n1, pod: w, endpoint: eth0, interfaceName: caliw, ipNetworks: [10.0.0.9/32], profiles: [prof]}
---
apiVersion: projectcalico.org/v3
kind: IPPool
metadata: {name: pool}
spec: {cidr: 10.65.0.0/16, natOutgoing: true}
---
apiVersion: projectcalico.org/v3
kind: NetworkSet
metadata: {name: ns1, namespace: x, labels: {k: v}}
spec: {nets: [198.51.100.0/24]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkSet
metadata: {name: gs}
spec: {nets: [203.0.113.0/24]}
---
apiVersion: v1
kind: Namespace
metadata: {name: x}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: sa, namespace: x}
---
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: x, labels: {app: web}}
spec: {nodeName: n1, containers: [{name: c, ports: [{name: http, containerPort: 80}]}]}
status: {podIPs: [{ip: 10.0.0.1}, {ip: "fd00::1"}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: k, namespace: x}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}], ports: [{port: 80, endPort: 90}]}]
---
apiVersion: v1
kind: Service
metadata: {name: s, namespace: x}
spec: {type: NodePort, clusterIP: 10.96.0.10, ports: [{port: 80, targetPort: http, nodePort: 30080}],
       sessionAffinity: ClientIP, externalTrafficPolicy: Local}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: s-1, namespace: x, labels: {kubernetes.io/service-name: s}}
addressType: IPv4
endpoints: [{addresses: [10.0.0.1], conditions: {ready: true}, nodeName: n1}]
ports: [{name: "", port: 80, protocol: TCP}]
---
apiVersion: v1
kind: Node
metadata: {name: n1}
spec: {podCIDRs: [10.65.0.0/24]}
status: {addresses: [{type: InternalIP, address: 192.0.2.1}]}
"""


def test_every_kind_loads(tmp_path):
    write(tmp_path, "all.yaml", ALL_KINDS)
    resources = load_strict(tmp_path)
    kinds = {type(r) for r in resources}
    assert kinds == {Tier, Policy, Profile, HostEndpoint, WorkloadEndpoint, IPPool, NetworkSet,
                     Namespace, ServiceAccount, Service, EndpointSlice, Node}
    by_name = {getattr(r, "name", None): r for r in resources}
    g = by_name["sec.g"]
    assert g.namespace is None and g.tier == "sec"
    assert g.ingress[0].destination.ports.ranges == (PortRange(22, 22), PortRange(1000, 2000))
    assert g.ingress[0].destination.ports.names == ("http",)
    assert by_name["sec"].default_action is TierDefault.PASS
    n = by_name["n"]
    assert n.types == frozenset({Direction.EGRESS})     # only egress rules: Egress only
    k = by_name["knp.default.k"]
    assert k.order == 1000 and k.namespace == "x"
    assert k.ingress[0].source.not_nets == (ipaddress.ip_network("10.1.0.0/16"),)
    assert k.ingress[0].destination.ports.ranges == (PortRange(80, 90),)
    assert k.ingress[0].action is Action.ALLOW
    pod = next(r for r in resources if isinstance(r, WorkloadEndpoint) and r.pod == "p")
    assert dict(pod.labels)["projectcalico.org/namespace"] == "x"
    assert pod.profiles == ("kns.x", "ksa.x.default")
    assert len(pod.interface_name) <= 15 and pod.interface_name.startswith("cali")
    svc = next(r for r in resources if isinstance(r, Service))
    assert svc.session_affinity and svc.external_traffic_local and svc.ports[0].target_port == "http"
    ns = next(r for r in resources if isinstance(r, Namespace))
    assert ("kubernetes.io/metadata.name", "x") in ns.labels


@pytest.mark.parametrize("doc, where", [
    ("""
     apiVersion: projectcalico.org/v3
     kind: NetworkPolicy
     metadata: {name: p}
     spec: {ingress: [{action: Allow, protocol: TCP, destination: {ports: [80, "90:80"]}}]}
     """, "bad.yaml#1 spec.ingress[0].destination.ports[1]: invalid port range '90:80'"),
    ("""
     apiVersion: projectcalico.org/v3
     kind: NetworkPolicy
     metadata: {name: p}
     spec: {ingress: [{action: Allow, destinaton: {}}]}
     """, "bad.yaml#1 spec.ingress[0].destinaton: unknown field"),
    ("""
     apiVersion: projectcalico.org/v3
     kind: GlobalNetworkPolicy
     metadata: {name: p}
     spec: {selector: "app == web"}
     """, "bad.yaml#1 spec.selector: invalid selector at column 7"),
    ("""
     apiVersion: projectcalico.org/v3
     kind: NetworkPolicy
     metadata: {name: p}
     spec: {ingress: [{action: Accept}]}
     """, "bad.yaml#1 spec.ingress[0].action: invalid action 'Accept'"),
    ("""
     apiVersion: projectcalico.org/v3
     kind: NetworkPolicy
     metadata: {name: p}
     spec: {ingress: [{action: Allow, destination: {ports: [80]}}]}
     """, "bad.yaml#1 spec.ingress[0].destination.ports: ports need protocol"),
    ("""
     apiVersion: networking.k8s.io/v1
     kind: NetworkPolicy
     metadata: {name: p}
     spec:
       podSelector: {matchExpressions: [{key: a, operator: Maybe}]}
     """, "bad.yaml#1 spec.podSelector"),
    ("""
     apiVersion: networking.k8s.io/v1
     kind: NetworkPolicy
     metadata: {name: p}
     spec:
       podSelector: {}
       ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/16]}}]}]
     """, "bad.yaml#1 spec.ingress[0].from[0].ipBlock.except[0]: 11.0.0.0/16 is not inside"),
    ("""
     apiVersion: v1
     kind: Pod
     metadata: {name: p}
     status: {podIPs: [{ip: 10.0.0.300}]}
     """, "bad.yaml#1 status.podIPs[0].ip: invalid IP address"),
    ("""
     apiVersion: projectcalico.org/v3
     kind: NetworkPolicy
     metadata: {name: p}
     spec: {ingress: [{action: Allow, protocol: TCP, icmp: {type: 8}}]}
     """, "bad.yaml#1 spec.ingress[0].icmp: ICMP matches need protocol ICMP"),
    ("""
     apiVersion: projectcalico.org/v3
     kind: Widget
     metadata: {name: p}
     """, "bad.yaml#1 kind: unsupported projectcalico.org/v3 kind 'Widget'"),
])
def test_errors_name_file_document_and_field(tmp_path, doc, where):
    write(tmp_path, "bad.yaml", doc)
    with pytest.raises(ValidationError) as exc:
        load_strict(tmp_path)
    assert str(exc.value).startswith(where), str(exc.value)


def test_bad_document_rejected_whole_others_kept(tmp_path):
    write(tmp_path, "mixed.yaml", """
        apiVersion: v1
        kind: Namespace
        metadata: {name: good}
        ---
        apiVersion: projectcalico.org/v3
        kind: NetworkPolicy
        metadata: {name: half, namespace: good}
        spec:
          ingress:
            - action: Allow
            - action: Deny
              protocol: TCP
              destination: {ports: [70000]}
        """)
    result = load_path(tmp_path)
    assert [type(r).__name__ for r in result.resources] == ["Namespace"]
    (err,) = result.errors
    assert str(err).startswith("mixed.yaml#2 spec.ingress[1].destination.ports[0]: port 70000")


def test_yaml_syntax_error_names_line(tmp_path):
    write(tmp_path, "broken.yaml", "kind: [unclosed\n")
    (err,) = load_path(tmp_path).errors
    assert "broken.yaml" in str(err) and "line" in str(err)


def test_list_kind_and_multidoc():
    (ns,) = load_objects([{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "z"}}]}])
    assert ns.name == "z"


def test_k8s_policy_conversion_peers_and_ports():
    (p,) = load_objects([{
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "x", "namespace": "n"},
        "spec": {"podSelector": {}, "egress": [{
            "to": [{"namespaceSelector": {}}, {"podSelector": {"matchLabels": {"a": "b"}},
                                               "namespaceSelector": {"matchLabels": {"t": "u"}}}],
            "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]}}])
    assert p.types == frozenset({Direction.INGRESS, Direction.EGRESS})
    assert p.ingress == ()
    assert len(p.egress) == 4   # 2 peers x 2 protocols
    assert {r.protocol for r in p.egress} == {6, 17}
    assert str(p.egress[0].destination.namespace_selector) == "all()"
    assert str(p.egress[2].destination.selector) == "projectcalico.org/orchestrator == 'k8s' && a == 'b'"
