#!/usr/bin/env python3
"""Sync layer benchmark (issue 5 §6): change propagation and memory of ``vppagent sync``.

Three parts, each with a baseline measured in the same run:

1. ``real``: a ``Cluster`` of N node netns (default 3), each running ``vppagent run`` on a
   Linux dataplane and following the sync layer. A policy change, a Pod (with its IP) written
   to the datastore, and a Pod written then CNI-ADDed are timed from the datastore write until
   *every* node's kernel has them (``nft monitor`` in each node netns: the kernel's own commit
   notification; for iptables' ipsets a netlink poller). Needs root.
2. ``fanout``: the sync layer on a file datastore with 50 nodes x 20 pods and 200 policies,
   and 50 simulated agents (gRPC Sync streams that decode and fold every message, spread over
   a few processes). The same changes are timed to receipt on all streams, against the same
   run with 1 subscriber; plus a burst of policies for throughput and the overflow counters.
3. ``memory``: RSS of the sync layer after loading 10,000 pods / 2,000 policies with 0 and 50
   subscribers, against the calculation alone (``CalcGraph(None)`` on the same objects).

    sudo .venv/bin/python perf/sync_bench.py [--parts real,fanout,memory] [--quick]

Tables are printed in markdown; every number goes to perf/out/sync_bench[-TAG].json and the
latency CDFs to perf/out/sync_bench[-TAG].png.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import multiprocessing as mp
import os
import platform
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

PERF = Path(__file__).resolve().parent
REPO = PERF.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(PERF))

import yaml  # noqa: E402

from calc_bench import APPS, namespaces as calc_namespaces, policy as calc_policy  # noqa: E402

PORT_BASE = 20000          # ports of the timed policy change: a marker no other rule uses
BURST_PORT = 40000         # ports of the burst policies
CLIENT_NET = "10.71"       # addresses of the Pods the "pod add" change writes (outside any block)
POOL = "10.70.0.0/16"      # pool and pod addresses of the generated clusters
_Dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


# ---------------------------------------------------------------- small helpers

def now() -> float:
    """CLOCK_MONOTONIC: one clock for this process, its children and the simulated agents."""
    return time.monotonic()


def pct(xs: Sequence[float], q: float) -> float:
    """Percentile with linear interpolation (numpy's default), NaN when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = (len(s) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summary(xs: Sequence[float]) -> dict[str, float]:
    """Seconds in, milliseconds out."""
    vals = [x * 1e3 for x in xs]
    return {"n": len(vals), "p50": pct(vals, 50), "p90": pct(vals, 90), "p99": pct(vals, 99),
            "max": max(vals) if vals else float("nan"), "mean": sum(vals) / len(vals) if vals else float("nan")}


def ms(v: float | None) -> str:
    if v is None or v != v:
        return "-"
    return f"{v:,.0f} ms" if v >= 100 else f"{v:.1f} ms"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def proc_status(pid: int, key: str) -> float:
    """A ``/proc/PID/status`` kB field (VmRSS, VmHWM) in MiB; 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def proc_cpu(pid: int) -> float:
    """User+system CPU seconds of a process (threads included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def write_docs(directory: Path, name: str, docs: list[dict]) -> None:
    """Atomically, as the file datastore expects (it polls the directory)."""
    path = directory / f"{name}.yaml"
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False))
    os.replace(tmp, path)


def latency_sum(metrics: str) -> tuple[float, float]:
    """(sum, count) of ``vppagent_sync_latency_seconds`` from Prometheus text."""
    out = {"sum": 0.0, "count": 0.0}
    for line in metrics.splitlines():
        for k in out:
            if line.startswith(f"vppagent_sync_latency_seconds_{k} "):
                out[k] = float(line.split()[-1])
    return out["sum"], out["count"]


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM if this benchmark dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)    # PR_SET_PDEATHSIG


# ---------------------------------------------------------------- workload

def bench_policy(port: int, namespace: str | None = None) -> dict:
    """The timed policy: selects one pod on every node, its source set holds the client pods."""
    spec = {"order": 1, "selector": "role == 'bench'",
            "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"selector": "role == 'client'"},
                         "destination": {"ports": [port]}}]}
    if namespace:
        return {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
                "metadata": {"name": "bench", "namespace": namespace}, "spec": spec}
    return {"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "bench"}, "spec": spec}


def client_pod(k: int, namespace: str, node: str, ip: str | None) -> dict:
    doc: dict[str, Any] = {"apiVersion": "v1", "kind": "Pod",
                           "metadata": {"name": f"client{k}", "namespace": namespace, "labels": {"role": "client"}},
                           "spec": {"nodeName": node, "containers": [{"name": "c"}]}}
    if ip:
        doc["status"] = {"podIPs": [{"ip": ip}]}
    return doc


def client_ip(k: int) -> str:
    return f"{CLIENT_NET}.{k // 250}.{k % 250 + 1}"


def burst_policies(n: int) -> list[dict]:
    return [{"apiVersion": "projectcalico.org/v3", "kind": "GlobalNetworkPolicy",
             "metadata": {"name": f"burst{i}"},
             "spec": {"order": 100 + i, "selector": "role == 'bench'",
                      "ingress": [{"action": "Allow", "protocol": "TCP", "source": {"nets": ["192.0.2.0/24"]},
                                   "destination": {"ports": [BURST_PORT + i]}}]}} for i in range(n)]


@dataclass(frozen=True)
class Workload:
    nodes: int
    pods_per_node: int
    policies: int
    namespaces: int
    services: int = 0

    @property
    def node_names(self) -> list[str]:
        return [f"node{n + 1}" for n in range(self.nodes)]

    def pod(self, n: int, j: int) -> dict:
        """Pod j of node n: calc_bench's label scheme; pod 0 of every node is the bench target."""
        g = n * self.pods_per_node + j
        labels = {"app": APPS[g % len(APPS)], "version": f"v{g % 3}"}
        if j == 0:
            labels["role"] = "bench"
        ip = f"10.70.{g // 256}.{g % 256}"
        return {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"pod{g}", "namespace": f"ns{g % self.namespaces}", "labels": labels},
                "spec": {"nodeName": f"node{n + 1}", "containers": [{"name": "c", "ports": [
                    {"name": "http", "containerPort": 8000 + g % 5}]}]},
                "status": {"podIPs": [{"ip": ip}]}}

    def write(self, directory: Path) -> dict[str, int]:
        """The cluster as a file datastore: few files, because the source stats them all every poll."""
        directory.mkdir(parents=True, exist_ok=True)
        base: list[dict] = [{"apiVersion": "projectcalico.org/v3", "kind": "IPPool", "metadata": {"name": "pods"},
                             "spec": {"cidr": POOL, "blockSize": 26}}]
        base += [{"apiVersion": "v1", "kind": "Node", "metadata": {"name": name},
                  "status": {"addresses": [{"type": "InternalIP", "address": f"192.168.{n // 250}.{n % 250 + 1}"}]}}
                 for n, name in enumerate(self.node_names)]
        base += calc_namespaces(self.namespaces)
        write_docs(directory, "00-base", base)
        for n in range(self.nodes):
            write_docs(directory, f"01-pods-node{n + 1:03d}", [self.pod(n, j) for j in range(self.pods_per_node)])
        for start in range(0, self.policies, 250):
            write_docs(directory, f"02-policies-{start:05d}",
                       [calc_policy(i, self.namespaces) for i in range(start, min(start + 250, self.policies))])
        for start in range(0, self.services, 250):
            docs: list[dict] = []
            for s in range(start, min(start + 250, self.services)):
                backends = [self.pod((s + e) % self.nodes, (s * 3 + e) % self.pods_per_node) for e in range(3)]
                ns = f"ns{s % self.namespaces}"
                docs.append({"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"svc{s}", "namespace": ns},
                             "spec": {"clusterIP": f"10.96.{s // 250}.{s % 250 + 1}",
                                      "ports": [{"name": "http", "port": 80, "protocol": "TCP",
                                                 "targetPort": 8080}]}})
                docs.append({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                             "metadata": {"name": f"svc{s}-1", "namespace": ns,
                                          "labels": {"kubernetes.io/service-name": f"svc{s}"}},
                             "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
                             "endpoints": [{"addresses": [b["status"]["podIPs"][0]["ip"]],
                                            "nodeName": b["spec"]["nodeName"], "conditions": {"ready": True}}
                                           for b in backends]})
            write_docs(directory, f"03-services-{start:05d}", docs)
        write_docs(directory, "10-bench-policy", [bench_policy(PORT_BASE)])
        return {"pods": self.nodes * self.pods_per_node, "policies": self.policies + 1,
                "namespaces": self.namespaces, "services": self.services, "nodes": self.nodes,
                "bytes": sum(f.stat().st_size for f in directory.glob("*.yaml"))}


