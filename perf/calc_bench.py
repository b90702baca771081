#!/usr/bin/env python3
"""Calculation benchmark: 10,000 endpoints, 2,000 policies, 200 namespaces.

Prints a table: full calculation time and peak memory, then the latency of
one label change and one policy change, beside the cost of recomputing
everything from scratch (the O(total) baseline) so the ratio shows that one
change costs O(affected).

    python perf/calc_bench.py [--endpoints N] [--policies N] [--namespaces N]
"""

from __future__ import annotations

import argparse
import gc
import ipaddress
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vppagent.calc.graph import CalcGraph  # noqa: E402
from vppagent.manifests.loader import load_objects  # noqa: E402

APPS = [f"app{i}" for i in range(25)]


def namespaces(n: int) -> list[dict]:
    return [{"apiVersion": "v1", "kind": "Namespace",
             "metadata": {"name": f"ns{i}", "labels": {"team": f"t{i % 10}", "env": ["prod", "dev"][i % 2]}}}
            for i in range(n)]


def pod(i: int, n_ns: int, app: str | None = None) -> dict:
    ip = ipaddress.ip_address("10.64.0.0") + i
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"pod{i}", "namespace": f"ns{i % n_ns}",
                         "labels": {"app": app or APPS[i % len(APPS)], "version": f"v{i % 3}"}},
            "spec": {"nodeName": "node1", "containers": [{"name": "c", "ports": [
                {"name": "http", "containerPort": 8000 + i % 5}]}]},
            "status": {"podIPs": [{"ip": str(ip)}]}}


def policy(i: int, n_ns: int, extra_port: int = 0) -> dict:
    ns = f"ns{i % n_ns}"
    app, peer = APPS[i % len(APPS)], APPS[(i * 7 + 3) % len(APPS)]
    if i % 4 == 0:   # Kubernetes NetworkPolicy
        return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                "metadata": {"name": f"knp{i}", "namespace": ns},
                "spec": {"podSelector": {"matchLabels": {"app": app}},
                         "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": peer}}},
                                               {"namespaceSelector": {"matchLabels": {"team": f"t{i % 10}"}}}],
                                      "ports": [{"port": "http"}, {"port": 443 + extra_port}]}]}}
    return {"apiVersion": "projectcalico.org/v3", "kind": "NetworkPolicy",
            "metadata": {"name": f"cnp{i}", "namespace": ns},
            "spec": {"order": i % 50, "selector": f"app == '{app}'",
                     "ingress": [{"action": "Allow", "protocol": "TCP",
                                  "source": {"selector": f"app == '{peer}' && version != 'v2'"},
                                  "destination": {"ports": [80 + extra_port, "8000:8100"]}},
                                 {"action": "Deny", "source": {"nets": ["192.0.2.0/24"]}}],
                     "egress": [{"action": "Allow", "destination": {"selector": f"app == '{peer}'"}}]}}


def rss_mib() -> float:
    with open(f"/proc/{os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def median_ms(samples: list[float]) -> str:
    return f"{statistics.median(samples) * 1e3:.2f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", type=int, default=10_000)
    ap.add_argument("--policies", type=int, default=2_000)
    ap.add_argument("--namespaces", type=int, default=200)
    ap.add_argument("--changes", type=int, default=20, help="single changes to time")
    args = ap.parse_args()

    objs = namespaces(args.namespaces)
    objs += [pod(i, args.namespaces) for i in range(args.endpoints)]
    objs += [policy(i, args.namespaces) for i in range(args.policies)]
    t_parse, resources = timed(lambda: load_objects(objs, "bench"))
    gc.collect()
    rss0 = rss_mib()
    graph = CalcGraph("node1")
    t_calc, updates = timed(lambda: (graph.apply_all(resources), graph.flush())[1])
    rss1 = rss_mib()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    full_evals = graph.label_evaluations
    stats = graph.stats()

    # One label change: a pod moves to another app (leaves some policies and sets, joins others).
    label_lat, label_evals, label_updates = [], [], []
    for k in range(args.changes):
        i = (k * 397) % args.endpoints
        (changed,) = load_objects([pod(i, args.namespaces, app=APPS[(i + 1 + k) % len(APPS)])])
        before = graph.label_evaluations
        t, ups = timed(lambda: (graph.update(changed), graph.flush())[1])
        label_lat.append(t)
        label_evals.append(graph.label_evaluations - before)
        label_updates.append(len(ups))

    # One policy change: a rule's port changes (re-render one policy; IP sets are reused).
    pol_lat, pol_evals, pol_updates = [], [], []
    for k in range(args.changes):
        i = (k * 97 + 1) % args.policies
        (changed,) = load_objects([policy(i, args.namespaces, extra_port=k + 1)])
        before = graph.label_evaluations
        t, ups = timed(lambda: (graph.update(changed), graph.flush())[1])
        pol_lat.append(t)
        pol_evals.append(graph.label_evaluations - before)
        pol_updates.append(len(ups))

    # O(total) baseline: recomputing everything from scratch after one change.
    t_full2, _ = timed(lambda: (lambda g: (g.apply_all(graph.resources.values()), g.flush()))(CalcGraph("node1")))

    rows = [
        ("endpoints / policies / namespaces", f"{args.endpoints} / {args.policies} / {args.namespaces}"),
        ("parse manifests (YAML objects -> model)", f"{t_parse:.2f} s"),
        ("full calculation (apply + flush)", f"{t_calc:.2f} s"),
        ("updates emitted by the full calculation", f"{len(updates)}"),
        ("active: endpoints / policies / profiles / IP sets",
         f"{stats['endpoints']} / {stats['policies']} / {stats['profiles']} / {stats['ipsets']}"),
        ("selector evaluations, full calculation", f"{full_evals}"),
        ("memory of the calculation state (RSS growth)", f"{rss1 - rss0:.0f} MiB"),
        ("peak RSS of the process", f"{peak:.0f} MiB"),
        ("one label change: latency (median)", median_ms(label_lat)),
        ("one label change: selector evaluations (median)", f"{statistics.median(label_evals):.0f}"),
        ("one label change: updates emitted (median)", f"{statistics.median(label_updates):.0f}"),
        ("one policy change: latency (median)", median_ms(pol_lat)),
        ("one policy change: selector evaluations (median)", f"{statistics.median(pol_evals):.0f}"),
        ("one policy change: updates emitted (median)", f"{statistics.median(pol_updates):.0f}"),
        ("from-scratch recompute (O(total) baseline)", f"{t_full2:.2f} s"),
        ("label change vs from-scratch", f"1 : {t_full2 / statistics.median(label_lat):,.0f}"),
        ("policy change vs from-scratch", f"1 : {t_full2 / statistics.median(pol_lat):,.0f}"),
        ("label change evaluations vs full", f"{statistics.median(label_evals):.0f} : {full_evals}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'calculation benchmark':<{width}}  value")
    print(f"{'-' * width}  {'-' * 16}")
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


if __name__ == "__main__":
    main()
