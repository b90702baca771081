#!/usr/bin/env python3
"""Linux control-plane benchmark: iptables and nftables modes against kube-proxy's iptables-restore.

For N local pods, P policies and S services × E endpoints (default 1,000 /
2,000 / 5,000 × 3), each mode runs in its own worker process (so its peak RSS
is its own) against a fresh node netns, and measures:

* full sync: the complete update stream (CalcGraph apply + flush, then
  ``dataplane.apply(updates + [InSync])``) until the kernel is programmed
  (the dataplane's commit has returned), split into calculation and dataplane;
* services-only sync: the same S × E services and nothing else, in another
  fresh netns (the apples-to-apples comparison with kube-proxy);
* single-change latency (median and p90 of --changes, fewer when a kind of
  change takes longer than --change-seconds in all): one policy's rule
  port, one pod's label, one service's endpoint, each calc update + flush + apply;
* memory: peak RSS of the worker (and of the largest tool it ran, e.g.
  iptables-restore or nft), kernel objects after the full sync (rules,
  chains, sets, set elements).

Beside them, in the same run, the baseline: the same services in kube-proxy's
iptables layout (perf/kubeproxy_baseline.py) loaded with one
``iptables-restore`` in a fresh netns, nft and legacy backends.

A mode whose full sync does not finish within --budget seconds (default 300)
is stopped and retried at half the scale (pods, policies and services
together) until it does; the table says at which scale each column was
measured, and a note says why.

    sudo .venv/bin/python perf/linux_control_bench.py [--pods 1000] [--policies 2000]
        [--services 5000] [--endpoints 3] [--modes iptables,nftables] [--budget 300]
        [--out perf/out] [--tag NAME]

Writes perf/out/linux_control[-TAG].json and .png. Root only (network namespaces).
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import json
import os
import platform
import re
import resource
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "perf"))

import kubeproxy_baseline  # noqa: E402
import plot  # noqa: E402
from benchlib import print_md_table  # noqa: E402

NODE = "node1"
APPS = [f"app{i}" for i in range(25)]
MODES = ("iptables", "iptables-legacy", "nftables")
BASELINES = ("kube-proxy-nft", "kube-proxy-legacy")
SVC_PORT, TARGET_PORT = 80, 8080


# ---------------------------------------------------------------- workload generation

def namespaces(n: int) -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": f"ns{i}", "labels": {"team": f"t{i % 10}", "env": ["prod", "dev"][i % 2]}}}
            for i in range(n)]


def pod(i: int, n_ns: int, app: str | None = None) -> dict:
    """Pod i on this node; addresses 10.65.0.0/16 (services' endpoints use 10.64.0.0/16)."""
    ip = ipaddress.ip_address("10.65.0.0") + 1 + i
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"pod{i}", "namespace": f"ns{i % n_ns}",
                         "labels": {"app": app or APPS[i % len(APPS)], "version": f"v{i % 3}"}},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8000 + i % 5}]}]},
            "status": {"podIPs": [{"ip": str(ip)}]}}


def tiers() -> list[dict]:
    return [{"apiVersion": "projectcalico.org/v3", "kind": "Tier", "metadata": {"name": "security"},
             "spec": {"order": 100}}]


def pool() -> dict:
    return {"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pods"},
            "spec": {"cidr": "10.65.0.0/16", "natOutgoing": True}}


