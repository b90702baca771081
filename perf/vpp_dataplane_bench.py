#!/usr/bin/env python3
"""VPP dataplane benchmark: pod-to-pod and pod-to-service TCP throughput through VPP, with 0 and
10,000 policy rules on the destination pod, against a plain Linux veth/bridge path in the same run.

Needs a real VPP (``$VPP_BIN``, plugins from ``$VPP_PLUGIN_PATH``) and root; with no VPP it says
so and exits 0 (the fake VPP forwards nothing). Lanes, each with a ``client`` (10.65.0.1) and a
``server`` (10.65.0.2) pod netns running ``iperf3 -s``:

* ``linux-bridge`` (the baseline): both pods on one Linux bridge in a netns of its own, plain
  veths, no netfilter on the path; its "service" is the ClusterIP DNATed by one nftables rule in
  the client's netns (conntrack and a NAT translation, as kube-proxy's would be);
* ``vpp-npol`` / ``vpp-acl``: one VPP each (a netns of its own), both pods wired by the VPP
  dataplane exactly as CNI ADD does (``podInterface: af_packet``: veth, af_packet, per-pod VRFs,
  loopback + unnumbered, /32 route), and a ClusterIP Service ``10.96.0.10:80`` → server:5201
  programmed as a cnat translation. Policy goes through the npol engine or the ACL fallback.

With R rules, the server's ingress has R/--rules-per-policy Calico policies of rules that never
match the test flow (Deny TCP from an unused /32; linux_dataplane_bench's filler) before one policy
that allows the client to 5201. Before measuring, a SYN to an unlisted port must be dropped (policy
in force). For each R, every lane and path is measured in turn, --repeats times (median), so
other load on the machine spreads over the lanes; each number is the server's received Gbit/s of
one ``iperf3 -c`` TCP stream of --seconds.

    sudo VPP_BIN=... VPP_PLUGIN_PATH=... .venv/bin/python perf/vpp_dataplane_bench.py
        [--rules 0,10000] [--rules-per-policy 10] [--engines npol,acl] [--seconds 3] [--repeats 3]
        [--poll-sleep-usec 0] [--af-packet-ring vpp|RX_FRAME,RX_FRAMES,TX_FRAME,TX_FRAMES] [--quick]
        [--out perf/out] [--tag NAME] [--no-plot]

Writes perf/out/vpp_dataplane[-TAG].json and .png. Every VPP, netns, veth and iperf3 this run
starts is removed at the end, also after a failure, Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "perf"))

import plot  # noqa: E402
import vpp_bench as vb  # noqa: E402
from benchlib import (  # noqa: E402
    add_output_args, each_point, iperf3_gbps, print_md_table, probe, replace_resources, write_results,
)
from linux_dataplane_bench import CLIENT_IP, CLOSED_PORT, IPERF_PORT, NAMESPACE, SERVER_IP, base_objects, policies  # noqa: E402

CLUSTER_IP, SERVICE_PORT = "10.96.0.10", 80
PATHS = ("pod", "service")
AF_PACKET_DROPS = ("tx ring overrun", "tx frame not ready", "partial packet", "tx sendto temporary failure",
                   "tx sendto fatal failure")
ENGINES = ("npol", "acl")


def service_objects() -> list[dict]:
    """ClusterIP 10.96.0.10:80 → the server pod's 5201 (one local backend)."""
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": NAMESPACE},
         "spec": {"clusterIP": CLUSTER_IP, "ports": [{"name": "iperf", "port": SERVICE_PORT,
                                                      "targetPort": IPERF_PORT, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": "web-x", "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": "web"}},
         "addressType": "IPv4", "ports": [{"name": "iperf", "port": IPERF_PORT, "protocol": "TCP"}],
         "endpoints": [{"addresses": [SERVER_IP], "nodeName": vb.NODE, "conditions": {"ready": True}}]},
    ]


def destination(path: str) -> tuple[str, int]:
    return (SERVER_IP, IPERF_PORT) if path == "pod" else (CLUSTER_IP, SERVICE_PORT)


def spawn(ns: str, argv: list[str]) -> subprocess.Popen[str]:
    """A long-running process in ``ns``, in a process group of its own (registered for cleanup)."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, *argv], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    vb.REGISTRY.pgids.add(proc.pid)
    return proc


class Lane:
    """Two pods and an iperf3 server; subclasses wire them and apply policy."""

    name = ""
    client_ns = server_ns = ""

    def __init__(self) -> None:
        self.points: list[dict[str, Any]] = []
        self.servers: list[subprocess.Popen[str]] = []

    def start_server(self) -> None:
        proc = spawn(self.server_ns, ["iperf3", "-s", "-p", str(IPERF_PORT)])
        self.servers.append(proc)
        deadline = time.monotonic() + 10
        while probe(self.client_ns, SERVER_IP, IPERF_PORT, 1.0) != "open":
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: iperf3 -s is not reachable at {SERVER_IP}:{IPERF_PORT} "
                                   f"({'it exited' if proc.poll() is not None else 'no answer'})")
            time.sleep(0.2)

    def program(self, rules: int, per_policy: int) -> dict[str, Any]:
        return {"rules": rules}

    def close(self) -> None:
        for proc in self.servers:
            vb.kill_group(proc.pid, timeout=5)
            with contextlib.suppress(Exception):
                proc.wait(timeout=5)
        self.servers.clear()


class LinuxBridgeLane(Lane):
    """The baseline: a Linux bridge, two veths, no netfilter on the pod path; the service is one
    nftables DNAT rule in the client's netns."""

    name = "linux-bridge"

    def __init__(self) -> None:
        super().__init__()
        tok = f"vpb{vb.TOKEN}L"
        self.bridge_ns, self.client_ns, self.server_ns = f"{tok}br", f"{tok}c", f"{tok}s"
        self.all_ns = [self.bridge_ns, self.client_ns, self.server_ns]
        try:
            vb.netns_add(*self.all_ns)
            br = ["link add br0 type bridge", "link set br0 up"]
            for short, ns in (("c", self.client_ns), ("s", self.server_ns)):
                br += [f"link add v{short} type veth peer name eth0 netns {ns}", f"link set v{short} master br0",
                       f"link set v{short} up"]
            vb.run(["ip", "-n", self.bridge_ns, "-batch", "-"], "\n".join(br) + "\n")
            for ns, ip in ((self.client_ns, CLIENT_IP), (self.server_ns, SERVER_IP)):
                vb.run(["ip", "-n", ns, "-batch", "-"],
                       f"addr add {ip}/24 dev eth0\nlink set eth0 up\nroute add 10.96.0.0/12 dev eth0\n")
            vb.run(["ip", "netns", "exec", self.client_ns, "nft", "-f", "-"],
                   "table ip vpbsvc {\n chain out { type nat hook output priority -100; policy accept;\n"
                   f"  ip daddr {CLUSTER_IP} tcp dport {SERVICE_PORT} dnat to {SERVER_IP}:{IPERF_PORT}\n }}\n}}\n")
            self.start_server()
        except BaseException:
            self.close()
            raise

    def program(self, rules: int, per_policy: int) -> dict[str, Any]:
        return {"rules": rules, "closed_port": probe(self.client_ns, SERVER_IP, CLOSED_PORT)}

    def close(self) -> None:
        try:
            super().close()
        finally:
            vb.netns_del(*self.all_ns)


class VppLane(Lane):
    """One VPP, the VPP dataplane in this process, both pods wired through it, a ClusterIP Service."""

    def __init__(self, engine: str, index: int, poll_sleep_usec: int | None, af_packet_ring: Any = None) -> None:
        super().__init__()
        from vppagent.calc.graph import CalcGraph
        from vppagent.manifests.loader import load_objects
        from vppagent.model.updates import InSync
        self.engine = engine
        self.name = f"vpp-{engine}"
        self.target: vb.Target | None = None
        self.dp: Any = None
        self.current: dict[str, Any] = {}
        try:
            self.target = vb.Target(f"d{index}", False, poll_sleep_usec=poll_sleep_usec, af_packet_ring=af_packet_ring)
            self.client_ns, self.server_ns = self.target.make_pod_netns(2)
            self.dp = self.target.dataplane(engine)
            self.dp.start()
            if not self.dp._connected:
                raise RuntimeError(f"{self.name}: the dataplane did not connect: {self.dp.status().last_error}")
            objs = base_objects()
            pods = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Pod"}
            for name, ns in (("client", self.client_ns), ("server", self.server_ns)):
                self.dp.wire_workload(vb.pod_wiring(pods[name], ns))
            self.graph = CalcGraph(vb.NODE)
            self.graph.apply_all(load_objects(objs + service_objects(), "bench"))
            self.dp.apply([*self.graph.flush(), InSync()])
            vb.check_report(self.dp, f"{self.name}: pods and service")
            self.start_server()
        except BaseException:
            self.close()
            raise

    def program(self, rules: int, per_policy: int) -> dict[str, Any]:
        """Make ``rules`` filler rules (+ the allow) govern the server's ingress; check they do."""
        from vppagent.manifests.loader import load_objects
        assert self.dp is not None
        wanted = {r.name: r for r in load_objects(policies(rules, per_policy), f"rules{rules}")}
        t0 = time.perf_counter()
        updates = replace_resources(self.graph, self.current, wanted)
        self.current = wanted
        calc = time.perf_counter() - t0
        messages = self.dp.conn.stats["messages"]
        self.dp.apply(updates)
        apply_s = time.perf_counter() - t0 - calc
        vb.check_report(self.dp, f"{self.name} with {rules} rules")
        closed = probe(self.client_ns, SERVER_IP, CLOSED_PORT)
        if closed != "dropped":
            raise RuntimeError(f"{self.name} with {rules} rules: a SYN to an unlisted port was {closed}, "
                               "expected dropped (policy not in force)")
        return {"rules": rules, "policies": len(wanted), "calc_s": calc, "apply_s": apply_s, "closed_port": closed,
                "vpp_messages": self.dp.conn.stats["messages"] - messages}

    def translated(self) -> tuple[int, int]:
        """(packets, bytes) VPP counted through the ClusterIP's cnat translation: proof that the
        service path was translated by cnat, not routed some other way."""
        assert self.target is not None and self.target.vpp is not None
        text = self.target.vpp.cli("show cnat translation")
        at = text.find(f"{CLUSTER_IP};{SERVICE_PORT} ")
        m = re.search(r"to:\[(\d+):(\d+)\]", text[at:]) if at >= 0 else None
        return (int(m.group(1)), int(m.group(2))) if m else (0, 0)

    def af_packet_counters(self) -> dict[str, int]:
        """VPP's counters of the pods' af_packet nodes (``show errors``), by reason.  Drops are in
        ``AF_PACKET_DROPS``: a TX ring too small for the traffic shows up as "tx ring overrun" /
        "tx frame not ready", an RX block too small for GSO packets as "partial packet"."""
        assert self.target is not None and self.target.vpp is not None
        out: dict[str, int] = {}
        for line in self.target.vpp.cli("show errors").splitlines():
            m = re.match(r"\s*(\d+)\s+(\S+)\s+(.+?)\s+(?:error|warn|info|unknown)?\s*$", line)
            if m and (m.group(2).startswith("host-") or "af-packet" in m.group(2)):
                out[m.group(3)] = out.get(m.group(3), 0) + int(m.group(1))
        return out

    def close(self) -> None:
        try:
            super().close()
        finally:
            try:
                if self.dp is not None:
                    self.dp.stop()
            finally:
                if self.target is not None:
                    self.target.close()


def run_all(a: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    lanes: list[Lane] = []
    try:
        lanes.append(LinuxBridgeLane())
        for i, engine in enumerate(a.engines):
            lane = VppLane(engine, i, a.poll_sleep_usec, a.ring)
            lanes.append(lane)
            assert lane.target is not None
            out["_vpp_version"] = lane.target.version
            log(f"{lane.name}: VPP {lane.target.version} up, pods wired, service programmed")
        for rules in a.rules:
            points = {}
            for lane in lanes:
                points[lane.name] = lane.program(rules, a.rules_per_policy)
                if "apply_s" in points[lane.name]:
                    p = points[lane.name]
                    log(f"{lane.name}: {rules} rules in {p['policies']} policies applied in {p['apply_s']:.2f} s "
                        f"(+ calc {p['calc_s']:.2f} s, {p['vpp_messages']} VPP messages)")
                points[lane.name].update({f"{path}_runs": [] for path in PATHS})
            before = {lane.name: lane.translated() for lane in lanes if isinstance(lane, VppLane)}
            for _ in range(a.repeats):
                for lane in lanes:
                    for path in PATHS:
                        points[lane.name][f"{path}_runs"].append(iperf3_gbps(lane.client_ns, *destination(path), a.seconds))
            for lane in lanes:
                p = points[lane.name]
                for path in PATHS:
                    p[f"{path}_gbps"] = statistics.median(p[f"{path}_runs"])
                if isinstance(lane, VppLane):
                    after = lane.translated()
                    p["cnat_translated_packets"] = after[0] - before[lane.name][0]
                    p["cnat_translated_bytes"] = after[1] - before[lane.name][1]
                    if p["cnat_translated_packets"] <= 0:
                        raise RuntimeError(f"{lane.name}: no packet went through the ClusterIP's cnat translation")
                lane.points.append(p)
                cnat = f" ({p['cnat_translated_bytes'] / 1e9:.1f} GB through the cnat translation)" if "cnat_translated_bytes" in p else ""
                log(f"{lane.name:>12} {rules:>6} rules: pod {p['pod_gbps']:.2f} Gbit/s, service {p['service_gbps']:.2f} Gbit/s{cnat}")
        for lane in lanes:
            out[lane.name] = {"lane": lane.name, "points": lane.points}
            if isinstance(lane, VppLane):
                counters = out[lane.name]["af_packet_counters"] = lane.af_packet_counters()
                drops = {k: v for k, v in counters.items() if k in AF_PACKET_DROPS}
                log(f"{lane.name}: af_packet drops: {drops or 'none'} (all counters: {counters})")
    finally:
        for lane in reversed(lanes):
            lane.close()
    return out


def print_table(res: dict[str, Any]) -> None:
    print(f"\n## Pod-to-pod and pod-to-service TCP throughput: VPP {res['vpp_version']} vs a Linux bridge\n")
    heads = ["rules", "lane", "pod→pod Gbit/s", "vs Linux", "pod→service Gbit/s", "vs Linux pod→svc", "vs Linux pod→pod",
             "rules applied in"]
    rows = [[f"{rules:,}", name, f"{p['pod_gbps']:.2f}", f"{p['pod_gbps'] / b['pod_gbps']:.2f}",
             f"{p['service_gbps']:.2f}", f"{p['service_gbps'] / b['service_gbps']:.2f}",
             f"{p['service_gbps'] / b['pod_gbps']:.2f}",
             f"{p['apply_s']:.2f} s ({p['policies']:,} policies)" if "apply_s" in p else "-"]
            for rules, name, p, b in each_point(res["lanes"], res["rules"], "linux-bridge")]
    print_md_table(heads, rows, res["notes"])


def plot_results(res: dict[str, Any], stem: str, out: str) -> list[Path]:
    rules = res["rules"]
    panels = []
    for path, title in (("pod", "pod → pod"), ("service", "pod → ClusterIP service")):
        series = {}
        for name, lane in res["lanes"].items():
            by = {p["rules"]: p[f"{path}_gbps"] for p in lane["points"]}
            series[name] = [by.get(r) for r in rules]
        panels.append({"title": f"{title}, 1 TCP stream", "ylabel": "Gbit/s", "groups": [f"{r:,} rules" for r in rules],
                       "series": series})
    path = plot.bar_panels(plot.out_path(f"{stem}.png", out), f"TCP throughput through VPP {res['vpp_version']} "
                           "vs a Linux bridge", panels, note="; ".join(res["notes"])[:220])
    return [path] if path else []


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", default="0,10000", help="comma-separated rule counts on the server's ingress")
    ap.add_argument("--rules-per-policy", type=int, default=10)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"of {', '.join(ENGINES)}")
    ap.add_argument("--seconds", type=int, default=3, help="iperf3 run length (whole seconds, at least 1)")
    ap.add_argument("--repeats", type=int, default=3, help="runs per point (median), interleaved over lanes")
    ap.add_argument("--poll-sleep-usec", type=int, default=0,
                    help="VPP's unix poll-sleep-usec (0: off; af_packet runs in interrupt mode, so an idle VPP sleeps)")
    ap.add_argument("--af-packet-ring", default="",
                    help='the pods\' af_packet ring sizes: "" the dataplane\'s default, "vpp" VPP\'s own (what the '
                         'agent used before passing sizes) or RX_FRAME,RX_FRAMES_PER_BLOCK,TX_FRAME,TX_FRAMES_PER_BLOCK')
    ap.add_argument("--quick", action="store_true", help="one short run at 0 and 100 rules, npol only")
    add_output_args(ap)
    a = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))     # unwind (and clean up) like Ctrl-C
    signal.signal(signal.SIGHUP, lambda *_: sys.exit(129))
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("vppagent.vpp.connection").setLevel(logging.ERROR)
    if a.quick:
        a.rules, a.engines, a.seconds, a.repeats = "0,100", "npol", 1, 1
    a.rules = sorted({int(x) for x in a.rules.split(",") if x.strip()})
    a.engines = [e for e in a.engines.split(",") if e]
    for e in a.engines:
        if e not in ENGINES:
            ap.error(f"unknown engine {e!r} (known: {', '.join(ENGINES)})")
    if a.seconds < 1:
        ap.error("--seconds must be at least 1 (iperf3 -t 0 means forever)")
    try:
        a.ring = vb.parse_ring(a.af_packet_ring)
    except (ValueError, TypeError) as e:
        ap.error(f"--af-packet-ring: {e}")
    if not vb.vpp_bin():
        print("vpp_dataplane_bench: no real VPP ($VPP_BIN is not set); the fake VPP forwards no packets, "
              "so there is nothing to measure. Skipped.")
        return 0
    if os.geteuid() != 0:
        print("vpp_dataplane_bench needs root (network namespaces, veths)", file=sys.stderr)
        return 2
    for tool in ("iperf3", "ip", "nft"):
        if not shutil.which(tool):
            print(f"missing {tool} (Debian packages iperf3, iproute2, nftables)", file=sys.stderr)
            return 2
    started = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    res: dict[str, Any] = {"benchmark": "vpp_dataplane", "rules": a.rules, "rules_per_policy": a.rules_per_policy,
                           "seconds": a.seconds, "repeats": a.repeats, "poll_sleep_usec": a.poll_sleep_usec,
                           "af_packet_ring": list(a.ring.as_tuple()), "af_packet_ring_mib": a.ring.ring_bytes() / (1 << 20),
                           "host": vb.host_info(), "notes": []}
    log(f"VPP {vb.vpp_bin()}; load average {res['host']['loadavg_start'][0]:.2f}")
    try:
        res["lanes"] = run_all(a, log)
    finally:
        vb.REGISTRY.sweep()
    res["vpp_version"] = res["lanes"].pop("_vpp_version", "?")
    res["elapsed_s"] = time.perf_counter() - started
    res["host"]["loadavg_end"] = os.getloadavg()
    res["notes"].append(vb.load_note(res["host"]) + "; iperf3 client, server, VPP and the kernel's veth work "
                        "all share them")
    res["notes"].append("linux-bridge service = the same bridge path plus one nftables DNAT in the client netns")
    print_table(res)
    write_results(res, "vpp_dataplane", a, plot_results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
