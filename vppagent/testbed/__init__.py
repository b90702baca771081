"""A real-netns testbed: a "node" running the agent, pods wired through CNI, a client outside.

Tests (through ``tests/linux_harness.py``), ``make demo`` and perf scripts use
this one implementation::

    from vppagent.testbed import Node

    with Node(dataplane="nftables") as node:           # "none" | "iptables" | "nftables" | a factory
        node.write_manifest("policy", [{...}, {...}])   # YAML docs (dicts or a YAML string)
        web = node.add_pod("shop", "web", labels={"app": "web"}, ports=[("http", 8080, "TCP")])
        db = node.add_pod("shop", "db", ips=["10.65.0.12"])   # ask for an address (CNI_ARGS IP=)
        assert node.reachable(web, db, 5432)            # TCP by default, ~1 s timeout when dropped
        assert node.reachable("client", web, 8080, proto="udp") is False
        assert node.ping(web, "node")
        with node.listen(db, 5432) as srv:              # a listener you keep: who connected?
            out = node.send("client", "10.96.0.10", 5432)   # e.g. a service VIP
            assert out.ok and out.label == "shop/db" and srv.peers == [out.peer]
        node.listen(web, 7000, echo=True)               # keeps connections open, echoes
        conn = node.connect(db, web, 7000)              # a socket opened inside db's netns
        node.stop_agent(); node.start_agent()           # restart (kill_agent() for SIGKILL)
        node.delete_pod(web)

Construction: ``Node(dataplane="none", *, pools=("10.65.0.0/16",), node_labels=None, config=None,
mtu=1500, poll_interval=0.1, plugin=None, start=True, log_level="info", node_name=None)``;
``config`` is merged into the agent's YAML config (e.g. ``{"dataplane": {"type": "iptables",
"foo": 1}}``); ``plugin`` is the CNI plugin executable (default: the fast launcher written by
``vppagent-cni install``); ``node_name`` is the Kubernetes node name (default ``node-<token>``;
the demo uses the examples' ``node1``). With a dataplane *type name* the agent runs as ``ip netns
exec NODE python -m vppagent run``; with a *factory* (a callable returning a ``Dataplane``) it runs
in-process, on a thread inside the node netns (``node.agent_obj`` is the ``Agent``).

Places (``src``/``dst`` of the traffic helpers) are a ``Pod``, ``"node"`` or ``"client"``
(or the name of a netns from ``add_netns``); ``dst`` may also be an IP address string (then
``listen``/``reachable`` need a real place).

Attributes: ``name`` (Kubernetes node name), ``token`` (prefix of every name it creates),
``netns``/``client_netns`` (netns names), ``node_ip``/``client_ip`` (+``node_ip6``/``client_ip6``)
on the node↔client veth, ``socket`` (agent gRPC unix socket), ``health_port`` (in the node netns),
``state_dir``, ``manifests``, ``tmp`` (a Path), ``agent`` (Popen), ``log`` (agent log path),
``pods`` (dict "ns/name" → Pod).

Methods: ``write_manifest(name, docs)``, ``remove_manifest(name)``, ``add_pod(namespace, name,
labels=None, ports=(), annotations=None, service_account="default", ifname="eth0", manifest=True,
ips=()) -> Pod``, ``delete_pod(pod)``, ``cni(command, ..., ips=()) -> CniCall`` (one raw plugin
run, exactly as a runtime does it), ``exec_in_pod(pod, argv)``, ``exec_in(place, argv)``,
``listen(place, port, proto="tcp", label=None, echo=False)``, ``send(src, dst, port, proto="tcp",
timeout=1.0) -> Outcome``, ``reachable(src, dst, port=None, proto="tcp", timeout=1.0, family=4)
-> bool``, ``ping(src, dst, timeout=1.0, family=4) -> bool``, ``connect(src, dst, port)``,
``endpoints() -> dict["ns/pod", dict]``, ``status() -> dict``, ``metrics() -> str``,
``wait_ready()``, ``start_agent()``, ``stop_agent()``, ``kill_agent()``, ``agent_log() -> str``,
``add_netns(suffix="") -> name``, ``forget_netns(name)``, ``address_of(place, family=4)``,
``pod_manifest(...) -> dict``, ``agent_config() -> dict``, ``close()``.

Beside it: ``flows`` (many probes at once, compared with the reference evaluator), ``kernel``
(ruleset snapshots and per-rule counters), ``traffic`` (listeners and probes on their own).

Every netns, link, process, socket and file the testbed creates is removed by ``close()``
(the context manager's exit), also when a test fails half-way; a testbed whose process was
killed is reaped by the next one (``registry``). Traffic is generated in-process from threads
that entered the namespace (fast: no process per probe); listeners answer each TCP connection /
UDP datagram with ``"<label> <peer-ip>"``.
"""

from vppagent.testbed.agent import PYTHON, REPO
from vppagent.testbed.cni import CNI_VERSION, CniCall, Pod
from vppagent.testbed.node import HEALTH_PORT, Node, Place
from vppagent.testbed.traffic import Listener, Outcome

__all__ = ["CNI_VERSION", "HEALTH_PORT", "PYTHON", "REPO", "CniCall", "Listener", "Node", "Outcome", "Place",
           "Pod"]