def policy(i: int, n_ns: int, variant: int = 0) -> dict:
    """A mix: 30 % Kubernetes NetworkPolicy, 60 % Calico NetworkPolicy, 10 % tiered global policy."""
    ns = f"ns{i % n_ns}"
    app, peer = APPS[i % len(APPS)], APPS[(i * 7 + 3) % len(APPS)]
    kind = i % 10
    if kind < 3:
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": f"knp{i}", "namespace": ns},
                "spec": {"podSelector": {"matchLabels": {"app": app}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}},
                                               {"namespaceSelector": {"matchLabels": {"team": f"t{i % 10}"}}}],
                                      "ports": [{"port": "http"}, {"port": 443 + variant}]}]}}
    if kind < 9:
        return {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                "metadata": {"name": f"cnp{i}", "namespace": ns},
                "spec": {"order": i % 50, "selector": f"app == '{app}'",
                         "ingress": [{"action": "Allow", "protocol": "TCP",
                                      "source": {"selector": f"app == '{peer}' && version != 'v2'"},
                                      "destination": {"ports": [80 + variant, "8000:8100"]}},
                                     {"action": "Deny", "source": {"nets": [f"192.0.2.{i % 256}/32"]}}],
                         "egress": [{"action": "Allow", "destination": {"selector": f"app == '{peer}'"}}]}}
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": f"security.gnp{i}"},
            "spec": {"tier": "security", "order": i, "selector": f"app == '{app}' && version == 'v{i % 3}'",
                     "types": ["Ingress"],
                     "ingress": [{"action": "Deny", "protocol": "TCP",
                                  "source": {"namespaceSelector": f"env == 'dev' && team == 't{i % 10}'"},
                                  "destination": {"ports": [22 + variant]}},
                                 {"action": "Pass"}]}}


def service_vip(s: int) -> str:
    # The same addresses as kubeproxy_baseline.kube_proxy_rules: 10.96.0.0 + 1 + s.
    return str(ipaddress.ip_address("10.96.0.0") + 1 + s)


def endpoint_ip(s: int, e: int, endpoints: int, variant: int = 0) -> str:
    if variant:   # a replacement backend outside the baseline's range
        return str(ipaddress.ip_address("10.66.0.0") + (s * 7 + variant) % 65000 + 1)
    return str(ipaddress.ip_address("10.64.0.0") + s * endpoints + e)


def services(s: int, endpoints: int, variant: int = 0) -> list[dict]:
    """Service s (ClusterIP, TCP 80 → 8080) and its EndpointSlice; ``variant`` swaps the last backend."""
    name, ns = f"svc{s}", f"ns{s % 100}"
    eps = [endpoint_ip(s, e, endpoints) for e in range(endpoints)]
    if variant and eps:
        eps[-1] = endpoint_ip(s, endpoints - 1, endpoints, variant)
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": ns},
         "spec": {"clusterIP": service_vip(s),
                  "ports": [{"name": "http", "port": SVC_PORT, "targetPort": TARGET_PORT, "protocol": "TCP"}]}},
        {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
         "metadata": {"name": f"{name}-x", "namespace": ns, "labels": {"kubernetes.io/service-name": name}},
         "addressType": "IPv4", "ports": [{"name": "http", "port": TARGET_PORT, "protocol": "TCP"}],
         "endpoints": [{"addresses": [ip], "nodeName": "node2", "conditions": {"ready": True}} for ip in eps]},
    ]


def service_namespaces(n_services: int, n_ns: int) -> list[dict]:
    """Namespaces the services live in that the pods' namespaces do not already cover."""
    return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns{i}"}}
            for i in range(n_ns, min(100, n_services))]


def cluster(pods: int, policies: int, n_services: int, endpoints: int, n_ns: int) -> list[dict]:
    objs = namespaces(n_ns) + service_namespaces(n_services, n_ns) + tiers() + [pool()]
    objs += [pod(i, n_ns) for i in range(pods)]
    objs += [policy(i, n_ns) for i in range(policies)]
    for s in range(n_services):
        objs += services(s, endpoints)
    return objs


# ---------------------------------------------------------------- helpers

def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def peak_mib(who: int = resource.RUSAGE_SELF) -> float:
    return resource.getrusage(who).ru_maxrss / 1024


def run(argv: list[str], stdin: str | None = None, timeout: float = 300) -> str:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:6])}: exit {proc.returncode}: {proc.stderr.strip()[:500]}")
    return proc.stdout


def netns_add(name: str) -> None:
    run(["ip", "netns", "add", name])
    run(["ip", "-n", name, "link", "set", "lo", "up"])