# ---------------------------------------------------------------- the sync layer as a process

class SyncProcess:
    """``vppagent sync`` on a file datastore, exactly as deployed (its own process, unix socket)."""

    def __init__(self, datastore: Path, workdir: Path, poll: float) -> None:
        self.datastore, self.workdir, self.poll = datastore, workdir, poll
        self.socket = str(workdir / "sync.sock")
        self.log = workdir / "sync.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.started = 0.0

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "vppagent", "sync", "--datastore", "file", "--path", str(self.datastore),
               "--poll-interval", str(self.poll), "--socket", self.socket, "--health-port", "0",
               "--state-dir", str(self.workdir / "state"), "--log-level", "info"]
        with open(self.log, "ab") as log:
            self.started = now()
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent,
                                         env=dict(os.environ, PYTHONUNBUFFERED="1"))

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _http(self, path: str, timeout: float = 10.0) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def wait_ready(self, timeout: float, endpoints: int = 0) -> tuple[float, float]:
        """Seconds from the process start until ``/readiness`` says ready, and until the state is
        published (its counts hold ``endpoints``): the sync layer turns ready when it has *read*
        the datastore, before the calculation of what it read is done (see the README)."""
        deadline = now() + timeout
        ready_s = None
        while now() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sync layer exited with {self.proc.returncode}:\n{self.log_text()[-3000:]}")
            if not self.port:
                m = re.search(r"health :(\d+)", self.log_text())
                self.port = int(m.group(1)) if m else 0
            if self.port:
                with contextlib.suppress(OSError, ValueError):
                    if ready_s is None and self._http("/readiness", 2.0)[0] == 200:
                        ready_s = now() - self.started
                    if ready_s is not None and \
                            int(self.status().get("counts", {}).get("workload_endpoints", 0)) >= endpoints:
                        return ready_s, now() - self.started
            time.sleep(0.05)
        raise TimeoutError(f"the sync layer was not loaded within {timeout:g} s:\n{self.log_text()[-3000:]}")

    def status(self) -> dict:
        return json.loads(self._http("/status")[1])

    def latency(self) -> tuple[float, float]:
        """(sum, count) of its calc+publish histogram."""
        return latency_sum(self._http("/metrics")[1].decode())

    def rss(self) -> float:
        return proc_status(self.pid, "VmRSS")

    def hwm(self) -> float:
        return proc_status(self.pid, "VmHWM")

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


def subscriber_overflows(status: dict) -> tuple[int, int]:
    """(overflows, subscribers) summed over the sync layer's per-node hubs."""
    subs = [s for n in status.get("nodes", {}).values() for s in n.get("subscribers", [])]
    return sum(int(s.get("overflows", 0)) for s in subs), len(subs)


# ---------------------------------------------------------------- Sync stream followers

def update_markers(update: Any) -> list[str]:
    """What the benchmark waits for: ports >= PORT_BASE in policies, addresses added to IP sets."""
    from vppagent.model.updates import IPSetDeltaUpdate, IPSetUpdate, PolicyUpdate

    if isinstance(update, PolicyUpdate):
        rules = (*update.policy.inbound_rules, *update.policy.outbound_rules)
        return [f"port:{p.first}" for r in rules for p in r.dst_ports if p.first == p.last and p.first >= PORT_BASE]
    if isinstance(update, IPSetDeltaUpdate):
        members: Iterable[str] = update.added
    elif isinstance(update, IPSetUpdate):
        members = update.members
    else:
        return []
    return [f"ip:{m.split('/')[0]}" for m in members]


class StreamFollower:
    """One simulated agent: follows a node's Sync stream, decoding and folding every message as
    the real sync client does, and reports (node, time, markers) for live updates."""

    def __init__(self, socket: str, node: str, sink: Callable[[tuple], None], burst: int = 0) -> None:
        self.socket, self.node, self.sink, self.burst = socket, node, sink, burst
        self.call: Any = None
        self.stats = {"messages": 0, "bytes": 0, "live_messages": 0, "resyncs_after_in_sync": 0,
                      "error": ""}
        self._cancelled = False

    def run(self) -> None:
        import grpc

        from vppagent.agent.sync_client import open_channel
        from vppagent.api import gen_modules
        from vppagent.api.convert import update_from_proto
        from vppagent.model.state import DataplaneState
        from vppagent.model.updates import InSync

        g = gen_modules()
        channel = open_channel(f"unix://{self.socket}")
        state, in_sync, burst_n, burst_first = DataplaneState(), False, 0, 0.0
        try:
            stub = g.dataplane_pb2_grpc.DataplaneStub(channel)
            self.call = stub.Sync(g.dataplane_pb2.SyncRequest(node_name=self.node, client_name=f"bench@{self.node}"),
                                  wait_for_ready=True)
            if self._cancelled:
                self.call.cancel()
            for msg in self.call:
                t = now()
                update = update_from_proto(msg.update, "update")
                self.stats["messages"] += 1
                self.stats["bytes"] += msg.ByteSize()
                if msg.resync:
                    if in_sync:
                        self.stats["resyncs_after_in_sync"] += 1
                        self.sink(("resync", self.node, t))
                    state = DataplaneState()
                state.apply(update)
                if not in_sync:
                    if isinstance(update, InSync):
                        in_sync = True
                        self.sink(("ready", self.node, t, self.stats["messages"], self.stats["bytes"]))
                    continue
                self.stats["live_messages"] += 1
                marks = update_markers(update)
                if not marks:
                    continue
                burst = [m for m in marks if m.startswith("port:") and int(m[5:]) >= BURST_PORT]
                if burst and self.burst:
                    burst_first = burst_first or t
                    burst_n += 1
                    if burst_n == self.burst:
                        self.sink(("burst", self.node, burst_first, t, burst_n))
                    marks = [m for m in marks if m not in burst]
                if marks:
                    self.sink(("mark", self.node, t, tuple(marks)))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.stats["error"] = f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # noqa: BLE001 - reported in the results, never hidden
            self.stats["error"] = repr(exc)
        finally:
            channel.close()

    def cancel(self) -> None:
        self._cancelled = True
        if self.call is not None:
            self.call.cancel()


