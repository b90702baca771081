"""``make demo``: the agent on the Linux dataplane, real pods, real packets, checked against the evaluator.

Run as root: ``python -m vppagent.demo [--dataplane nftables|iptables]``. In
a throw-away node netns (``vppagent.testbed``) it

1. starts ``vppagent run`` with the file datastore on a copy of ``examples/``
   holding only namespaces, the IP pool and pods (plus a second ``shop/frontend``
   replica, so the Service below has two backends);
2. creates every pod with the ``vppagent-cni`` plugin exactly as a container
   runtime calls it, asking for the addresses the manifests' ``status.podIPs``
   declare (``CNI_ARGS IP=``), so the evaluator's view and the kernel agree;
3. applies the example policies and the ``shop/web`` Service (ClusterIP +
   NodePort) by adding their files to the datastore while the agent runs;
4. measures every pod → pod named port with real TCP and prints the matrix
   beside the reference evaluator's verdicts (``vppagent.evaluator``);
5. shows the ClusterIP answered by both backends and the NodePort from a client
   outside the node;
6. removes everything (also on Ctrl-C, SIGTERM or an error).

Exit status 0 when every flow matches the evaluator and the service answers.
"""

from __future__ import annotations

import argparse
import copy
import ipaddress
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import yaml

from vppagent.evaluator import Evaluator, build_evaluator
from vppagent.manifests.loader import load_objects, load_strict
from vppagent.model.errors import ValidationError
from vppagent.model.resources import EndpointSlice, IPPool, Service, WorkloadEndpoint
from vppagent.testbed import Node, Outcome, Pod
from vppagent.testbed.flows import Flow, expected, matrix_flows, measure

BASE_KINDS = {"Namespace", "ServiceAccount", "Pod", "IPPool", "Node"}   # what must exist before pods
REPLICA_OF = ("shop", "frontend")    # scaled to two replicas so the Service has two backends
OK, BAD = "✓", "✗"


# ---------------------------------------------------------------- the datastore copy

@dataclass
class Manifests:
    """The example manifests split in two stages: before the pods, and applied once they run."""

    base: dict[str, list[dict]]       # file name → documents
    applied: dict[str, list[dict]]


def read_examples(source: Path) -> Manifests:
    """Files holding pods or only namespaces/pools/… go first; policies and services later."""
    out = Manifests({}, {})
    for path in sorted(p for p in source.rglob("*") if p.suffix in (".yaml", ".yml", ".json")):
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
        kinds = {d.get("kind") for d in docs}
        stage = out.base if "Pod" in kinds or kinds <= BASE_KINDS else out.applied
        stage[str(path.relative_to(source))] = docs
    return out


def add_replica(m: Manifests) -> tuple[str, str] | None:
    """A second ``shop/frontend`` Pod and an EndpointSlice for it, as the EndpointSlice controller
    grows a Service (examples/ keeps its four pods: other tests count them). Returns (pod, address),
    or None when the examples have no such pod or slice."""
    ns, name = REPLICA_OF
    pods = [d for docs in m.base.values() for d in docs if d.get("kind") == "Pod"]
    original = next((d for d in pods if d["metadata"].get("namespace") == ns and d["metadata"]["name"] == name), None)
    slices = [d for docs in m.applied.values() for d in docs if d.get("kind") == "EndpointSlice"
              and any((e.get("targetRef") or {}).get("name") == name for e in d.get("endpoints") or [])]
    if original is None or not slices:
        return None
    used = {ipaddress.ip_address(ip["ip"]) for d in pods for ip in (d.get("status") or {}).get("podIPs") or []}
    address = ipaddress.ip_address(original["status"]["podIPs"][0]["ip"]) + 1
    while address in used:
        address += 1
    replica = copy.deepcopy(original)
    replica["metadata"]["name"] = f"{name}-2"
    replica["status"] = {"podIPs": [{"ip": str(address)}]}
    endpoints = copy.deepcopy(slices[0])
    endpoints["metadata"]["name"] = f"{slices[0]['metadata']['name']}-2"
    endpoints["endpoints"] = [{"addresses": [str(address)], "nodeName": original["spec"].get("nodeName", ""),
                               "conditions": {"ready": True},
                               "targetRef": {"kind": "Pod", "namespace": ns, "name": f"{name}-2"}}]
    m.base["15-demo-replica.yaml"] = [replica]
    m.applied["45-demo-replica-endpoints.yaml"] = [endpoints]
    return f"{ns}/{name}-2", str(address)