def netns_del(name: str) -> None:
    if os.path.exists(f"/run/netns/{name}"):
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=60)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def make_dataplane(mode: str, netns: str):
    if mode.startswith("iptables"):
        from vppagent.dataplane.iptables import IptablesConfig, IptablesDataplane
        backend = "legacy" if mode == "iptables-legacy" else "nft"
        return IptablesDataplane(IptablesConfig(netns=netns, node_name=NODE, refresh_interval=0, backend=backend))
    if mode == "nftables":
        from vppagent.dataplane.nftables import NftablesConfig, NftablesDataplane
        return NftablesDataplane(NftablesConfig(netns=netns, node_name=NODE, refresh_interval=None))
    raise ValueError(f"unknown mode {mode!r} (known: {', '.join(MODES)})")


def kernel_objects(mode: str, netns: str) -> dict[str, int]:
    """What the kernel holds in ``netns``, counted by a helper process (so that parsing a
    ruleset dump of hundreds of thousands of rules does not inflate the worker's RSS)."""
    out = run([sys.executable, str(Path(__file__).resolve()), "--count-kernel", mode, netns], timeout=600)
    return json.loads(out)


def count_kernel(mode: str, netns: str) -> dict[str, int]:
    """Rules, chains, sets (and maps) and set elements in ``netns``."""
    ns = ["ip", "netns", "exec", netns]
    if mode == "nftables":
        data = json.loads(run(ns + ["nft", "-j", "list", "ruleset"]) or '{"nftables": []}')
        out = {"rules": 0, "chains": 0, "sets": 0, "maps": 0, "elements": 0}
        for obj in data.get("nftables", []):
            for kind in ("rule", "chain", "set", "map"):
                if kind in obj:
                    out[kind + "s"] += 1
                    if kind in ("set", "map"):
                        out["elements"] += len(obj[kind].get("elem", []) or [])
        return out
    suffix = "legacy" if mode == "iptables-legacy" else "nft"
    rules = chains = 0
    for tool in (f"iptables-{suffix}-save", f"ip6tables-{suffix}-save"):
        for line in run(ns + [tool]).splitlines():
            if line.startswith("-A "):
                rules += 1
            elif line.startswith(":"):
                chains += 1
    sets = elements = 0
    for line in run(ns + ["ipset", "list", "-t"]).splitlines():
        if line.startswith("Name:"):
            sets += 1
        elif line.startswith("Number of entries:"):
            elements += int(line.split(":")[1])
    return {"rules": rules, "chains": chains, "sets": sets, "elements": elements}


def kernel_summary(objs: dict[str, int]) -> str:
    parts = [f"{objs.get('rules', 0):,} rules", f"{objs.get('chains', 0):,} chains"]
    sets = objs.get("sets", 0) + objs.get("maps", 0)
    if sets or objs.get("elements"):
        parts.append(f"{sets:,} sets/maps, {objs.get('elements', 0):,} elements")
    return ", ".join(parts)


# ---------------------------------------------------------------- worker: one mode