class Collector:
    """Gathers follower events (same process or from worker processes) behind one condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.ready: dict[str, tuple[float, int, int]] = {}
        self.marks: dict[str, dict[str, float]] = {}
        self.bursts: dict[str, tuple[float, float, int]] = {}
        self.stats: dict[str, dict] = {}
        self.resyncs: list[tuple[str, float]] = []

    def put(self, ev: tuple) -> None:
        with self.cond:
            kind, node = ev[0], ev[1]
            if kind == "ready":
                self.ready[node] = (ev[2], ev[3], ev[4])
            elif kind == "mark":
                for m in ev[3]:
                    self.marks.setdefault(m, {}).setdefault(node, ev[2])
            elif kind == "burst":
                self.bursts[node] = (ev[2], ev[3], ev[4])
            elif kind == "stats":
                self.stats[node] = ev[2]
            elif kind == "resync":
                self.resyncs.append((node, ev[2]))
            self.cond.notify_all()

    def wait(self, cond: Callable[[], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(cond, timeout)

    def marker(self, marker: str, nodes: Sequence[str], timeout: float) -> dict[str, float]:
        """Receipt time per node of ``marker`` (nodes that never got it are missing)."""
        self.wait(lambda: len(self.marks.get(marker, {})) >= len(nodes), timeout)
        with self.cond:
            return {n: t for n, t in self.marks.get(marker, {}).items() if n in nodes}


def _sim_worker(cmds: Any, events: Any) -> None:
    """A process of simulated agents (one thread per node stream), reused across runs: spawning
    one costs seconds of imports. Commands: ("follow", session, socket, nodes, burst), ("stop",),
    ("exit",). Every event is tagged with its session so late ones from a past run are dropped."""
    parent = os.getppid()
    followers: list[StreamFollower] = []
    threads: list[threading.Thread] = []
    session = 0

    def stop() -> None:
        for f in followers:
            f.cancel()
        for t in threads:
            t.join(5)
        for f in followers:
            events.put((session, ("stats", f.node, dict(f.stats))))
        events.put((session, ("stopped", str(os.getpid()))))
        followers.clear()
        threads.clear()

    while True:
        try:
            cmd = cmds.get(timeout=0.5)
        except queue.Empty:
            if os.getppid() != parent:      # the benchmark died: do not linger
                os._exit(1)
            continue
        if cmd[0] == "follow":
            _, session, socket, nodes, burst = cmd
            sink = (lambda s: lambda ev: events.put((s, ev)))(session)
            followers[:] = [StreamFollower(socket, n, sink, burst) for n in nodes]
            threads[:] = [threading.Thread(target=f.run, daemon=True) for f in followers]
            for t in threads:
                t.start()
        elif cmd[0] == "stop":
            stop()
        else:
            if followers:
                stop()
            return


class SimPool:
    """Processes that run simulated agents (one Python process could not decode 50 streams in
    parallel). Receipt times use CLOCK_MONOTONIC, which all processes share."""

    def __init__(self, procs: int) -> None:
        ctx = mp.get_context("spawn")       # never fork a process that holds gRPC state
        self.events = ctx.Queue()
        self.cmds = [ctx.Queue() for _ in range(max(1, procs))]
        self.procs = [ctx.Process(target=_sim_worker, args=(c, self.events), daemon=True) for c in self.cmds]
        for p in self.procs:
            p.start()
        self.session = 0
        self.active = 0
        self.collector = Collector()
        self.stopped: set[str] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._done.is_set():
            try:
                session, ev = self.events.get(timeout=0.2)
            except queue.Empty:
                continue
            except (EOFError, OSError):
                return
            if session != self.session:
                continue
            if ev[0] == "stopped":
                with self.collector.cond:
                    self.stopped.add(ev[1])
                    self.collector.cond.notify_all()
            else:
                self.collector.put(ev)

    def follow(self, socket: str, nodes: Sequence[str], procs: int, burst: int = 0) -> Collector:
        """Open one stream per node over ``procs`` of the processes; returns the run's collector."""
        self.session += 1
        self.collector, self.stopped = Collector(), set()
        self.started, self.nodes = now(), list(nodes)
        procs = max(1, min(procs, len(self.cmds), len(self.nodes)))
        for i in range(procs):
            self.cmds[i].put(("follow", self.session, socket, self.nodes[i::procs], burst))
        self.active = procs
        return self.collector

    def wait_ready(self, timeout: float) -> float:
        """Time at which the last stream had its snapshot and InSync."""
        c = self.collector
        if not c.wait(lambda: len(c.ready) == len(self.nodes), timeout):
            raise TimeoutError(f"{len(c.ready)}/{len(self.nodes)} simulated agents in sync after {timeout:g} s")
        return max(t for t, _, _ in c.ready.values())

    def cpu(self) -> float:
        """CPU seconds the simulated agents have used (all their processes)."""
        return sum(proc_cpu(p.pid) for p in self.procs if p.pid)

    def stop(self) -> dict[str, dict]:
        """Close this run's streams; their per-stream stats."""
        c = self.collector
        for i in range(self.active):
            self.cmds[i].put(("stop",))
        c.wait(lambda: len(self.stopped) >= self.active, 20)
        self.active = 0
        return dict(c.stats)

    def close(self) -> None:
        for q in self.cmds:
            with contextlib.suppress(Exception):
                q.put(("exit",))
        for p in self.procs:
            p.join(5)
            if p.is_alive():
                p.terminate()
                p.join(2)
        self._done.set()
        self._thread.join(2)


# ---------------------------------------------------------------- part 1: real agents

IPV4 = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")