def parse_stage(stage: dict[str, list[dict]]) -> list[Any]:
    return load_objects([d for docs in stage.values() for d in docs], "examples")


def write_stage(node: Node, stage: dict[str, list[dict]]) -> None:
    for name, docs in stage.items():
        node.write_manifest(Path(name).with_suffix("").as_posix().replace("/", "-"), docs)


# ---------------------------------------------------------------- steps

def create_pods(node: Node, endpoints: Sequence[WorkloadEndpoint]) -> dict[str, Pod]:
    """CNI ADD each pod with the manifest's addresses; report what the plugin returned."""
    pods = {}
    for wep in endpoints:
        wanted = [str(n.network_address) for n in wep.nets]
        started = time.monotonic()
        pod = node.add_pod(wep.namespace, wep.pod, manifest=False, ips=wanted)
        took = (time.monotonic() - started) * 1000
        agree = OK if sorted(pod.ips) == sorted(wanted) else f"{BAD} manifest says {', '.join(wanted)}"
        print(f"  {pod.key:<18} {', '.join(pod.ips):<14} {pod.host_interface:<16} {took:5.0f} ms  {agree}")
        pods[pod.key] = pod
    return pods


def wait_applied(node: Node, ev: Evaluator, timeout: float = 20.0) -> bool:
    """Until the agent holds what the evaluator does and its dataplane has written it."""
    keys = ("policies", "services", "workload_endpoints", "pools")
    try:
        node.wait_synced({k: v for k, v in ev.state.counts().items() if k in keys}, timeout)
    except TimeoutError as exc:
        print(f"\n  {BAD} {exc}")
        return False
    return True


def print_matrix(rows: list[tuple[Flow, str, str, Outcome]]) -> None:
    """Destinations down, sources across; a cell is the measured verdict, ✓ when the evaluator agrees."""
    sources = sorted({f.source for f, *_ in rows})
    targets = [t for _, t in sorted({((f.dst.key, f.port, f.proto), f.target) for f, *_ in rows})]
    width = max(len(t) for t in targets)
    cells = {(f.source, f.target): (got, want) for f, got, want, _ in rows}
    corner = "to \\ from"
    print(f"  {corner:<{width}}  " + "".join(f"{s:<17}" for s in sources))
    for t in targets:
        line = []
        for s in sources:
            got, want = cells.get((s, t), ("-", "-"))
            text = got if got == "-" else f"{got} {OK}" if got == want else f"{got} {BAD} ({want})"
            line.append(f"{text:<17}")
        print(f"  {t:<{width}}  " + "".join(line))


def check_matrix(node: Node, ev: Evaluator, pods: dict[str, Pod]) -> bool:
    flows = matrix_flows(ev, pods)
    want = [v.verdict == "allow" for _, v in flows]
    outcomes = measure(node, [f for f, _ in flows], timeout=1.0, expect=want)
    rows = [(f, "allow" if o.ok else "deny", v.verdict, o) for (f, v), o in zip(flows, outcomes)]
    print("\nConnectivity: real TCP to every pod's named ports; each cell is what the packets did,"
          f" {OK} when the reference evaluator expects the same ({BAD} and its verdict otherwise)")
    print_matrix(rows)
    print()
    for (f, v), (_, got, wanted, o) in zip(flows, rows):
        mark = OK if got == wanted else BAD
        how = f"answered by {o.label}" if o.ok else o.error
        print(f"  {mark} {f.source} -> {f.target}: measured {got} ({how}), evaluator {wanted}"
              f" (decided by {v.deciding.decided_by})")
    matched = sum(got == wanted for _, got, wanted, _ in rows)
    print(f"\n{matched}/{len(rows)} flows match the reference evaluator")
    return matched == len(rows)


@dataclass
class ServiceView:
    """The demo Service as a client sees it: VIP, ports and the backend pods behind them."""

    key: str
    vip: str
    port: int
    node_port: int
    backends: list[Pod]
    target_port: int