class ToolSampler:
    """Peak RSS (VmHWM) of the tools this process runs (iptables-restore, nft, ipset, ...).

    ``getrusage(RUSAGE_CHILDREN)`` cannot tell: a child's ``ru_maxrss`` includes the
    parent's pages it shared before exec. So every process this one starts is
    remembered (a hook on ``subprocess.Popen``) and its /proc VmHWM, which
    belongs to the exec'd image only, is polled every ``period`` seconds while
    it lives. Tools that live less than a period may be missed; they are small.
    """

    def __init__(self, period: float = 0.01) -> None:
        self.period = period
        self.peak_kib = 0
        self.peak_tool = ""
        self._live: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._orig = subprocess.Popen.__init__
        sampler = self

        def init(popen, *args, **kwargs):
            sampler._orig(popen, *args, **kwargs)
            with sampler._lock:
                sampler._live.add(popen.pid)
            sampler._read(popen.pid)

        subprocess.Popen.__init__ = init   # type: ignore[method-assign]
        self._thread = threading.Thread(target=self._loop, daemon=True, name="tool-rss")
        self._thread.start()

    def _read(self, pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/status") as f:
                text = f.read()
        except OSError:
            return False
        hwm = re.search(r"^VmHWM:\s*(\d+)", text, re.M)
        if hwm and int(hwm.group(1)) > self.peak_kib:
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    tool = os.path.basename(f.read().split(b"\0")[0].decode(errors="replace"))
            except OSError:
                tool = ""
            if tool and not tool.startswith("python"):
                self.peak_kib, self.peak_tool = int(hwm.group(1)), tool
        return "State:\tZ" not in text

    def _loop(self) -> None:
        while not self._stop.wait(self.period):
            with self._lock:
                pids = list(self._live)
            for pid in pids:
                if not self._read(pid):
                    with self._lock:
                        self._live.discard(pid)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(1)
        subprocess.Popen.__init__ = self._orig   # type: ignore[method-assign]


class _Stop(Exception):
    pass


def _on_term(signum, frame):    # the parent's budget ran out: clean up on the way out
    raise _Stop()


def transactions(dp) -> dict[str, int]:
    """Kernel transactions the dataplane has sent so far (and how many were refused)."""
    if hasattr(dp, "nft"):
        return {"nft_transactions": dp.nft.sent, "nft_failed": dp.nft.failed}
    kernel = getattr(dp, "kernel", None)
    return {"restores": getattr(kernel, "restores", 0), "ipset_calls": getattr(kernel, "ipset_calls", 0)}


def worker_mode(mode: str, a: argparse.Namespace, netns_prefix: str) -> dict[str, Any]:
    from vppagent.calc.graph import CalcGraph
    from vppagent.manifests.loader import load_objects
    from vppagent.model.updates import InSync

    result: dict[str, Any] = {"mode": mode}
    t0 = time.perf_counter()
    resources = load_objects(cluster(a.pods, a.policies, a.services, a.endpoints, a.namespaces), "bench")
    result["parse_s"] = time.perf_counter() - t0
    gc.collect()
    rss_start = rss_mib()
    created: list[str] = []
    try:
        netns = f"{netns_prefix}a"
        netns_add(netns)
        created.append(netns)
        dp = make_dataplane(mode, netns)
        t0 = time.perf_counter()
        dp.start()
        result["start_s"] = time.perf_counter() - t0

        # (a) full sync
        t0 = time.perf_counter()
        graph = CalcGraph(NODE)
        graph.apply_all(resources)
        updates = graph.flush()
        t1 = time.perf_counter()
        dp.apply([*updates, InSync()])
        t2 = time.perf_counter()
        report = dp.last_report
        if report is None or report.errors or report.deferred:
            raise RuntimeError(f"{mode}: full sync failed: {report and report.errors[:3]}")
        stats = graph.stats()
        result.update(full_calc_s=t1 - t0, full_dataplane_s=t2 - t1, full_total_s=t2 - t0,
                      updates=len(updates), ops=report.ops, calc_stats=stats)
        if a.synced:
            Path(a.synced).touch()       # tells the parent the full sync made it within the budget
        result["rss_after_sync_mib"] = rss_mib()
        result["peak_rss_sync_mib"] = peak_mib()
        result["transactions"] = transactions(dp)
        result["kernel"] = kernel_objects(mode, netns)

        # (b) single changes
        calc_times: dict[str, list[float]] = {"policy": [], "pod_label": [], "service_endpoint": []}

        def change(kind: str, resource) -> float:
            s = time.perf_counter()
            graph.update(resource)
            ups = graph.flush()
            m = time.perf_counter()
            dp.apply(ups)
            e = time.perf_counter()
            rep = dp.last_report
            if rep is not None and rep.errors:
                raise RuntimeError(f"{mode}: change failed: {rep.errors[:3]}")
            calc_times[kind].append(m - s)
            return e - s

        def make_change(kind: str, k: int):
            if kind == "policy":
                return load_objects([policy((k * 97 + 1) % a.policies, a.namespaces, variant=k + 1)])[0]
            if kind == "pod_label":
                j = (k * 397) % a.pods
                return load_objects([pod(j, a.namespaces, app=APPS[(j + 1 + k) % len(APPS)])])[0]
            return load_objects(services((k * 389) % a.services, a.endpoints, variant=k + 1))[1]

        singles: dict[str, list[float]] = {"policy": [], "pod_label": [], "service_endpoint": []}
        present = {"policy": a.policies, "pod_label": a.pods, "service_endpoint": a.services}
        for kind in singles:
            if not present[kind]:
                continue
            began = time.perf_counter()
            for k in range(a.changes):
                # A mode where one change takes seconds stops after --change-seconds (5 samples at least).
                if k >= 5 and time.perf_counter() - began > a.change_seconds:
                    break
                singles[kind].append(change(kind, make_change(kind, k)))
        result["single_ms"] = {name: {"median": statistics.median(v) * 1e3, "p90": percentile(v, 0.9) * 1e3,
                                      "calc_median": statistics.median(calc_times[name]) * 1e3, "n": len(v)}
                               for name, v in singles.items() if v}
        dp.stop()
        del dp, graph, updates
        gc.collect()

        # services only, in another fresh netns (the comparison with kube-proxy)
        if a.services:
            svc_res = load_objects([o for s in range(a.services) for o in services(s, a.endpoints)]
                                   + service_namespaces(a.services, 0), "svc")
            netns2 = f"{netns_prefix}b"
            netns_add(netns2)
            created.append(netns2)
            dp2 = make_dataplane(mode, netns2)
            dp2.start()
            t0 = time.perf_counter()
            g2 = CalcGraph(NODE)
            g2.apply_all(svc_res)
            ups2 = g2.flush()
            dp2.apply([*ups2, InSync()])
            t1 = time.perf_counter()
            rep2 = dp2.last_report
            if rep2 is None or rep2.errors:
                raise RuntimeError(f"{mode}: services-only sync failed: {rep2 and rep2.errors[:3]}")
            result["services_only_s"] = t1 - t0
            result["services_only_kernel"] = kernel_objects(mode, netns2)
            dp2.stop()
        result["rss_start_mib"] = rss_start
        result["peak_rss_mib"] = peak_mib()
        return result
    finally:
        for ns in created:
            netns_del(ns)


def worker_baseline(backend: str, a: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    text = kubeproxy_baseline.kube_proxy_rules(a.services, a.endpoints)
    gen = time.perf_counter() - t0
    seconds, lines = kubeproxy_baseline.time_restore(text, backend)
    return {"mode": f"kube-proxy-{backend}", "generate_s": gen, "restore_s": seconds, "lines": lines,
            "kernel": {"rules": sum(1 for ln in text.splitlines() if ln.startswith("-A ")),
                       "chains": sum(1 for ln in text.splitlines() if ln.startswith(":"))},
            "peak_rss_mib": None}


def worker_main(a: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _on_term)
    sampler = ToolSampler()
    try:
        if a.worker.startswith("kube-proxy-"):
            out = worker_baseline(a.worker.removeprefix("kube-proxy-"), a)
        else:
            out = worker_mode(a.worker, a, a.netns_prefix)
    except _Stop:
        return 3
    finally:
        sampler.close()
    out["peak_tool_rss_mib"] = sampler.peak_kib / 1024
    out["peak_tool"] = sampler.peak_tool
    Path(a.result).write_text(json.dumps(out))
    return 0


# ---------------------------------------------------------------- parent

def scaled(a: argparse.Namespace, factor: float) -> dict[str, int]:
    return {"pods": max(1, round(a.pods * factor)) if a.pods else 0,
            "policies": max(1, round(a.policies * factor)) if a.policies else 0,
            "services": max(1, round(a.services * factor)) if a.services else 0}


def run_worker(name: str, a: argparse.Namespace, scale: dict[str, int], budget: float) -> dict | None:
    """Run one worker process; None if it ran out of ``budget`` seconds."""
    prefix = f"lcb{os.getpid() % 100000:x}{secrets.token_hex(2)}"
    with tempfile.TemporaryDirectory(prefix="lcb-") as tmp:
        result = Path(tmp) / "result.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--result", str(result),
                "--netns-prefix", prefix, "--pods", str(scale["pods"]), "--policies", str(scale["policies"]),
                "--services", str(scale["services"]), "--endpoints", str(a.endpoints),
                "--namespaces", str(a.namespaces), "--changes", str(a.changes),
                "--change-seconds", str(a.change_seconds)]
        synced = Path(tmp) / "synced"
        proc = subprocess.Popen(argv + ["--synced", str(synced)], start_new_session=True)
        started = time.monotonic()
        try:
            while (rc := proc.poll()) is None:
                # The budget is for the full sync; the rest (changes, services only) gets twice more.
                limit = budget * 3 if synced.exists() else budget
                if time.monotonic() - started > limit:
                    os.killpg(proc.pid, signal.SIGTERM)       # the worker's own process group
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
                    return None
                time.sleep(0.2)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise
        finally:
            for suffix in "ab":
                netns_del(prefix + suffix)
        if rc != 0 or not result.exists():
            raise RuntimeError(f"worker {name} failed (exit {rc})")
        return json.loads(result.read_text())


def fmt_s(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v * 1e3:.0f} ms" if v < 1 else f"{v:.2f} s"


def fmt_ms(v: float | None) -> str:
    return "-" if v is None else (f"{v:.1f} ms" if v < 100 else f"{v:.0f} ms")


def ratio(v: float | None, base: float | None) -> str:
    return "-" if v is None or not base else f"{v / base:.2f}x"


def print_table(res: dict[str, Any]) -> None:
    modes = list(res["modes"])
    bases = list(res["baselines"])
    cols = modes + bases
    get = lambda name: res["modes"].get(name) or res["baselines"].get(name) or {}  # noqa: E731
    kp = {b: res["baselines"].get(f"kube-proxy-{b}", {}).get("restore_s") for b in ("nft", "legacy")}
    rows: list[tuple[str, list[str]]] = []

    def row(label: str, fn: Callable[[str, dict], str]) -> None:
        rows.append((label, [fn(c, get(c)) for c in cols]))

    def single(kind: str) -> Callable[[str, dict], str]:
        def fn(c: str, r: dict) -> str:
            v = r.get("single_ms", {}).get(kind)
            if not v:
                return "-"
            n = f", n={v['n']}" if v["n"] < res["changes"] else ""
            return f"{fmt_ms(v['median'])} ({fmt_ms(v['p90'])}), calc {fmt_ms(v['calc_median'])}{n}"
        return fn

    def tx(c: str, r: dict) -> str:
        t = r.get("transactions") or {}
        if "nft_transactions" in t:
            return f"{t['nft_transactions']} nft -f" + (f" ({t['nft_failed']} refused/timed out, split)"
                                                        if t["nft_failed"] else "")
        if "restores" in t:
            return f"{t['restores']} restores, {t['ipset_calls']} ipset"
        return "1 iptables-restore" if c in bases else "-"

    row("scale: pods / policies / services x endpoints",
        lambda c, r: (f"{r['scale']['pods']} / {r['scale']['policies']} / " if c in modes else "- / - / ")
        + f"{r['scale']['services']} x {res['endpoints']}")
    row("full sync: calc + dataplane until committed",
        lambda c, r: fmt_s(r.get("full_total_s")) if c in modes else fmt_s(r.get("restore_s")))
    row("  of which calculation (CalcGraph apply + flush)",
        lambda c, r: fmt_s(r.get("full_calc_s")) if c in modes else "-")
    row("  of which dataplane.apply (render + commit)",
        lambda c, r: fmt_s(r.get("full_dataplane_s")) if c in modes else "-")
    row("  updates / reconciler ops", lambda c, r: f"{r['updates']:,} / {r['ops']:,}" if c in modes else "-")
    row("  kernel transactions", tx)
    for b in ("nft", "legacy"):
        if kp[b]:
            row(f"  full sync / kube-proxy restore ({b})",
                lambda c, r, b=b: ratio(r.get("full_total_s") if c in modes else r.get("restore_s"), kp[b]))
    row("services only (the kube-proxy baseline's services)",
        lambda c, r: fmt_s(r.get("services_only_s")) if c in modes else fmt_s(r.get("restore_s")))
    for b in ("nft", "legacy"):
        if kp[b]:
            row(f"  services only / kube-proxy restore ({b})",
                lambda c, r, b=b: ratio(r.get("services_only_s") if c in modes else r.get("restore_s"), kp[b]))
    row("one policy change: median (p90), of which calc", single("policy"))
    row("one pod label change: median (p90), of which calc", single("pod_label"))
    row("one service endpoint change: median (p90), of which calc", single("service_endpoint"))
    if kp["nft"]:
        row("  endpoint change / kube-proxy full restore (nft)",
            lambda c, r: ratio(r["single_ms"]["service_endpoint"]["median"] / 1e3, kp["nft"])
            if "service_endpoint" in r.get("single_ms", {}) else "-")
    row("peak RSS, agent process (whole run)",
        lambda c, r: f"{r['peak_rss_mib']:.0f} MiB" if r.get("peak_rss_mib") else "-")
    row("  RSS before / after full sync (peak during it)",
        lambda c, r: f"{r['rss_start_mib']:.0f} / {r['rss_after_sync_mib']:.0f} ({r['peak_rss_sync_mib']:.0f}) MiB"
        if c in modes else "-")
    row("peak RSS, largest tool run (sampled)",
        lambda c, r: f"{r['peak_tool_rss_mib']:.0f} MiB {r['peak_tool']}" if r.get("peak_tool") else "-")
    row("kernel objects after full sync", lambda c, r: kernel_summary(r["kernel"]))
    row("kernel objects, services only",
        lambda c, r: kernel_summary(r["services_only_kernel"]) if "services_only_kernel" in r
        else (kernel_summary(r["kernel"]) if c in bases else "-"))

    heads = ["metric"] + cols
    print()
    print_md_table(heads, [[label] + vals for label, vals in rows], res["notes"])


def plot_results(res: dict[str, Any], path: Path) -> Path | None:
    m, b = res["modes"], res["baselines"]
    panels = [
        {"title": "full sync until committed (s)", "ylabel": "seconds (log)", "log": True,
         "groups": ["pods + policies + services", "services only"],
         "series": {**{k: [v.get("full_total_s"), v.get("services_only_s")] for k, v in m.items()},
                    **{k: [None, v.get("restore_s")] for k, v in b.items()}}},
        {"title": "single change, calc + apply, median (ms)", "ylabel": "ms",
         "groups": ["policy", "pod label", "service endpoint"],
         "series": {k: [v.get("single_ms", {}).get(x, {}).get("median")
                        for x in ("policy", "pod_label", "service_endpoint")] for k, v in m.items()}},
        {"title": "peak RSS (MiB)", "ylabel": "MiB", "groups": ["agent process", "largest tool run"],
         "series": {k: [v.get("peak_rss_mib"), v.get("peak_tool_rss_mib")]
                    for k, v in list(m.items()) + list(b.items())}},
    ]
    scales = {(v["scale"]["pods"], v["scale"]["policies"], v["scale"]["services"]) for v in m.values()}
    if len(scales) == 1:
        p, q, n = scales.pop()
        title = f"Linux control plane: {p} pods, {q} policies, {n} x {res['endpoints']} services"
    else:
        title = "Linux control plane (modes at different scales, see JSON)"
    return plot.bar_panels(path, title, panels, note="; ".join(res["notes"])[:220])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pods", type=int, default=1000)
    ap.add_argument("--policies", type=int, default=2000)
    ap.add_argument("--services", type=int, default=5000)
    ap.add_argument("--endpoints", type=int, default=3, help="endpoints per service")
    ap.add_argument("--namespaces", type=int, default=50)
    ap.add_argument("--changes", type=int, default=20, help="single changes of each kind to time")
    ap.add_argument("--change-seconds", type=float, default=20,
                    help="stop timing a kind of change after this long (but after 5 samples at least)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, of {', '.join(MODES)} (default: all; iptables = nft backend)")
    ap.add_argument("--baselines", default="nft,legacy", help="kube-proxy iptables-restore backends ('' for none)")
    ap.add_argument("--budget", type=float, default=300,
                    help="seconds a mode's full sync may take before the mode is retried at half the scale")
    ap.add_argument("--out", default=str(plot.OUT_DIR), help="directory for JSON and PNG")
    ap.add_argument("--tag", default="", help="suffix for the output file names")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    ap.add_argument("--netns-prefix", help=argparse.SUPPRESS)
    ap.add_argument("--synced", help=argparse.SUPPRESS)
    ap.add_argument("--count-kernel", nargs=2, metavar=("MODE", "NETNS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.count_kernel:
        print(json.dumps(count_kernel(*a.count_kernel)))
        return 0
    if a.worker:
        return worker_main(a)
    # SIGTERM unwinds like Ctrl-C: every namespace and process this run made is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if os.geteuid() != 0:
        print("linux_control_bench needs root (network namespaces, netfilter)", file=sys.stderr)
        return 2
    modes = [m for m in a.modes.split(",") if m]
    for m in modes:
        if m not in MODES:
            ap.error(f"unknown mode {m!r} (known: {', '.join(MODES)})")
    res: dict[str, Any] = {
        "benchmark": "linux_control", "endpoints": a.endpoints, "namespaces": a.namespaces,
        "changes": a.changes, "requested": scaled(a, 1.0), "budget_s": a.budget,
        "host": {"cpus": os.cpu_count(), "kernel": platform.release(), "loadavg_start": os.getloadavg()},
        "modes": {}, "baselines": {}, "notes": [],
    }
    started = time.perf_counter()
    for mode in modes:
        factor = 1.0
        while True:
            scale = scaled(a, factor)
            print(f"[{time.perf_counter() - started:6.1f}s] {mode}: {scale['pods']} pods, {scale['policies']} "
                  f"policies, {scale['services']}×{a.endpoints} services ...", file=sys.stderr, flush=True)
            out = run_worker(mode, a, scale, a.budget)
            if out is not None:
                break
            res["notes"].append(f"{mode} did not finish (full sync within {a.budget:.0f} s, the rest within "
                                f"{2 * a.budget:.0f} s more) at {scale['pods']} pods / {scale['policies']} "
                                f"policies / {scale['services']} services; retried at half the scale")
            factor /= 2
            if factor < 0.01:
                raise SystemExit(f"{mode}: does not finish even at 1% of the scale")
        out["scale"] = scale
        res["modes"][mode] = out
    for backend in [x for x in a.baselines.split(",") if x]:
        scale = scaled(a, 1.0)
        print(f"[{time.perf_counter() - started:6.1f}s] kube-proxy baseline, iptables-{backend}-restore, "
              f"{scale['services']}×{a.endpoints} ...", file=sys.stderr, flush=True)
        out = run_worker(f"kube-proxy-{backend}", a, scale, a.budget)
        if out is None:
            res["notes"].append(f"kube-proxy {backend} restore did not finish within {a.budget:.0f} s")
            continue
        out["scale"] = scale
        res["baselines"][f"kube-proxy-{backend}"] = out
    res["elapsed_s"] = time.perf_counter() - started
    res["host"]["loadavg_end"] = os.getloadavg()
    res["notes"].append(f"{os.cpu_count()} CPUs shared with other work; load average "
                        f"{res['host']['loadavg_start'][0]:.2f} at start, {res['host']['loadavg_end'][0]:.2f} at end")
    print_table(res)
    stem = "linux_control" + (f"-{a.tag}" if a.tag else "")
    jpath = plot.out_path(stem + ".json", a.out)
    jpath.write_text(json.dumps(res, indent=2))
    print(f"\nwrote {jpath}")
    if not a.no_plot:
        png = plot_results(res, plot.out_path(stem + ".png", a.out))
        if png:
            print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
