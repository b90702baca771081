"""Kubernetes objects for the multi-node tests, as the API server would hold them."""

from __future__ import annotations


def netpol(ns: str, name: str, selector: dict, peers: list[dict], port: int | None = None) -> dict:
    """An ingress NetworkPolicy: pods matching ``selector`` accept ``peers`` (on TCP ``port`` if given)."""
    rule: dict = {"from": peers}
    if port:
        rule["ports"] = [{"port": port, "protocol": "TCP"}]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name, "namespace": ns},
            "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": [rule]}}


def namespace(name: str, **labels: str) -> dict:
    """A Namespace with ``labels``."""
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def service(ns: str, name: str, vip: str, port: int, backends: list[tuple[str, str]]) -> list[dict]:
    """A ClusterIP Service and its EndpointSlice (the endpoint controller's job): ``(pod ip, node)``."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"clusterIP": vip, "ports": [{"name": "tcp", "port": port, "protocol": "TCP", "targetPort": port}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-1", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4", "ports": [{"name": "tcp", "port": port, "protocol": "TCP"}],
         "endpoints": [{"addresses": [ip], "nodeName": node, "conditions": {"ready": True}} for ip, node in backends]},
    ]