class KernelWatch:
    """When a node's kernel has something. ``nft monitor`` in the node netns timestamps every
    commit (its "new generation" lines) and shows policy rules as they are committed. Set
    elements are not taken from its text: after a rule that references an interval set is
    replaced, nft monitor no longer decodes that set's element events ("Received event for an
    unknown set", nftables 1.0.x). So while a pod change is timed, the client set is read on
    every commit (nftables; an element's time is that commit's) or every 3 ms over netlink
    (iptables' ipsets, which nft does not see)."""

    def __init__(self, netns: str, mode: str, poll: float = 0.003) -> None:
        from vppagent.dataplane.linux.netlink_ns import open_netns, spawn_in_netns

        self.netns, self.mode, self.poll = netns, mode, poll
        self.lines: list[tuple[float, str]] = []
        self.gens: list[float] = []
        self.cond = threading.Condition()
        self.sets: list[str] = []
        self.seen: dict[str, float] = {}
        self.ambiguous = 0                  # commits that landed while a set was being read
        self._last_gen = 0
        self._armed = threading.Event()
        self._closed = threading.Event()
        self.proc = subprocess.Popen(["ip", "netns", "exec", netns, "nft", "monitor"], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, bufsize=1, preexec_fn=_die_with_parent)
        threading.Thread(target=self._read, daemon=True).start()
        fd = open_netns(netns)
        try:
            spawn_in_netns(fd, self._check_members, "bench-set-reader")
        finally:
            os.close(fd)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            t = now()
            with self.cond:
                self.lines.append((t, line.rstrip()))
                if line.startswith("# new generation"):
                    self.gens.append(t)
                self.cond.notify_all()

    def _members(self, ipset: Any) -> set[str]:
        """Current members of the watched sets (runs in the node netns)."""
        out: set[str] = set()
        for name in self.sets:
            if self.mode == "nftables":
                text = subprocess.run(["nft", "list", "set", "inet", "vppagent", name], capture_output=True,
                                      text=True).stdout
                out |= set(IPV4.findall(text.partition("elements")[2]))
                continue
            with contextlib.suppress(Exception):
                for msg in ipset.list(name):
                    adt = msg.get_attr("IPSET_ATTR_ADT")
                    for data in (adt.get_attrs("IPSET_ATTR_DATA") if adt is not None else []):
                        out.add(data.get_attr("IPSET_ATTR_IP_FROM").get_attr("IPSET_ATTR_IPADDR_IPV4"))
        return out

    def _check_members(self) -> None:
        ipset = None
        if self.mode == "iptables":
            from pyroute2 import IPSet
            ipset = IPSet()
        try:
            while not self._closed.is_set():
                if not self._armed.wait(0.2) or not self.sets:
                    continue
                if self.mode == "nftables":
                    with self.cond:
                        self.cond.wait_for(lambda: len(self.gens) > self._last_gen or self._closed.is_set()
                                           or not self._armed.is_set(), 0.2)
                        if len(self.gens) <= self._last_gen:
                            continue
                        self._last_gen = len(self.gens)
                        t = self.gens[-1]
                else:
                    t = now()
                members = self._members(ipset)
                with self.cond:
                    new = members - self.seen.keys()
                    if new and self.mode == "nftables" and len(self.gens) > self._last_gen:
                        self.ambiguous += 1
                    for m in new:
                        self.seen[m] = t
                    self.cond.notify_all()
                if self.mode == "iptables":
                    time.sleep(self.poll)
        finally:
            if ipset is not None:
                ipset.close()

    def arm(self, on: bool) -> None:
        with self.cond:
            self._last_gen = len(self.gens)
        (self._armed.set if on else self._armed.clear)()

    def find_sets(self, ip: str) -> bool:
        """Watch the sets that hold ``ip`` (a client already everywhere); their members are known."""
        if self.mode == "nftables":
            text = subprocess.run(["ip", "netns", "exec", self.netns, "nft", "list", "table", "inet", "vppagent"],
                                  capture_output=True, text=True).stdout
            found = {m.group(1): set(IPV4.findall(m.group(2)))
                     for m in re.finditer(r"set (s-\S+-4) \{[^}]*?elements = \{([^}]*)\}", text)}
        else:
            text = subprocess.run(["ip", "netns", "exec", self.netns, "ipset", "save"], capture_output=True,
                                  text=True).stdout
            found = {}
            for ln in text.splitlines():
                if ln.startswith("add "):
                    found.setdefault(ln.split()[1], set()).add(ln.split()[2].split("/")[0])
        sets = {name: members for name, members in found.items() if ip in members}
        with self.cond:
            self.sets = sorted(sets)
            self.seen = {m: 0.0 for members in sets.values() for m in members}
        return bool(sets)

    def wait_rule(self, port: int, since: float, timeout: float) -> float | None:
        """Commit time of the (IPv4) rule carrying ``port``."""
        prefix = "add rule inet vppagent " if self.mode == "nftables" else "add rule ip filter "
        deadline = now() + timeout
        i = 0
        with self.cond:
            while True:
                for t, line in self.lines[i:]:
                    if t >= since and line.startswith(prefix) and f"dport {port} " in line:
                        return t
                i = len(self.lines)
                left = deadline - now()
                if left <= 0:
                    return None
                self.cond.wait(left)

    def wait_member(self, ip: str, timeout: float) -> float | None:
        """Time ``ip`` joined the client set on this node."""
        with self.cond:
            self.cond.wait_for(lambda: ip in self.seen, timeout)
            return self.seen.get(ip)

    def close(self) -> None:
        self._closed.set()
        self._armed.set()
        with contextlib.suppress(Exception):
            self.proc.kill()
            self.proc.wait(5)