def find_service(resources: Sequence[Any], pods: dict[str, Pod]) -> ServiceView | None:
    """The first Service with a cluster IP and a NodePort, with backends from its EndpointSlices."""
    by_ip = {ip: p for p in pods.values() for ip in p.ips}
    for svc in resources:
        if not (isinstance(svc, Service) and svc.cluster_ips and svc.ports and svc.ports[0].node_port):
            continue
        sp = svc.ports[0]
        slices = [r for r in resources if isinstance(r, EndpointSlice)
                  and (r.namespace, r.service) == (svc.namespace, svc.name)]
        backends = sorted({by_ip[str(a)].key: by_ip[str(a)] for s in slices for e in s.endpoints if e.ready
                           for a in e.addresses if str(a) in by_ip}.values(), key=lambda p: p.key)
        target = next((p.port for s in slices for p in s.ports if p.name == sp.name), None)
        if target is None and isinstance(sp.target_port, int):
            target = sp.target_port
        if target is None:
            continue
        return ServiceView(svc.key, str(svc.cluster_ips[0]), sp.port, sp.node_port or 0, backends, target)
    return None


def ask_until_all_answer(node: Node, src: Any, ip: str, port: int, backends: Sequence[Pod],
                         tries: int = 40) -> tuple[dict[str, int], set[str], set[str]]:
    """Connect until every backend answered (at least 6 tries); (answers per pod, peers they saw, errors)."""
    want = {b.key for b in backends}
    seen: dict[str, int] = {}
    peers: set[str] = set()
    errors: set[str] = set()
    for i in range(tries):
        out = node.send(src, ip, port, timeout=2.0)
        if out.ok:
            seen[out.label] = seen.get(out.label, 0) + 1
            peers.add(out.peer)
        else:
            errors.add(out.error)
        if want <= seen.keys() and i >= 5:
            break
    return seen, peers, errors


def _answers(seen: dict[str, int], errors: set[str]) -> str:
    text = ", ".join(f"{k} ×{n}" for k, n in sorted(seen.items())) or "nobody"
    return text + (f" (failures: {', '.join(sorted(errors))})" if errors else "")


def check_service(node: Node, ev: Evaluator, svc: ServiceView, client: Pod) -> bool:
    """ClusterIP from a pod and NodePort from the client netns, each answered by every backend;
    beside each, the evaluator's verdict on the translated packet (policy sees the backend)."""
    want = {b.key for b in svc.backends}
    print(f"\nService {svc.key}: ClusterIP {svc.vip}:{svc.port} and NodePort {svc.node_port} →"
          f" {', '.join(f'{b.key} ({b.ip}:{svc.target_port})' for b in svc.backends)}")
    listeners = [node.listen(b, svc.target_port, label=b.key) for b in svc.backends]
    results = []
    try:
        for src, src_ip, ip, port in ((client, client.ip, svc.vip, svc.port),
                                      ("client", node.client_ip, node.node_ip, svc.node_port)):
            seen, peers, errors = ask_until_all_answer(node, src, ip, port, svc.backends)
            good = set(seen) == want and len(want) >= 2
            decided = (expected(ev, src_ip, Flow(src, b, svc.target_port)).deciding for b in svc.backends)
            policy = "; ".join(sorted({f"{v.verdict} by {v.decided_by}" for v in decided}))
            name = src.key if isinstance(src, Pod) else f"client {src_ip}"
            print(f"  {OK if good else BAD} {name} -> {ip}:{port}: answered by {_answers(seen, errors)}"
                  f"\n      backends saw {', '.join(sorted(peers)) or '-'}; evaluator: {policy}")
            results.append(good)
    finally:
        for listener in listeners:
            listener.close()
    print("  (externalTrafficPolicy: Cluster masquerades external clients to the node address)")
    return all(results)


def delete_pods(node: Node, pods: dict[str, Pod]) -> bool:
    """CNI DEL every pod, as the runtime does when a sandbox goes away."""
    started = time.monotonic()
    calls = {key: node.delete_pod(pod, manifest=False) for key, pod in pods.items()}
    failed = [f"{k}: {c.output}" for k, c in calls.items() if not c.ok]
    each = (time.monotonic() - started) * 1000 / max(1, len(calls))
    print(f"\nPods deleted with CNI DEL: {len(calls) - len(failed)}/{len(calls)} ok (~{each:.0f} ms each)"
          + "".join(f"\n  {BAD} {f}" for f in failed))
    return not failed


