#!/usr/bin/env python3
"""Linux dataplane benchmark: pod-to-pod TCP throughput and new connections/s vs policy rules.

Per mode, a fresh node netns with two pod netns (``client`` and ``server``)
wired by LinuxPodNetwork exactly as a CNI ADD does (veth, /32 routes, proxy
ARP, 169.254.1.1 gateway). The dataplane runs in this process against the
node netns. Modes:

* ``no-policy``: wiring only, no netfilter rules at all (the baseline);
* ``iptables`` (nft backend), ``iptables-legacy``, ``nftables``: the agent's
  dataplane, with R = 0, 100, 1,000, 10,000 policy rules applying to the server
  pod's ingress. They sit in Calico NetworkPolicies of --rules-per-policy
  rules each (Deny TCP from a source /32 that is never used, to some port),
  so the test flows traverse all of them, then one last policy allows TCP
  from the client pod to the test ports. R = 0 is that allow policy alone.

For every point: TCP throughput with iperf3 (one stream, --seconds) and new
TCP connections per second (a Python connect/close loop in the client pod
against an accept/close loop in the server pod, at most --conn-max
connections or --conn-seconds). The client closes with RST (SO_LINGER 0) so
no TIME_WAIT state piles up between points. Before measuring, the bench checks
the policy is in force: a SYN to an unlisted port is dropped (not refused).

    sudo .venv/bin/python perf/linux_dataplane_bench.py [--rules 0,100,1000,10000]
        [--modes iptables,iptables-legacy,nftables] [--seconds 3] [--conn-seconds 2]
        [--out perf/out] [--tag NAME]

Writes perf/out/linux_dataplane[-TAG].json, -throughput.png and -connections.png.
Root only. Only traffic between the namespaces it creates.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "perf"))

import plot  # noqa: E402
from benchlib import (  # noqa: E402
    add_output_args, each_point, exec_in, iperf3_gbps, print_md_table, probe, replace_resources,
    write_results,
)
from linux_control_bench import kernel_objects, kernel_summary, make_dataplane, netns_add, netns_del  # noqa: E402

NODE = "node1"
NAMESPACE = "bench"
CLIENT_IP, SERVER_IP = "10.65.0.1", "10.65.0.2"
IPERF_PORT, CONN_PORT, CLOSED_PORT = 5201, 5301, 5999
MODES = ("iptables", "iptables-legacy", "nftables")

CONN_SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(4096)
print("ready", flush=True)
while True:
    try:
        c, _ = s.accept()
        c.close()
    except OSError:
        pass
"""

CONN_CLIENT = r"""
import json, socket, struct, sys, time
dst, port, seconds, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
rst = struct.pack("ii", 1, 0)
ok = failed = 0
lat = []
start = time.perf_counter()
end = start + seconds
while ok + failed < limit:
    now = time.perf_counter()
    if now >= end:
        break
    s = socket.socket()
    s.settimeout(1.0)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, rst)
    try:
        s.connect((dst, port))
        ok += 1
        lat.append(time.perf_counter() - now)
    except OSError:
        failed += 1
    s.close()
elapsed = time.perf_counter() - start
lat.sort()
print(json.dumps({"connections": ok, "failed": failed, "seconds": elapsed,
                  "connect_p50_us": lat[len(lat) // 2] * 1e6 if lat else None}))
"""


# ---------------------------------------------------------------- workload

def pod(name: str, ip: str, app: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": app}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c"}]},
            "status": {"podIPs": [{"ip": ip}]}}


def base_objects() -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
            pod("client", CLIENT_IP, "client"), pod("server", SERVER_IP, "server")]


def unused_net(i: int) -> str:
    """A source /32 no test flow uses (172.16.0.0/12)."""
    return f"{ipaddress.ip_address('172.16.0.0') + 1 + i}/32"