def run_real(mode: str, args: argparse.Namespace) -> dict:
    """Three (``--nodes``) real agents on ``mode``; every change timed to every node's kernel."""
    from vppagent.testbed import api
    from vppagent.testbed.cluster import Cluster

    kinds = ["policy", "pod", "pod-cni"] if args.cni else ["policy", "pod"]
    samples: dict[str, list[dict]] = {k: [] for k in kinds}
    lost: dict[str, int] = {k: 0 for k in kinds}
    with contextlib.ExitStack() as stack:
        t_setup = now()
        cluster = Cluster(nodes=args.nodes, dataplane=mode, poll_interval=args.poll_interval, log_level="info")
        stack.callback(cluster.close)
        nodes = cluster.nodes
        cluster.write("09-ns-bench", [{"apiVersion": "v1", "kind": "Namespace",
                                       "metadata": {"name": "bench", "labels": {"team": "bench"}}}])
        watches = [KernelWatch(n.netns, mode) for n in nodes]
        for w in watches:
            stack.callback(w.close)
        for i, node in enumerate(nodes):
            node.add_pod("bench", f"web{i}", labels={"app": "web", "role": "bench"})
        m = re.search(r"health :(\d+)", cluster.sync_log())
        sync_port = int(m.group(1)) if m else 0
        observer = Collector()
        follower = StreamFollower(cluster.socket, nodes[0].name, observer.put)
        threading.Thread(target=follower.run, daemon=True).start()
        stack.callback(follower.cancel)
        if not observer.wait(lambda: bool(observer.ready), 30):
            raise TimeoutError("the observer stream never got in sync")

        def scrape() -> tuple[tuple[float, float], list[tuple[float, float]]]:
            sync = (0.0, 0.0)
            if sync_port:
                with urllib.request.urlopen(f"http://127.0.0.1:{sync_port}/metrics", timeout=5) as r:
                    sync = latency_sum(r.read().decode())
            return sync, [latency_sum(api.metrics(n.netns, n.health_port)) for n in nodes]

        seq = iter(range(1, 10**6))
        timeout = 20.0

        def change(kind: str, record: bool) -> None:
            k = next(seq)
            node = nodes[k % len(nodes)]
            (s0, a0) = scrape()
            for w in watches:
                w.arm(kind != "policy")
            t0 = now()
            t_cni = None
            if kind == "policy":
                port = PORT_BASE + k
                cluster.write("20-bench-policy", [bench_policy(port, "bench")])
                marker = f"port:{port}"
                found = [w.wait_rule(port, t0, timeout) for w in watches]
            else:
                if kind == "pod":
                    ip = client_ip(k)
                    cluster.write(f"30-client{k}", [client_pod(k, "bench", node.name, ip)])
                else:
                    pod = node.add_pod("bench", f"client{k}", labels={"role": "client"})
                    ip, t_cni = pod.ip, now()
                marker = f"ip:{ip}"
                found = [w.wait_member(ip, timeout) for w in watches]
            for w in watches:
                w.arm(False)
            obs = observer.marker(marker, [nodes[0].name], 5.0).get(nodes[0].name)
            (s1, a1) = scrape()
            deadline = now() + 3         # an agent records its apply after the last transaction
            while now() < deadline and not all(b[1] > a[1] for a, b in zip(a0, a1)):
                time.sleep(0.02)
                (s1, a1) = scrape()
            if not record:
                return
            if any(t is None for t in found):
                lost[kind] += 1
                return
            samples[kind].append({
                "every_node_s": max(found) - t0, "per_node_s": [t - t0 for t in found],
                "observer_s": None if obs is None else obs - t0,
                "node0_stream_to_kernel_s": None if obs is None else found[0] - obs,
                "sync_calc_s": s1[0] - s0[0], "sync_calc_n": s1[1] - s0[1],
                "agent_apply_max_s": max(b[0] - a[0] for a, b in zip(a0, a1)),
                "cni_add_s": None if t_cni is None else t_cni - t0,
            })

        # The client set exists once the policy names it; a first client shows which one it is.
        cluster.write("20-bench-policy", [bench_policy(PORT_BASE, "bench")])
        ip0 = client_ip(0)
        cluster.write("30-client0", [client_pod(0, "bench", nodes[0].name, ip0)])
        deadline = now() + 30
        while not all([w.find_sets(ip0) for w in watches]):
            if now() > deadline:
                raise TimeoutError("the client set did not appear on every node")
            time.sleep(0.1)
        for kind in kinds:                          # warm-up: first use of every code path
            change(kind, False)
        setup_s = now() - t_setup
        files_start = len(list(cluster.manifests.glob("*.yaml")))
        for _ in range(args.changes):
            for kind in kinds:
                change(kind, True)
        files_end = len(list(cluster.manifests.glob("*.yaml")))
        sync_rss = proc_status(cluster.sync.process.pid, "VmRSS") if cluster.sync.process else 0.0
        agent_rss = [proc_status(n.agent.pid, "VmRSS") for n in nodes if n.agent is not None]
    return {"mode": mode, "nodes": args.nodes, "poll_interval_s": args.poll_interval, "setup_s": setup_s,
            "samples": samples, "lost": lost, "sync_rss_mib": sync_rss, "agent_rss_mib": agent_rss,
            "summary": {k: summary([s["every_node_s"] for s in v]) for k, v in samples.items()},
            "observer_stream": follower.stats, "ambiguous_set_reads": sum(w.ambiguous for w in watches),
            "datastore_files": [files_start, files_end]}


# ---------------------------------------------------------------- part 2: fan-out

def run_fanout_phase(subs: int, wl: Workload, root: Path, pool: SimPool, args: argparse.Namespace) -> dict:
    """One sync layer, ``subs`` simulated agents, the timed changes and (for >1) the burst."""
    ds = root / f"ds-{subs}"
    info = wl.write(ds)
    sync = SyncProcess(ds, root / f"sync-{subs}", args.poll_interval)
    nodes = wl.node_names[:subs]
    burst = args.burst if subs > 1 else 0
    out: dict[str, Any] = {"subscribers": subs, "datastore": info}
    following = False
    try:
        sync.start()
        col = pool.follow(sync.socket, nodes, args.sim_procs, burst)   # the streams wait for the server
        following = True
        out["ready_s"], out["load_s"] = sync.wait_ready(300, info["pods"])
        ready_at = sync.started + out["load_s"]
        out["snapshot_s"] = max(0.0, pool.wait_ready(120) - ready_at)
        out["snapshot_messages"] = sum(r[1] for r in col.ready.values())
        out["snapshot_bytes"] = sum(r[2] for r in col.ready.values())
        out["rss_mib"] = sync.rss()
        kinds: dict[str, list[dict]] = {"policy": [], "pod": []}
        lost = {"policy": 0, "pod": 0}
        cpu0 = sync.cpu()
        for k in range(-1, args.fanout_changes):     # k == -1: warm-up
            for kind in kinds:
                s0 = sync.latency()
                t0 = now()
                if kind == "policy":
                    port = PORT_BASE + k + 2
                    marker = f"port:{port}"
                    write_docs(ds, "10-bench-policy", [bench_policy(port)])
                else:
                    idx = k + 2
                    marker = f"ip:{client_ip(idx)}"
                    node = wl.node_names[idx % wl.nodes]       # the same placement in both phases
                    write_docs(ds, f"20-client{idx:04d}", [client_pod(idx, "ns0", node, client_ip(idx))])
                got = col.marker(marker, nodes, 60)
                s1 = sync.latency()
                if k < 0:
                    continue
                if len(got) < len(nodes):
                    lost[kind] += 1
                    continue
                times = sorted(got.values())
                kinds[kind].append({"max_s": times[-1] - t0, "first_s": times[0] - t0,
                                    "pairs_s": [t - t0 for t in times], "spread_s": times[-1] - times[0],
                                    "sync_calc_s": s1[0] - s0[0]})
                time.sleep(0.05)
        out["changes_cpu_s"] = sync.cpu() - cpu0
        if burst:
            cpu0, ccpu0 = sync.cpu(), pool.cpu()
            t0 = now()
            write_docs(ds, "30-burst", burst_policies(burst))
            ok = col.wait(lambda: len(col.bursts) == len(nodes), 120)
            cpu1, ccpu1 = sync.cpu(), pool.cpu()
            b = dict(col.bursts)
            if b:
                first = min(v[0] for v in b.values())
                last = max(v[1] for v in b.values())
                msgs = sum(v[2] for v in b.values())
                out["burst"] = {"policies": burst, "streams_done": len(b), "complete": ok, "messages": msgs,
                                "write_to_last_s": last - t0, "first_to_last_s": last - first,
                                "write_to_first_s": first - t0, "msgs_per_s": msgs / max(last - first, 1e-9),
                                "sync_cpu_s": cpu1 - cpu0, "clients_cpu_s": ccpu1 - ccpu0}
        out["overflows"], out["server_subscribers"] = subscriber_overflows(sync.status())
        out["rss_after_mib"], out["hwm_mib"] = sync.rss(), sync.hwm()
        out["samples"], out["lost"] = kinds, lost
    finally:
        if following:
            stats = pool.stop()
            out["client_resyncs"] = sum(s.get("resyncs_after_in_sync", 0) for s in stats.values())
            out["client_errors"] = sorted({s["error"] for s in stats.values() if s.get("error")})
            out["client_messages"] = sum(s.get("messages", 0) for s in stats.values())
        sync.stop()
    out["summary"] = {k: {"per_change_max": summary([s["max_s"] for s in v]),
                          "pairs": summary([p for s in v for p in s["pairs_s"]]),
                          "spread": summary([s["spread_s"] for s in v]),
                          "sync_calc": summary([s["sync_calc_s"] for s in v])} for k, v in kinds.items()}
    return out