# ---------------------------------------------------------------- main

def run_demo(source: Path, dataplane: str) -> int:
    started = time.monotonic()
    manifests = read_examples(source)
    replica = add_replica(manifests)
    base = parse_stage(manifests.base)
    endpoints = [r for r in base if isinstance(r, WorkloadEndpoint)]
    if not endpoints:
        print(f"no pods in {source}", file=sys.stderr)
        return 2
    node_name = endpoints[0].node or "node1"
    elsewhere = [f"{w.namespace}/{w.pod}" for w in endpoints if w.node != node_name]
    endpoints = [w for w in endpoints if w.node == node_name]
    pools = [str(p.cidr) for p in base if isinstance(p, IPPool)] or ["10.65.0.0/16"]
    node = Node(dataplane=dataplane, node_name=node_name, pools=pools, start=False, log_level="warning")
    try:
        print(f"vppagent demo: {dataplane} dataplane; node {node_name} is netns {node.netns}"
              f" ({node.node_ip}), a client outside it is netns {node.client_netns} ({node.client_ip})")
        write_stage(node, manifests.base)
        node.start_agent()
        print(f"agent running (vppagent run, file datastore on a copy of {source}/: {node.manifests})")
        if replica:
            print(f"(shop/frontend scaled to two replicas for the Service: {replica[0]} at {replica[1]})")
        if elsewhere:
            print(f"(not on {node_name}, skipped: {', '.join(elsewhere)})")
        print("\nPods created with vppagent-cni, as a container runtime calls it (addresses from status.podIPs):")
        pods = create_pods(node, endpoints)
        write_stage(node, manifests.applied)
        resources = load_strict(node.manifests)
        ev = build_evaluator(resources)
        print(f"\nApplied {', '.join(sorted(manifests.applied))}: ", end="", flush=True)
        converged = wait_applied(node, ev)
        st = node.status()
        print("agent in sync, " + ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(st["counts"].items())))
        flows_ok = check_matrix(node, ev, pods)
        svc = find_service(resources, pods)
        clients = [p for k, p in pods.items() if svc is None or p not in svc.backends]
        svc_ok = svc is not None and bool(clients) and check_service(node, ev, svc, clients[-1])
        if svc is None:
            print(f"\n{BAD} no Service with a cluster IP and a NodePort in the manifests")
        deleted = delete_pods(node, pods)
        code = node.stop_agent()
        print(f"agent stopped with SIGTERM (exit {code}); it leaves the dataplane programmed for its next start")
    finally:
        token = node.token
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)      # a second Ctrl-C must not cut the clean-up short
        node.close()
    left = [n for n in _netns_names() if n.startswith(token)]
    print(f"Cleaned up: {BAD + ' namespaces left: ' + ', '.join(left) if left else 'every netns and file removed'}"
          f" ({time.monotonic() - started:.1f} s)")
    return 0 if converged and flows_ok and svc_ok and deleted and not left else 1


def _netns_names() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _default_examples() -> Path:
    here = Path("examples")
    return here if here.is_dir() else Path(__file__).resolve().parent.parent / "examples"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vppagent.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataplane", choices=("nftables", "iptables"), default="nftables")
    parser.add_argument("--manifests", type=Path, default=None, metavar="DIR",
                        help="example manifests to copy into the datastore (default: examples/)")
    args = parser.parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(errors="replace")      # ✓/✗ on a non-UTF-8 terminal
    if os.geteuid() != 0:
        print("the demo creates network namespaces and firewall rules: run it as root (sudo make demo)",
              file=sys.stderr)
        return 2
    for tool in ("ip", "nft" if args.dataplane == "nftables" else "iptables"):
        if shutil.which(tool) is None:
            print(f"{tool} is not installed (make setup installs the Debian packages)", file=sys.stderr)
            return 2
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda n, _f: sys.exit(128 + n))     # unwinds through the clean-up
    try:
        return run_demo(args.manifests or _default_examples(), args.dataplane)
    except KeyboardInterrupt:
        print("\ninterrupted (everything was cleaned up)", file=sys.stderr)
        return 130
    except ValidationError as exc:
        print(f"\ndemo failed: invalid manifest: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - everything is cleaned up by now; say what broke
        print(f"\ndemo failed ({type(exc).__name__}, everything was cleaned up): {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