def policies(rules: int, per_policy: int) -> list[dict]:
    """``rules`` non-matching rules in policies of ``per_policy`` rules, then the allow policy."""
    out = []
    for p in range((rules + per_policy - 1) // per_policy):
        first = p * per_policy
        out.append({
            "apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
            "metadata": {"name": f"filler{p:05d}", "namespace": NAMESPACE},
            "spec": {"order": p, "selector": "app == 'server'", "types": ["Ingress"],
                     "ingress": [{"action": "Deny", "protocol": "TCP",
                                  "source": {"nets": [unused_net(i)]},
                                  "destination": {"ports": [1024 + i % 4000]}}
                                 for i in range(first, min(rules, first + per_policy))]}})
    out.append({
        "apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
        "metadata": {"name": "allow-client", "namespace": NAMESPACE},
        "spec": {"order": 1_000_000, "selector": "app == 'server'", "types": ["Ingress"],
                 "ingress": [{"action": "Allow", "protocol": "TCP",
                              "source": {"selector": "app == 'client'"},
                              "destination": {"ports": [IPERF_PORT, CONN_PORT]}}]}})
    return out


# ---------------------------------------------------------------- topology

class Topology:
    """node netns + client and server pod netns wired by LinuxPodNetwork; close() removes all."""

    def __init__(self) -> None:
        self.tok = f"ldb{os.getpid() % 100000:x}{secrets.token_hex(2)}"
        self.node, self.client, self.server = f"{self.tok}n", f"{self.tok}c", f"{self.tok}s"
        self.created: list[str] = []
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> "Topology":
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        from vppagent.dataplane.base import WorkloadWiring
        from vppagent.dataplane.linux.netlink_ns import open_netns, run_in_netns
        from vppagent.dataplane.linux.pods import LinuxPodNetwork
        from vppagent.manifests.k8s import workload_interface_name

        for ns in (self.node, self.client, self.server):
            netns_add(ns)
            self.created.append(ns)
        net = LinuxPodNetwork()
        fd = open_netns(self.node)
        try:
            for name, ns, ip in (("client", self.client, CLIENT_IP), ("server", self.server, SERVER_IP)):
                wiring = WorkloadWiring(
                    container_id=f"{self.tok}-{name}", netns=ns, interface_name="eth0",
                    host_interface_name=workload_interface_name(NAMESPACE, name),
                    ips=(ipaddress.ip_interface(f"{ip}/32"),), mtu=1500, namespace=NAMESPACE, pod=name)
                run_in_netns(fd, lambda w=wiring: net.wire(w))
        finally:
            os.close(fd)
        # The client opens many short connections: the whole port range, no TIME_WAIT (RST close).
        subprocess.run(["ip", "netns", "exec", self.client, "sysctl", "-qw",
                        "net.ipv4.ip_local_port_range=1024 65000"], check=True)

    def spawn(self, ns: str, argv: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        self.procs.append(proc)
        return proc

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.procs.clear()
        for ns in reversed(self.created):
            netns_del(ns)
        self.created.clear()


def start_servers(topo: Topology) -> None:
    topo.spawn(topo.server, ["iperf3", "-s", "-p", str(IPERF_PORT)])
    conn = topo.spawn(topo.server, [sys.executable, "-I", "-S", "-c", CONN_SERVER, str(CONN_PORT)])
    assert conn.stdout is not None
    if conn.stdout.readline().strip() != "ready":
        raise RuntimeError(f"connection server did not start: {conn.stderr.read() if conn.stderr else ''}")
    time.sleep(0.3)   # iperf3 -s has no readiness signal; the client retries too


def throughput(topo: Topology, seconds: int) -> float:
    """Gbit/s received by the server, one TCP stream."""
    return iperf3_gbps(topo.client, SERVER_IP, IPERF_PORT, seconds, attempts=5, slack=30, connect_timeout_ms=None)


def connections(topo: Topology, seconds: float, limit: int) -> dict[str, Any]:
    out = json.loads(exec_in(topo.client, [sys.executable, "-I", "-S", "-c", CONN_CLIENT, SERVER_IP, str(CONN_PORT),
                                           f"{seconds:g}", str(limit)], timeout=seconds + 30, check=True).stdout)
    if out["failed"]:
        raise RuntimeError(f"{out['failed']} of {out['connections'] + out['failed']} test connections failed")
    out["per_second"] = out["connections"] / out["seconds"]
    return out


def probe_closed(topo: Topology) -> str:
    """What a SYN to an unlisted port gets: 'refused' (no policy) or 'dropped' (default deny)."""
    return probe(topo.client, SERVER_IP, CLOSED_PORT, check=True)


def measure_once(topo: Topology, a: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    return throughput(topo, a.seconds), connections(topo, a.conn_seconds, a.conn_max)


# ---------------------------------------------------------------- modes

class Lane:
    """One mode: its topology, its dataplane (none for no-policy) and the calculation feeding it."""

    def __init__(self, mode: str, stack) -> None:
        self.mode = mode
        self.topo = stack.enter_context(Topology())
        start_servers(self.topo)
        self.dp = None
        self.graph = None
        self.current: dict[str, Any] = {}
        self.points: list[dict[str, Any]] = []
        if mode != "no-policy":
            from vppagent.calc.graph import CalcGraph
            from vppagent.manifests.loader import load_objects
            self.dp = make_dataplane(mode, self.topo.node)
            stack.callback(self.dp.stop)
            self.dp.start()
            self.graph = CalcGraph(NODE)
            self.graph.apply_all(load_objects(base_objects(), "bench"))

    def program(self, rules: int, per_policy: int) -> dict[str, Any]:
        """Make ``rules`` filler rules apply to the server; check the policy is in force."""
        if self.dp is None:
            return {"rules": rules, "closed_port": probe_closed(self.topo)}
        from vppagent.manifests.loader import load_objects
        from vppagent.model.updates import InSync
        assert self.graph is not None
        wanted = {r.name: r for r in load_objects(policies(rules, per_policy), f"rules{rules}")}
        t0 = time.perf_counter()
        first = not self.current
        updates = replace_resources(self.graph, self.current, wanted)
        self.current = wanted
        self.dp.apply([*updates, InSync()] if first else updates)
        apply_s = time.perf_counter() - t0
        report = self.dp.last_report
        if report is None or report.errors:
            raise RuntimeError(f"{self.mode}: applying {rules} rules failed: {report and report.errors[:3]}")
        closed = probe_closed(self.topo)
        if closed != "dropped":
            raise RuntimeError(f"{self.mode} with {rules} rules: a SYN to an unlisted port was {closed}, "
                               "expected dropped (policy not in force)")
        return {"rules": rules, "policies": len(wanted), "apply_s": apply_s, "closed_port": closed,
                "kernel": kernel_objects(self.mode, self.topo.node)}


def run_all(modes: list[str], a: argparse.Namespace, rule_counts: list[int], log) -> dict[str, Any]:
    """All lanes side by side; every round measures each lane in turn, so load from other work on
    the machine spreads over the modes instead of favouring the ones measured in a quiet moment."""
    out: dict[str, Any] = {}
    with contextlib.ExitStack() as stack:
        lanes = [Lane(mode, stack) for mode in ["no-policy"] + modes]
        for rules in rule_counts:
            points = {lane.mode: lane.program(rules, a.rules_per_policy) for lane in lanes}
            for p in points.values():
                p.update(gbps_runs=[], conn_runs=[])
            for _ in range(a.repeats):
                for lane in lanes:
                    gbps, conn = measure_once(lane.topo, a)
                    points[lane.mode]["gbps_runs"].append(gbps)
                    points[lane.mode]["conn_runs"].append(conn)
            for lane in lanes:
                p = points[lane.mode]
                p["gbps"] = statistics.median(p["gbps_runs"])
                p["conn_per_s"] = statistics.median(c["per_second"] for c in p["conn_runs"])
                p["connect_p50_us"] = statistics.median(c["connect_p50_us"] for c in p["conn_runs"])
                lane.points.append(p)
                extra = (f" ({p['policies']} policies applied in {p['apply_s']:.2f} s; {kernel_summary(p['kernel'])})"
                         if "apply_s" in p else f" (closed port: {p['closed_port']})")
                log(f"{lane.mode:>15} {rules:>6} rules: {p['gbps']:6.2f} Gbit/s, "
                    f"{p['conn_per_s']:8,.0f} conn/s{extra}")
        for lane in lanes:
            out[lane.mode] = {"mode": lane.mode, "points": lane.points}
    return out


# ---------------------------------------------------------------- output

def print_table(res: dict[str, Any]) -> None:
    heads = ["rules", "mode", "policies", "apply", "Gbit/s", "vs no-policy", "conn/s", "vs no-policy",
             "connect p50"]
    rows = [[f"{rules:,}", mode, f"{p['policies']:,}" if "policies" in p else "-",
             f"{p['apply_s']:.2f} s" if "apply_s" in p else "-",
             f"{p['gbps']:.2f}", f"{p['gbps'] / b['gbps']:.2f}",
             f"{p['conn_per_s']:,.0f}", f"{p['conn_per_s'] / b['conn_per_s']:.2f}",
             f"{p['connect_p50_us']:.0f} us"]
            for rules, mode, p, b in each_point(res["modes"], res["rule_counts"], "no-policy")]
    print()
    print_md_table(heads, rows, res["notes"])


def plot_results(res: dict[str, Any], stem: str, out: str) -> list[Path]:
    counts = res["rule_counts"]
    written = []
    for key, label, name in (("gbps", "TCP throughput, 1 stream (Gbit/s)", "throughput"),
                             ("conn_per_s", "new TCP connections per second", "connections")):
        series: dict[str, list[float | None]] = {}
        for mode, r in res["modes"].items():
            by = {p["rules"]: p[key] for p in r["points"]}
            series[mode + (" (no rules at all)" if mode == "no-policy" else "")] = [by.get(c) for c in counts]
        path = plot.line_chart(plot.out_path(f"{stem}-{name}.png", out),
                               f"Pod to pod, one node: {label}",
                               counts, series, xlabel="policy rules applying to the destination pod (+1 allow)",
                               ylabel=label, logx=True,
                               note="; ".join(res["notes"])[:200])
        if path:
            written.append(path)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default="0,100,1000,10000", help="comma-separated rule counts")
    ap.add_argument("--rules-per-policy", type=int, default=10)
    ap.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)} (no-policy always runs)")
    ap.add_argument("--seconds", type=int, default=2, help="iperf3 run length (whole seconds, at least 1)")
    ap.add_argument("--conn-seconds", type=float, default=1.5, help="time bound of one connection loop")
    ap.add_argument("--conn-max", type=int, default=20000, help="count bound of one connection loop")
    ap.add_argument("--repeats", type=int, default=3, help="runs per point (median), interleaved over modes")
    add_output_args(ap)
    a = ap.parse_args()
    # SIGTERM unwinds like Ctrl-C: every namespace and process this run made is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("linux_dataplane_bench needs root (network namespaces, netfilter)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "ip"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            print(f"missing {tool} (Debian packages iperf3, iproute2)", file=sys.stderr)
            return 2
    if a.seconds < 1:
        ap.error("--seconds must be at least 1 (iperf3 -t 0 means forever)")
    modes = [m for m in a.modes.split(",") if m and m != "no-policy"]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (known: {', '.join(MODES)})")
    counts = sorted({int(x) for x in a.rules.split(",") if x != ""})
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    res: dict[str, Any] = {
        "benchmark": "linux_dataplane", "rule_counts": counts, "rules_per_policy": a.rules_per_policy,
        "seconds": a.seconds, "conn_seconds": a.conn_seconds, "conn_max": a.conn_max, "repeats": a.repeats,
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "loadavg_start": os.getloadavg()},
        "modes": {}, "notes": [],
    }
    res["modes"] = run_all(modes, a, counts, log)
    res["elapsed_s"] = time.perf_counter() - started
    res["host"]["loadavg_end"] = os.getloadavg()
    res["notes"].append(f"{os.cpu_count()} CPUs shared with other work (iperf3 client and server share them); "
                        f"load average {res['host']['loadavg_start'][0]:.2f} at start, "
                        f"{res['host']['loadavg_end'][0]:.2f} at end")
    print_table(res)
    write_results(res, "linux_dataplane", a, plot_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