def run_fanout(args: argparse.Namespace, root: Path, pool: SimPool) -> dict:
    from vppagent.manifests.loader import load_path

    wl = Workload(args.sim_nodes, args.sim_pods, args.sim_policies, args.sim_namespaces)
    baseline = run_fanout_phase(1, wl, root, pool, args)
    full = run_fanout_phase(args.sim_nodes, wl, root, pool, args)
    t0 = now()
    load_path(root / f"ds-{args.sim_nodes}")
    parse_s = now() - t0
    return {"workload": vars(wl) | {"sim_procs": args.sim_procs}, "poll_interval_s": args.poll_interval,
            "one": baseline, "many": full, "datastore_parse_s": parse_s}


# ---------------------------------------------------------------- part 3: memory

def calc_baseline(directory: str) -> None:
    """Hidden mode (a fresh process, so RSS is its own): the calculation alone on the same files."""
    import gc
    import resource

    from vppagent.calc.graph import CalcGraph
    from vppagent.manifests.loader import load_path

    def rss() -> float:
        return proc_status(os.getpid(), "VmRSS")
    out: dict[str, float] = {"rss_start_mib": rss()}
    t0 = now()
    resources = load_path(directory).resources
    out["parse_s"] = now() - t0
    gc.collect()
    out["rss_parsed_mib"] = rss()
    graph = CalcGraph(None)
    t0 = now()
    graph.apply_all(resources)
    updates = graph.flush()
    out["calc_s"] = now() - t0
    gc.collect()
    out["rss_calc_mib"] = rss()
    out["peak_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["updates"] = len(updates)
    out["resources"] = len(resources)
    print(json.dumps(out))


def run_memory(args: argparse.Namespace, root: Path, pool: SimPool) -> dict:
    wl = Workload(args.mem_nodes, max(1, args.mem_pods // args.mem_nodes), args.mem_policies,
                  args.mem_namespaces, args.mem_services)
    ds = root / "ds-mem"
    empty = root / "ds-empty"
    empty.mkdir()
    floor = SyncProcess(empty, root / "sync-empty", args.poll_interval)
    out: dict[str, Any] = {"workload": vars(wl), "poll_interval_s": args.poll_interval}
    try:
        floor.start()                       # its RSS, not its timing, matters: overlap the write
        t0 = now()
        out["datastore"] = wl.write(ds)
        out["write_s"] = now() - t0
        out["empty_load_s"] = floor.wait_ready(60)[1]
        time.sleep(0.3)
        out["empty_rss_mib"] = floor.rss()
    finally:
        floor.stop()
    sync = SyncProcess(ds, root / "sync-mem", args.poll_interval)
    following = False
    try:
        sync.start()
        out["ready_s"], out["load_s"] = sync.wait_ready(900, out["datastore"]["pods"])
        out["load_cpu_s"] = sync.cpu()
        time.sleep(1.0)
        out["rss0_mib"], out["hwm0_mib"] = sync.rss(), sync.hwm()
        nodes = wl.node_names
        cpu0, ccpu0 = sync.cpu(), pool.cpu()
        t0 = now()
        col = pool.follow(sync.socket, nodes, args.sim_procs)
        following = True
        out["snapshot_s"] = pool.wait_ready(600) - t0
        out["snapshot_sync_cpu_s"], out["snapshot_clients_cpu_s"] = sync.cpu() - cpu0, pool.cpu() - ccpu0
        out["snapshot_messages"] = sum(r[1] for r in col.ready.values())
        out["snapshot_bytes"] = sum(r[2] for r in col.ready.values())
        time.sleep(1.0)
        out["rss_subs_mib"], out["hwm_subs_mib"] = sync.rss(), sync.hwm()
        out["subscribers"] = len(nodes)
        changes: dict[str, list[float]] = {"policy": [], "pod": []}
        calc: dict[str, list[float]] = {"policy": [], "pod": []}
        for k in range(args.mem_changes):
            for kind in changes:
                s0 = sync.latency()
                t0 = now()
                if kind == "policy":
                    marker = f"port:{PORT_BASE + 1 + k}"
                    write_docs(ds, "10-bench-policy", [bench_policy(PORT_BASE + 1 + k)])
                else:
                    marker = f"ip:{client_ip(k + 1)}"
                    write_docs(ds, f"20-client{k + 1:04d}", [client_pod(k + 1, "ns0", nodes[0], client_ip(k + 1))])
                got = col.marker(marker, nodes, 600)
                if len(got) == len(nodes):
                    changes[kind].append(max(got.values()) - t0)
                    calc[kind].append(sync.latency()[0] - s0[0])
        out["change_s"], out["change_calc_s"] = changes, calc
        out["overflows"], _ = subscriber_overflows(sync.status())
    finally:
        if following:
            pool.stop()
        sync.stop()
    proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--calc-baseline", str(ds)],
                          capture_output=True, text=True, timeout=900, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"calc baseline failed: {proc.stderr[-2000:]}")
    out["baseline"] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


# ---------------------------------------------------------------- report

def report_real(res: dict) -> str:
    names = {"policy": "policy change (rule port)", "pod": "pod add (Pod object with IP)",
             "pod-cni": "pod add (Pod object, then CNI ADD; IP from IPAM)"}
    rows = []
    for kind, s in res["summary"].items():
        rows.append([names[kind], s["n"], ms(s["p50"]), ms(s["p90"]), ms(s["p99"]), ms(s["max"]), res["lost"][kind]])
    text = (f"### 1. {res['nodes']} real agents, {res['mode']}: datastore write -> every node's kernel\n\n"
            f"File datastore polled every {res['poll_interval_s'] * 1e3:.0f} ms. Kernel time = the change's "
            f"commit notification seen by `nft monitor` in each node netns"
            + (" (pod add: the client ipset polled over netlink every 3 ms)" if res["mode"] == "iptables" else "")
            + ".\n\n" + md_table(["change", "n", "p50", "p90", "p99", "max", "lost"], rows))

    def med(kind: str, key: str) -> float:
        vals = [s[key] * 1e3 for s in res["samples"][kind] if s.get(key) is not None]
        return pct(vals, 50) if vals else float("nan")
    thirds = []
    for kind, ss in res["samples"].items():
        obs = [x["observer_s"] * 1e3 for x in ss if x.get("observer_s") is not None]
        if len(obs) >= 3:
            k = len(obs) // 3
            thirds.append(f"{kind} {ms(pct(obs[:k], 50))} -> {ms(pct(obs[-k:], 50))}")
    if thirds:
        f0, f1 = res["datastore_files"]
        text += (f"\n\nWrite -> node 0 stream, median of the first vs the last third of the changes, while the "
                 f"datastore grew from {f0} to {f1} files (every pod change adds one; the file source re-parses "
                 f"all of them on every change): " + "; ".join(thirds) + ".")
    if res.get("ambiguous_set_reads"):
        text += (f" {res['ambiguous_set_reads']} set reads saw a further commit land while they ran "
                 f"(the element's time is then the earlier commit's).")
    split = []
    for kind in res["summary"]:
        split.append([names[kind]] + [ms(med(kind, key)) for key in (
            "cni_add_s", "observer_s", "sync_calc_s", "node0_stream_to_kernel_s", "agent_apply_max_s",
            "every_node_s")])
    text += ("\n\nSplit (medians): the sync layer's calc+publish and the agents' apply come from their "
             "`vppagent_sync_latency_seconds` sums scraped before and after each change; \"write -> node 0 stream\" "
             "is a Sync stream for node 0 opened by the benchmark.\n\n"
             + md_table(["change", "CNI ADD returned", "write -> node 0 stream", "sync calc+publish",
                         "node 0 stream -> node 0 kernel", "agent apply (max node)", "write -> every kernel"], split))
    return text


def report_fanout(res: dict) -> str:
    one, many = res["one"], res["many"]
    n = many["subscribers"]
    wl = res["workload"]
    names = {"policy": "policy change", "pod": "pod add (Pod with IP)"}
    rows = []
    for kind in ("policy", "pod"):
        for phase in (one, many):
            s = phase["summary"][kind]
            pcm = s["per_change_max"]
            rows.append([names[kind], phase["subscribers"], pcm["n"], ms(pcm["p50"]), ms(pcm["p99"]),
                         ms(s["pairs"]["p50"]), ms(s["pairs"]["p99"]), ms(s["spread"]["p50"]),
                         ms(s["spread"]["p99"]), ms(s["sync_calc"]["p50"]), phase["lost"][kind]])

        def ratio(key: str, q: str, kind: str = kind) -> str:
            a, b = one["summary"][kind][key][q], many["summary"][kind][key][q]
            return f"{b / a:.2f}x" if a == a and b == b and a else "-"
        rows.append([f"**{names[kind]}: {n}:1**", "", "", ratio("per_change_max", "p50"),
                     ratio("per_change_max", "p99"), ratio("pairs", "p50"), ratio("pairs", "p99"), "", "",
                     ratio("sync_calc", "p50"), ""])
    text = (f"### 2. Fan-out: {n} simulated agents vs 1 ({wl['nodes']} nodes x {wl['pods_per_node']} pods, "
            f"{wl['policies']} policies, {wl['namespaces']} namespaces; {wl['sim_procs']} client processes)\n\n"
            f"Datastore write -> receipt on the Sync stream (decoded and folded). \"per change\" = the last "
            f"stream to get it; \"pairs\" = every (change, stream); spread = last - first receipt. The file "
            f"datastore re-parses the whole directory on every change: {res['datastore_parse_s'] * 1e3:,.0f} ms "
            f"for this one (measured in this process).\n\n"
            + md_table(["change", "streams", "n", "per change p50", "per change p99", "pairs p50", "pairs p99",
                        "spread p50", "spread p99", "sync calc+publish p50", "lost"], rows))
    rows = []
    for phase in (one, many):
        rows.append([phase["subscribers"], f"{phase['load_s']:.2f} s", f"{phase['snapshot_s']:.2f} s",
                     f"{phase['snapshot_messages']:,}", f"{phase['rss_mib']:.0f} MiB",
                     f"{phase['changes_cpu_s']:.1f} s", phase["overflows"], phase.get("client_resyncs", "-"),
                     ", ".join(phase.get("client_errors", [])) or "none"])
    text += ("\n\n" + md_table(["streams", "sync loaded after start", "all streams in sync after that",
                                "snapshot msgs", "sync RSS", "sync CPU (timed changes)", "overflows (server)",
                                "resyncs (clients)", "stream errors"], rows))
    b = many.get("burst")
    if b:
        per_change_cpu = many["changes_cpu_s"] / max(1, sum(len(v) for v in many["samples"].values()))
        per_msg_us = max(0.0, b["sync_cpu_s"] - per_change_cpu) / max(1, b["messages"]) * 1e6
        text += ("\n\n" + md_table(
            ["burst", "messages", "write -> first", "write -> last", "first -> last", "throughput",
             "sync CPU", "sync CPU per message (less one re-parse)", "clients CPU"],
            [[f"{b['policies']} policies x {b['streams_done']} streams", f"{b['messages']:,}",
              ms(b["write_to_first_s"] * 1e3), ms(b["write_to_last_s"] * 1e3), ms(b["first_to_last_s"] * 1e3),
              f"{b['msgs_per_s']:,.0f} msg/s", f"{b['sync_cpu_s']:.1f} s",
              f"{per_msg_us:.0f} us",
              f"{b['clients_cpu_s']:.1f} s"]]))
    return text


def report_memory(res: dict) -> str:
    wl, base, d = res["workload"], res["baseline"], res["datastore"]
    growth = base["rss_calc_mib"] - base["rss_parsed_mib"]
    rows = [
        ["calculation alone (CalcGraph(None), same files)", f"{base['rss_calc_mib']:.0f} MiB",
         f"{base['peak_mib']:.0f} MiB", f"{base['parse_s'] + base['calc_s']:.1f} s "
         f"(parse {base['parse_s']:.1f} + calc {base['calc_s']:.1f})", "1.00x"],
        ["sync layer, empty datastore", f"{res['empty_rss_mib']:.0f} MiB", "-", f"{res['empty_load_s']:.1f} s", "-"],
        ["sync layer, 0 subscribers", f"{res['rss0_mib']:.0f} MiB", f"{res['hwm0_mib']:.0f} MiB",
         f"{res['load_s']:.1f} s (CPU {res['load_cpu_s']:.1f} s; /readiness said ready at {res['ready_s']:.1f} s)",
         f"{res['rss0_mib'] / base['rss_calc_mib']:.2f}x"],
        [f"sync layer, {res['subscribers']} subscribers", f"{res['rss_subs_mib']:.0f} MiB",
         f"{res['hwm_subs_mib']:.0f} MiB",
         f"+{res['snapshot_s']:.1f} s to serve {res['snapshot_messages']:,} snapshot msgs "
         f"({res['snapshot_messages'] / max(res['snapshot_s'], 1e-9):,.0f}/s; "
         f"sync CPU {res['snapshot_sync_cpu_s']:.1f} s, clients {res['snapshot_clients_cpu_s']:.1f} s)",
         f"{res['rss_subs_mib'] / base['rss_calc_mib']:.2f}x"],
    ]
    text = (f"### 3. Memory: {d['pods']:,} pods on {wl['nodes']} nodes, {d['policies']:,} policies, "
            f"{wl['namespaces']} namespaces, {wl['services']} services ({d['bytes'] / 2**10:,.0f} KiB of YAML)\n\n"
            + md_table(["process", "RSS", "peak RSS", "load time", "RSS vs calc alone"], rows)
            + f"\n\nCalculation state alone (RSS growth over the parsed objects): {growth:.0f} MiB; "
              f"{base['updates']:,} updates. Per subscriber: "
              f"{(res['rss_subs_mib'] - res['rss0_mib']) / max(1, res['subscribers']):.1f} MiB.")
    ch = res.get("change_s", {})
    if any(ch.values()):
        calc = res.get("change_calc_s", {})
        text += "\nOne change at this scale, write -> all {} streams (the sync layer's calc+publish): {}.".format(
            res["subscribers"], ", ".join(
                f"{k} {', '.join(ms(v * 1e3) for v in vs)} ({', '.join(ms(c * 1e3) for c in calc.get(k, []))})"
                for k, vs in ch.items() if vs))
    return text


def plot(results: dict, path: Path) -> Path | None:
    """Latency CDFs: the real agents per mode/change, and the fan-out 1 vs N streams."""
    from plot import _pyplot

    plt = _pyplot()
    if plt is None:
        return None
    from matplotlib.ticker import FuncFormatter

    panels: list[tuple[str, dict[str, list[float]]]] = []
    real = results.get("real", {})
    if real:
        panels.append(("write -> every node's kernel (real agents)",
                       {f"{m} {k}": [s["every_node_s"] * 1e3 for s in r["samples"][k]]
                        for m, r in real.items() for k in r["samples"]}))
    fan = results.get("fanout")
    if fan:
        panels.append(("write -> last stream (per change)",
                       {f"{k}, {p['subscribers']} stream(s)": [s["max_s"] * 1e3 for s in p["samples"][k]]
                        for k in ("policy", "pod") for p in (fan["one"], fan["many"])}))
        many = fan["many"]
        panels.append(("publish spread: last - first stream",
                       {f"{k}, {many['subscribers']} streams": [s["spread_s"] * 1e3 for s in many["samples"][k]]
                        for k in ("policy", "pod")}))
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels):
        lo, hi = float("inf"), 0.0
        for name, xs in series.items():
            xs = sorted(x for x in xs if x > 0)
            if xs:
                ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=name)
                lo, hi = min(lo, xs[0]), max(hi, xs[-1])
        ax.set_xscale("log")
        every = hi < 10 * lo                # within a decade: label every minor tick, else 2s and 5s
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(FuncFormatter(
            lambda v, _, every=every: f"{v:g}" if every or f"{v:g}"[0] in "25" else ""))
        ax.tick_params(axis="x", which="minor", labelsize=7)
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of changes")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle("vppagent sync layer: change propagation", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.94))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="real,fanout,memory", help="comma list of real, fanout, memory")
    ap.add_argument("--quick", action="store_true", help="tiny sizes (the smoke test)")
    ap.add_argument("--poll-interval", type=float, default=0.02, help="file datastore poll interval (s)")
    g = ap.add_argument_group("real agents")
    g.add_argument("--modes", default="nftables,iptables")
    g.add_argument("--nodes", type=int, default=3)
    g.add_argument("--changes", type=int, default=30, help="timed changes of each kind")
    g.add_argument("--no-cni", dest="cni", action="store_false", help="skip the Pod + CNI ADD change")
    g = ap.add_argument_group("fan-out")
    g.add_argument("--sim-nodes", type=int, default=50)
    g.add_argument("--sim-pods", type=int, default=20, help="pods per node")
    g.add_argument("--sim-policies", type=int, default=200)
    g.add_argument("--sim-namespaces", type=int, default=20)
    g.add_argument("--sim-procs", type=int, default=5, help="processes the simulated agents run in")
    g.add_argument("--fanout-changes", type=int, default=15, help="timed changes of each kind, per phase")
    g.add_argument("--burst", type=int, default=300, help="policies written at once (throughput)")
    g = ap.add_argument_group("memory")
    g.add_argument("--mem-pods", type=int, default=10_000)
    g.add_argument("--mem-policies", type=int, default=2_000)
    g.add_argument("--mem-namespaces", type=int, default=200)
    g.add_argument("--mem-services", type=int, default=500)
    g.add_argument("--mem-nodes", type=int, default=50)
    g.add_argument("--mem-changes", type=int, default=1, help="changes timed at this scale (each re-parses all)")
    ap.add_argument("--out", default=str(PERF / "out"))
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--calc-baseline", metavar="DIR", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.quick:
        args.modes, args.nodes, args.changes = "nftables", 2, 1
        args.sim_nodes, args.sim_pods, args.sim_policies, args.sim_namespaces = 4, 3, 10, 3
        args.sim_procs, args.fanout_changes, args.burst = 2, 2, 10
        args.mem_pods, args.mem_policies, args.mem_namespaces, args.mem_services = 120, 20, 6, 6
        args.mem_nodes, args.mem_changes = 4, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.calc_baseline:
        calc_baseline(args.calc_baseline)
        return 0
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))      # run the clean-ups below
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    results: dict[str, Any] = {"params": {k: v for k, v in vars(args).items() if k != "calc_baseline"},
                               "host": {"cpus": os.cpu_count(), "kernel": platform.release(),
                                        "python": platform.python_version(), "load_start": loadavg()},
                               "notes": []}
    print(f"# sync layer benchmark (load average {loadavg()}, {os.cpu_count()} CPUs)\n")
    root = Path(tempfile.mkdtemp(prefix="sync-bench-"))
    try:
        if "real" in parts:
            if os.geteuid() != 0 or not shutil.which("nft"):
                note = "real agents skipped: needs root and nft (network namespaces)"
                results["notes"].append(note)
                print(f"_{note}_\n")
            else:
                results["real"] = {}
                for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
                    results["real"][mode] = run_real(mode, args)
                    print(report_real(results["real"][mode]) + "\n", flush=True)
        if "fanout" in parts or "memory" in parts:
            pool = SimPool(args.sim_procs)
            try:
                if "fanout" in parts:
                    results["fanout"] = run_fanout(args, root, pool)
                    print(report_fanout(results["fanout"]) + "\n", flush=True)
                if "memory" in parts:
                    results["memory"] = run_memory(args, root, pool)
                    print(report_memory(results["memory"]) + "\n", flush=True)
            finally:
                pool.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results["host"]["load_end"] = loadavg()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"sync_bench{'-' + args.tag if args.tag else ''}"
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"wrote {out / (stem + '.json')}", end="")
    if not args.no_plot and plot(results, out / f"{stem}.png"):
        print(f" and {out / (stem + '.png')}", end="")
    print(f" (load average at the end {loadavg()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
