"""A Kubernetes node in a netns running the agent, pods wired through CNI, and a client outside.

The topology::

    client netns ──veth── node netns ──veth (caliXXXX)── pod netns (one per pod)
    192.0.2.x+2           192.0.2.x+1   the agent and its dataplane
    (default via node)

Names carry a per-node token (``h<pid><hex>``), so concurrent testbeds never
collide; ``close()`` (also the context manager's exit) removes every netns,
process, listener and file, and a testbed whose process died is reaped by the
next one (``vppagent.testbed.registry``).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence, Union

import yaml

from vppagent.cni.install import write_launcher
from vppagent.testbed import api, traffic
from vppagent.testbed.agent import AgentRunner
from vppagent.testbed.cni import CNI_VERSION, CniCall, Pod, cni_args, run_plugin
from vppagent.testbed.netns import Namespaces, run
from vppagent.testbed.datastore import DatastoreWriter, FileDatastore
from vppagent.testbed.registry import Record, reap_stale
from vppagent.testbed.traffic import Listener, Outcome

Place = Union[Pod, str]


def _holds(have: dict, want: dict[str, int]) -> bool:
    return all(int(have.get(k, 0)) == v for k, v in want.items())
HEALTH_PORT = 9099       # inside the node netns: every node has its own


class Node:
    """A node netns running the agent, with a client netns beside it (see the package docs)."""

    def __init__(self, dataplane: str | Callable[[], Any] = "none", *, pools: Sequence[str] = ("10.65.0.0/16",),
                 node_labels: dict[str, str] | None = None, config: dict | None = None, mtu: int = 1500,
                 poll_interval: float = 0.1, plugin: str | None = None, start: bool = True,
                 log_level: str = "info", node_name: str | None = None,
                 datastore: "DatastoreWriter | None" = None, node_address: str | None = None) -> None:
        reap_stale()
        self.token = f"h{os.getpid() % 1000:03d}{secrets.token_hex(2)}"
        self.name = node_name or f"node-{self.token}"
        self.netns = f"{self.token}-node"
        self.client_netns = f"{self.token}-client"
        octet = 4 * secrets.randbelow(60) + 4
        self.node_ip, self.client_ip = f"192.0.2.{octet + 1}", f"192.0.2.{octet + 2}"
        self.node_ip6, self.client_ip6 = f"2001:db8::{octet + 1:x}", f"2001:db8::{octet + 2:x}"
        self.dataplane, self.pools, self.mtu = dataplane, list(pools), mtu
        self.node_labels = dict(node_labels or {})
        self.extra_config = dict(config or {})
        self.poll_interval, self.log_level = poll_interval, log_level
        self.tmp = Path(tempfile.mkdtemp(prefix=f"vppagent-{self.token}-"))
        self.manifests = self.tmp / "manifests"
        self.datastore = datastore or FileDatastore(self.manifests)
        self.node_address = node_address
        self.state_dir = self.tmp / "state"
        self.socket = str(self.tmp / "agent.sock")
        self.log = self.tmp / "agent.log"
        self.config_path = self.tmp / "agent.yaml"
        self.cni_bin = self.tmp / "cni-bin"
        self.plugin = plugin
        self.health_port = HEALTH_PORT
        self.pods: dict[str, Pod] = {}
        self._record = Record(self.token, os.getpid(), str(self.tmp))
        self._ns = Namespaces(on_change=self._record.set_netns)
        self._runner = AgentRunner(self.netns, self.config_path, self.socket, self.log, dataplane,
                                   on_pid=self._record.set_agent_pid)
        self._listeners: list[Listener] = []
        self._conns: list[socket.socket] = []
        self._namespaces_written: set[str] = set()
        self._closed = False
        try:
            self._record.save()
            self._setup()
            if start:
                self.start_agent()
        except BaseException:
            self.close()
            raise

    @property
    def agent(self) -> Any:
        """The agent subprocess (``Popen``), or None (stopped, or running in-process)."""
        return self._runner.process

    @property
    def agent_obj(self) -> Any:
        """The in-process ``Agent`` (dataplane factory mode), or None."""
        return self._runner.agent_obj

    # -- lifecycle -----------------------------------------------------------------------

    def add_netns(self, suffix: str = "") -> str:
        """An extra netns (lo up) removed with the node; returns its name."""
        return self._ns.add(f"{self.token}-{suffix or 'x' + secrets.token_hex(3)}")

    def forget_netns(self, name: str) -> None:
        """Delete one of the node's namespaces now (e.g. a pod sandbox going away)."""
        self._ns.delete(name)

    def _setup(self) -> None:
        self.manifests.mkdir(parents=True, exist_ok=True)
        self._ns.add(self.netns)
        self._ns.add(self.client_netns)
        a, b = f"{self.token}n", f"{self.token}c"
        run(["ip", "link", "add", a, "netns", self.netns, "type", "veth", "peer", "name", b,
             "netns", self.client_netns])
        for ns, dev, ip4, ip6 in ((self.netns, a, self.node_ip, self.node_ip6),
                                  (self.client_netns, b, self.client_ip, self.client_ip6)):
            run(["ip", "-n", ns, "addr", "add", f"{ip4}/24", "dev", dev])
            run(["ip", "-n", ns, "-6", "addr", "add", f"{ip6}/64", "dev", dev, "nodad"])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
        run(["ip", "-n", self.client_netns, "route", "add", "default", "via", self.node_ip])
        run(["ip", "-n", self.client_netns, "-6", "route", "add", "default", "via", self.node_ip6])
        if self.plugin is None:
            self.plugin = write_launcher(self.cni_bin, "vppagent-cni")
        self.write_manifest(f"00-node-{self.name}", [self.node_manifest()])
        self.config_path.write_text(yaml.safe_dump(self.agent_config()))

    def node_manifest(self) -> dict[str, Any]:
        """The Kubernetes Node: its name, labels and the address other nodes route to."""
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": self.node_labels},
                "status": {"addresses": [{"type": "InternalIP", "address": self.node_address or self.node_ip}]}}

    def agent_config(self) -> dict[str, Any]:
        """The agent's YAML config: the testbed's defaults with ``config`` merged in (one level deep)."""
        config: dict[str, Any] = {
            "nodeName": self.name,
            "datastore": {"type": "file", "path": str(self.manifests), "pollInterval": self.poll_interval},
            "dataplane": {"type": self.dataplane if isinstance(self.dataplane, str) else "none"},
            "grpc": {"socket": self.socket},
            "health": {"port": self.health_port},
            "stateDir": str(self.state_dir),
            "cni": {"mtu": self.mtu},
            "ipam": {"defaultPools": self.pools},
            "logLevel": self.log_level,
        }
        for key, value in self.extra_config.items():
            if isinstance(value, dict) and isinstance(config.get(key), dict):
                config[key] = {**config[key], **value}
            else:
                config[key] = value
        self.health_port = int(config.get("health", {}).get("port", self.health_port))
        return config

    def start_agent(self, timeout: float = 30.0) -> None:
        """Start the agent inside the node netns and wait until it reports ready."""
        self._runner.start(timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        self._runner.wait_ready(timeout)

    def stop_agent(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (the dataplane stays programmed); SIGKILL after ``timeout``. Returns the exit code."""
        return self._runner.stop(timeout)

    def kill_agent(self) -> None:
        """SIGKILL: the agent dies without any cleanup (crash test; in-process: a plain stop)."""
        self._runner.kill()

    def agent_log(self) -> str:
        return self._runner.log_text()

    def close(self) -> None:
        """Remove everything this node created (idempotent; never raises on leftovers)."""
        if self._closed:
            return
        self._closed = True
        for conn in self._conns:
            with contextlib.suppress(Exception):
                conn.close()
        for listener in self._listeners:
            with contextlib.suppress(Exception):
                listener.close()
        with contextlib.suppress(Exception):
            self.kill_agent()
        self._ns.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._record.drop()

    def __enter__(self) -> "Node":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- datastore -----------------------------------------------------------------------

    def write_manifest(self, name: str, docs: Iterable[dict] | str) -> None:
        """Store a named group of objects in the datastore (by default ``<manifests>/<name>.yaml``)."""
        self.datastore.write(name, docs)

    def remove_manifest(self, name: str) -> None:
        self.datastore.remove(name)

    def _ensure_namespace(self, namespace: str, service_account: str) -> None:
        key = f"{namespace}/{service_account}"
        if key in self._namespaces_written:
            return
        self._namespaces_written.add(key)
        self.write_manifest(f"01-ns-{namespace}-{service_account}", [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
            {"apiVersion": "v1", "kind": "ServiceAccount",
             "metadata": {"name": service_account, "namespace": namespace}},
        ])

    def pod_manifest(self, namespace: str, name: str, labels: dict[str, str] | None = None,
                     ports: Iterable[tuple[str, int, str]] = (), annotations: dict[str, str] | None = None,
                     service_account: str = "default", ips: Sequence[str] = ()) -> dict:
        """A Pod on this node; ``ips`` become ``status.podIPs`` (what the evaluator reads)."""
        container: dict[str, Any] = {"name": "main", "image": "test"}
        ports = list(ports)
        if ports:
            container["ports"] = [{"name": n, "containerPort": p, "protocol": proto} for n, p, proto in ports]
        doc: dict[str, Any] = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": dict(labels or {}),
                         "annotations": dict(annotations or {})},
            "spec": {"nodeName": self.name, "serviceAccountName": service_account, "containers": [container]},
        }
        if ips:
            doc["status"] = {"podIPs": [{"ip": ip} for ip in ips]}
        return doc

    # -- pods ----------------------------------------------------------------------------

    def cni(self, command: str, *, container_id: str, netns: str = "", ifname: str = "eth0",
            namespace: str = "", pod: str = "", config: dict | None = None, env: dict | None = None,
            stdin: bytes | None = None, in_node: bool = True, ips: Sequence[str] = ()) -> CniCall:
        """Run the plugin once, as a runtime does: CNI_* environment + network config on stdin.

        ``ips`` asks for specific addresses (``CNI_ARGS`` ``IP=a,b``) instead of IPAM's choice.
        """
        conf = {"cniVersion": CNI_VERSION, "name": "k8s-pod-network", "type": "vppagent-cni",
                "agentSocket": self.socket, "mtu": self.mtu}
        conf.update(config or {})
        return run_plugin(str(self.plugin), command, container_id=container_id, netns=netns, ifname=ifname,
                          args=cni_args(namespace, pod, container_id, ips), conf=conf, stdin=stdin, env=env,
                          in_netns=self.netns if in_node else None)

    def add_pod(self, namespace: str, name: str, *, labels: dict[str, str] | None = None,
                ports: Iterable[tuple[str, int, str]] = (), annotations: dict[str, str] | None = None,
                service_account: str = "default", ifname: str = "eth0", manifest: bool = True,
                ips: Sequence[str] = ()) -> Pod:
        """Write the Pod (and its Namespace/ServiceAccount), create its netns, CNI ADD it.

        ``ips``: the addresses to request (``CNI_ARGS`` ``IP=``), also written as the Pod's
        ``status.podIPs``; by default the agent's IPAM chooses. ``manifest=False`` leaves the
        datastore alone (the Pod is already there, or deliberately missing).
        """
        if manifest:
            self._ensure_namespace(namespace, service_account)
            self.write_manifest(f"pod-{namespace}-{name}", [
                self.pod_manifest(namespace, name, labels, ports, annotations, service_account, ips)])
        container_id = f"{self.token}{secrets.token_hex(8)}"
        netns = self._ns.add(f"{self.token}-p{secrets.token_hex(3)}")
        call = self.cni("ADD", container_id=container_id, netns=f"/var/run/netns/{netns}", ifname=ifname,
                        namespace=namespace, pod=name, ips=ips)
        if not call.ok:
            raise RuntimeError(f"CNI ADD of {namespace}/{name} failed: {call.output!r} {call.stderr}")
        pod = Pod(namespace, name, netns, container_id, ifname, call.output)
        self.pods[pod.key] = pod
        return pod

    def delete_pod(self, pod: Pod, *, manifest: bool = True) -> CniCall:
        """CNI DEL, then drop the Pod manifest and the pod's netns."""
        call = self.cni("DEL", container_id=pod.container_id, netns=pod.netns_path, ifname=pod.ifname,
                        namespace=pod.namespace, pod=pod.name)
        if manifest:
            self.remove_manifest(f"pod-{pod.namespace}-{pod.name}")
        self.forget_netns(pod.netns)
        self.pods.pop(pod.key, None)
        return call

    # -- commands and traffic ------------------------------------------------------------

    def _netns_of(self, place: Place) -> str:
        if isinstance(place, Pod):
            return place.netns
        if place == "node":
            return self.netns
        if place == "client":
            return self.client_netns
        if place in self._ns:
            return place
        raise ValueError(f"unknown place {place!r} (a Pod, 'node' or 'client')")

    def netns_path(self, place: Place) -> str:
        return f"/var/run/netns/{self._netns_of(place)}"

    def address_of(self, place: Place, family: int = 4) -> str:
        if isinstance(place, Pod):
            return place.ip if family == 4 else place.ip6
        if place == "node":
            return self.node_ip if family == 4 else self.node_ip6
        if place == "client":
            return self.client_ip if family == 4 else self.client_ip6
        return place          # an address already

    def exec_in(self, place: Place, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        """Run a command in ``place``'s netns, text output captured (``check=True`` raises)."""
        kw.setdefault("timeout", 60)
        return subprocess.run(["ip", "netns", "exec", self._netns_of(place), *argv], capture_output=True,
                              text=True, check=kw.pop("check", False), **kw)

    def exec_in_pod(self, pod: Pod, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess:
        return self.exec_in(pod, argv, **kw)

    def listen(self, place: Place, port: int, proto: str = "tcp", label: str | None = None,
               echo: bool = False) -> Listener:
        """A server in ``place`` (closed with the node if you do not close it); ``echo``: keep
        TCP connections open and echo what they send."""
        if label is None:
            label = place.key if isinstance(place, Pod) else str(place)
        listener = Listener(self.netns_path(place), port, proto, label, echo).start()
        self._listeners.append(listener)
        return listener

    def send(self, src: Place, dst: Place, port: int, proto: str = "tcp", timeout: float = 1.0,
             family: int = 4) -> Outcome:
        """Connect (TCP) or send a datagram (UDP) from ``src`` and wait for the answer."""
        return traffic.probe(self.netns_path(src), self.address_of(dst, family), port, proto, timeout)

    def reachable(self, src: Place, dst: Place, port: int | None = None, proto: str = "tcp",
                  timeout: float = 1.0, family: int = 4) -> bool:
        """Whether a TCP/UDP exchange (or an ICMP echo) from ``src`` to ``dst`` succeeds."""
        if proto == "icmp" or port is None:
            return self.ping(src, dst, timeout, family)
        with self.listen(dst, port, proto):
            return self.send(src, dst, port, proto, timeout, family).ok

    def ping(self, src: Place, dst: Place, timeout: float = 1.0, family: int = 4) -> bool:
        return traffic.ping(self.netns_path(src), self.address_of(dst, family), timeout)

    def connect(self, src: Place, dst: Place, port: int, timeout: float = 2.0, family: int = 4) -> socket.socket:
        """A TCP connection from ``src`` kept open (closed with the node); pair with ``listen(echo=True)``."""
        conn = traffic.connect(self.netns_path(src), self.address_of(dst, family), port, timeout)
        self._conns.append(conn)
        return conn

    # -- agent state ---------------------------------------------------------------------

    def status(self) -> dict:
        return api.status(self.socket)

    def endpoints(self) -> dict[str, dict]:
        """Workload endpoints in the agent's desired state: "ns/pod" → fields (nets, labels, …)."""
        return api.endpoints(self.socket)

    def wait_synced(self, counts: dict[str, int] | None = None, timeout: float = 20.0) -> dict:
        """Poll until the agent holds ``counts`` (e.g. ``{"policies": 2}``) with the dataplane in
        sync and no error, *and* the dataplane itself has applied them (the agent publishes to its
        API before the dataplane finishes writing); returns the agent's status."""
        want = counts or {}
        deadline = time.monotonic() + timeout
        while True:
            st = self.status()
            if _holds(st.get("counts", {}), want) and st.get("dataplane_in_sync") and not st.get("errors"):
                done = api.actual(self.socket)
                if _holds(done.get("counts", want), want):
                    return st
            if time.monotonic() > deadline:
                raise TimeoutError(f"the agent did not converge to {want} within {timeout:g} s: {st}")
            time.sleep(0.05)

    def metrics(self) -> str:
        """The agent's Prometheus ``/metrics`` text."""
        return api.metrics(self.netns, self.health_port)
