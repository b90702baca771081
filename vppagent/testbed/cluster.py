"""A multi-node testbed: node netns joined by an underlay, one sync layer, an agent per node.

::

    with Cluster(nodes=3, dataplane="nftables") as c:      # encap="vxlan", underlay="routed"
        web = c.nodes[1].add_pod("shop", "web", labels={"app": "web"})
        db = c.nodes[2].add_pod("shop", "db", labels={"app": "db"})
        c.wait_for_route(c.nodes[0], db)                     # every node routes to db's block
        assert c.nodes[1].reachable(web, db, 5432)

    Cluster(nodes=3, dataplane=["vpp", "vpp", "nftables"])  # a dataplane per node: VPP and Linux mixed

Underlays: ``"l2"`` (one bridge: the nodes share a subnet, so plain routes
via a node's address work) or ``"routed"`` (each node on its own subnet
behind a router netns that knows nothing of pod addresses: only the VXLAN
overlay gets pod traffic across). The sync layer (``vppagent sync``) runs as
a subprocess in the caller's netns and agents reach it over its unix
socket. ``datastore`` is the shared :class:`DatastoreWriter` (a file
directory by default); tests that bring their own (Kubernetes, etcd) pass
``writer`` and the matching ``sync_args``.

A ``"vpp"`` node (needs ``$VPP_BIN``) runs VPP under ``vppagent vpp run``
with the node's underlay veth as its af_packet uplink: VPP holds the node's
underlay address and routes, Linux keeps them on a veth host interface
through VPP (``vppagent.testbed.vpp_node``), and the agent runs
``dataplane: {type: vpp, podInterface: af_packet}``. ``routes_of`` reads
such a node's routes from VPP's FIB; ``vpp_of(node)`` gives its VPP.
``vpp`` holds ``VppRuntime`` options for every VPP node (``heap_size``, ``buffers``,
``poll_sleep_usec``, ``binary``, ...).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

from vppagent.testbed.agent import AgentRunner
from vppagent.testbed.cni import Pod
from vppagent.testbed.datastore import DatastoreWriter, FileDatastore
from vppagent.testbed.netns import Namespaces, run
from vppagent.testbed.node import Node
from vppagent.testbed.registry import Record, reap_stale
from vppagent.testbed.vpp_node import VppRuntime, reap_orphans
from vppagent.testbed.wait import wait_for

POD_POOL = "10.66.0.0/16"


class Cluster:
    def __init__(self, nodes: int = 3, dataplane: str | Sequence[str] = "nftables", *, encap: str = "none",
                 underlay: str = "l2", writer: DatastoreWriter | None = None,
                 sync_args: Sequence[str] | None = None, pool: str = POD_POOL, block_size: int = 26,
                 poll_interval: float = 0.05, log_level: str = "info", start: bool = True,
                 vpp: dict[str, Any] | None = None) -> None:
        if encap not in ("none", "vxlan") or underlay not in ("l2", "routed"):
            raise ValueError("encap is none|vxlan, underlay is l2|routed")
        self.dataplanes = [dataplane] * nodes if isinstance(dataplane, str) else list(dataplane)
        if len(self.dataplanes) != nodes:
            raise ValueError(f"{nodes} nodes but {len(self.dataplanes)} dataplanes")
        reap_stale()
        if "vpp" in self.dataplanes:
            reap_orphans()
        self.token = f"k{os.getpid() % 1000:03d}{secrets.token_hex(2)}"
        self.tmp = Path(tempfile.mkdtemp(prefix=f"vppagent-{self.token}-"))
        self.dataplane, self.encap, self.underlay = dataplane, encap, underlay
        self.pool, self.block_size = pool, block_size
        self.poll_interval, self.log_level = poll_interval, log_level
        self.manifests = self.tmp / "datastore"
        self.datastore: DatastoreWriter = writer or FileDatastore(self.manifests)
        self.socket = str(self.tmp / "sync.sock")
        self.underlay_netns = f"{self.token}-ul"
        self.nodes: list[Node] = []
        self.vpp_options = dict(vpp or {})
        self._vpp: dict[str, VppRuntime] = {}          # node name -> its VPP (VPP nodes only)
        self._record = Record(self.token, os.getpid(), str(self.tmp))
        self._ns = Namespaces(on_change=self._record.set_netns)
        args = list(sync_args) if sync_args is not None else [
            "--datastore", "file", "--path", str(self.manifests), "--poll-interval", str(poll_interval)]
        self.sync = AgentRunner("", self.tmp / "unused", self.socket, self.tmp / "sync.log", "none",
                                on_pid=self._record.set_agent_pid, command=[
                                    "sync", *args, "--socket", self.socket, "--health-port", "0",
                                    "--state-dir", str(self.tmp / "sync-state"), "--log-level", log_level])
        self._closed = False
        try:
            self._record.save()
            self._setup(nodes)
            if start:
                self.start()
        except BaseException:
            self.close()
            raise

    # -- topology --------------------------------------------------------------------------

    def node_address(self, i: int) -> str:
        return f"172.30.0.{i + 1}" if self.underlay == "l2" else f"172.30.{i + 1}.2"

    def _setup(self, count: int) -> None:
        ul = self._ns.add(self.underlay_netns)
        if self.underlay == "l2":
            run(["ip", "-n", ul, "link", "add", "br0", "type", "bridge"])
            run(["ip", "-n", ul, "link", "set", "br0", "up"])
        else:
            run(["ip", "netns", "exec", ul, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        self.datastore.write("00-pool", [{
            "apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "cluster-pods"},
            "spec": {"cidr": self.pool, "blockSize": self.block_size,
                     "vxlanMode": "Always" if self.encap == "vxlan" else "Never"}}])
        for i in range(count):
            addr = self.node_address(i)
            config: dict[str, Any] = {"datastore": {"type": "sync", "address": f"unix://{self.socket}"}}
            runtime = self._vpp_runtime(i) if self.dataplanes[i] == "vpp" else None
            if runtime is not None:
                config["vpp"] = runtime.vpp_section()
                config["dataplane"] = runtime.dataplane_section()
            node = Node(self.dataplanes[i], node_name=f"{self.token}-n{i}", datastore=self.datastore,
                        node_address=addr, start=False, poll_interval=self.poll_interval,
                        log_level=self.log_level, pools=(self.pool,), config=config)
            self.nodes.append(node)
            if runtime is not None:
                self._vpp[node.name] = runtime
            self._wire_underlay(i, node)

    def _vpp_runtime(self, i: int) -> VppRuntime:
        """Node ``i``'s VPP: its own run dir and netns (tracked here, so a killed testbed's
        netns is reaped too; the manager takes over an existing empty one)."""
        vpp_netns = self._ns.add(f"{self.token}-v{i}")
        options = {"encap_overhead": 50 if self.encap == "vxlan" else 0, **self.vpp_options}
        return VppRuntime(f"{self.token}u", self.tmp / f"vpp{i}", vpp_netns, **options)

    def _wire_underlay(self, i: int, node: Node) -> None:
        ul, dev, peer = self.underlay_netns, f"{self.token}u", f"{self.token}u{i}"
        run(["ip", "link", "add", dev, "netns", node.netns, "type", "veth", "peer", "name", peer, "netns", ul])
        run(["ip", "-n", node.netns, "link", "set", dev, "up"])
        run(["ip", "-n", ul, "link", "set", peer, "up"])
        if self.underlay == "l2":
            run(["ip", "-n", ul, "link", "set", peer, "master", "br0"])
            run(["ip", "-n", node.netns, "addr", "add", f"{self.node_address(i)}/24", "dev", dev])
        else:
            run(["ip", "-n", ul, "addr", "add", f"172.30.{i + 1}.1/24", "dev", peer])
            run(["ip", "-n", node.netns, "addr", "add", f"{self.node_address(i)}/24", "dev", dev])
            run(["ip", "-n", node.netns, "route", "add", "172.30.0.0/16", "via", f"172.30.{i + 1}.1"])

    # -- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        self.start_sync(timeout)
        self.start_vpps(timeout)
        for node in self.nodes:
            node.start_agent(timeout)

    def start_vpps(self, timeout: float = 60.0) -> None:
        """Start every VPP node's manager, then wait for all of them (VPPs boot in parallel)."""
        for node in self.nodes:
            runtime = self._vpp.get(node.name)
            if runtime is not None:
                runtime.start(node.netns, node.config_path)
        self._each_vpp(lambda runtime: runtime.wait_ready(timeout))

    def stop_vpps(self) -> None:
        """Stop every VPP (each manager gives its uplink back to Linux); never raises."""
        self._each_vpp(lambda runtime: runtime.stop())

    def _each_vpp(self, fn: Callable[[VppRuntime], Any]) -> None:
        runtimes = list(self._vpp.values())
        if not runtimes:
            return
        with ThreadPoolExecutor(len(runtimes)) as pool:
            for future in [pool.submit(fn, r) for r in runtimes]:
                future.result()

    def start_sync(self, timeout: float = 30.0) -> None:
        self.sync.start(timeout)

    def stop_sync(self) -> None:
        self.sync.stop()

    def kill_sync(self) -> None:
        self.sync.kill()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for node in self.nodes:
            if node.name in self._vpp:
                with contextlib.suppress(Exception):
                    node.kill_agent()
        with contextlib.suppress(Exception):
            self.stop_vpps()                # before the node netns go: the uplinks come back first
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.close()
        with contextlib.suppress(Exception):
            self.sync.kill()
        self._ns.close()
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._record.drop()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- helpers ---------------------------------------------------------------------------

    def write(self, name: str, docs: Any) -> None:
        self.datastore.write(name, docs)

    def remove(self, name: str) -> None:
        self.datastore.remove(name)

    def vpp_of(self, node: Node) -> VppRuntime | None:
        """The VPP of a VPP node (None for a Linux node)."""
        return self._vpp.get(node.name)

    def routes_of(self, node: Node) -> list[str]:
        """The routes of a node: its netns's kernel routes (``ip route`` lines), or for a VPP
        node the routes with a next hop in VPP's table 0 (``<prefix> via <nh> dev <if>``)."""
        runtime = self._vpp.get(node.name)
        if runtime is not None:
            return runtime.routes()
        return run(["ip", "-n", node.netns, "route", "show"]).stdout.splitlines()

    def wait_for(self, cond: Any, timeout: float = 20.0, what: str = "condition") -> Any:
        """``wait_for`` with the sync layer's, every agent's and every VPP's log tails on a timeout."""
        return wait_for(cond, timeout, what, diag=self._logs)

    def _logs(self) -> str:
        logs = "\n".join(f"--- {n.name}:\n{n.agent_log()[-1500:]}" for n in self.nodes)
        logs += "".join(f"\n--- VPP of {name}:\n{r.diag(1000)}" for name, r in self._vpp.items())
        return f"--- sync:\n{self.sync.log_text()[-1500:]}\n{logs}"

    def wait_for_route(self, node: Node, pod: Pod, timeout: float = 20.0) -> None:
        """Until ``node`` routes to the block holding ``pod``'s address (skipped for its own pods)."""
        import ipaddress

        ip = ipaddress.ip_address(pod.ip)

        def routed() -> bool:
            for line in self.routes_of(node):
                dst = line.split()[0]
                if "/" in dst and ip in ipaddress.ip_network(dst, strict=False) and \
                        ipaddress.ip_network(dst, strict=False).prefixlen < 32:
                    return True
            return False
        self.wait_for(routed, timeout, f"{node.name} to route to {pod.key} ({pod.ip})")

    def sync_log(self) -> str:
        return self.sync.log_text()
