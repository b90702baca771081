#!/usr/bin/env python3
"""CNI ADD/DEL latency: vppagent-cni against the reference ptp + host-local, in the same run.

Usage (root)::

    python perf/cni_bench.py [-n 40] [--dataplane pods|none|iptables|nftables] [--json FILE]

A node netns runs the agent (``pods``: in-process, Linux pod wiring without
policy, i.e. the same veth/address/route work ptp does; other values start
``vppagent run`` with that dataplane). Every plugin is exec'd the way a
runtime does it (environment + config on stdin, from the node netns) for N
fresh pod netns each; ADDs are interleaved between plugins, then the DELs.
Prints p50/p90 per plugin and the ratio to ptp; also the bare interpreter
start-up for context, since that is the floor of any Python plugin.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.linux_harness import Node  # noqa: E402
from vppagent.dataplane.linux import LinuxDataplane  # noqa: E402
from vppagent.dataplane.linux.netlink_ns import open_netns, run_in_netns  # noqa: E402

REFERENCE_DIR = "/usr/lib/cni"


class PodsOnly(LinuxDataplane):
    """Pod wiring, no policy: the work comparable to ptp's."""

    name = "linux-pods"

    def on_update(self, update, state):
        pass


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_plugin(argv: list[str], env: dict[str, str], conf: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run(argv, input=json.dumps(conf).encode(), env=env, capture_output=True)
    elapsed = (time.perf_counter() - started) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} {env['CNI_COMMAND']} failed: {proc.stdout.decode()} {proc.stderr.decode()}")
    return elapsed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=40, help="pods per plugin (default 40)")
    ap.add_argument("--dataplane", default="pods", help="pods (in-process wiring) or a dataplane type")
    ap.add_argument("--json", help="also write the numbers to this file")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("cni_bench needs root (network namespaces)", file=sys.stderr)
        return 2
    for ref in ("ptp", "host-local"):
        if not os.access(f"{REFERENCE_DIR}/{ref}", os.X_OK):
            print(f"missing {REFERENCE_DIR}/{ref} (Debian package containernetworking-plugins)", file=sys.stderr)
            return 2
    factory = PodsOnly if args.dataplane == "pods" else args.dataplane
    with Node(factory, pools=["10.65.0.0/16"], log_level="warning") as node, \
            tempfile.TemporaryDirectory(prefix="cni-bench-") as tmp:
        console = Path(sys.executable).parent / "vppagent-cni"
        plugins: dict[str, tuple[list[str], dict]] = {
            "ptp + host-local": ([f"{REFERENCE_DIR}/ptp"], {
                "cniVersion": "1.0.0", "name": "bench-ptp", "type": "ptp", "ipMasq": False, "mtu": 1500,
                "ipam": {"type": "host-local", "ranges": [[{"subnet": "10.88.0.0/16"}]],
                         "routes": [{"dst": "0.0.0.0/0"}], "dataDir": f"{tmp}/host-local"}}),
            "vppagent-cni (launcher)": ([str(node.plugin)], {
                "cniVersion": "1.0.0", "name": "bench", "type": "vppagent-cni", "agentSocket": node.socket}),
        }
        if console.exists():
            plugins["vppagent-cni (console script)"] = ([str(console)], plugins["vppagent-cni (launcher)"][1])
        sandboxes = {name: [node.add_netns(f"b{k}{i}") for i in range(args.n)]
                     for k, name in enumerate(plugins)}
        times: dict[str, dict[str, list[float]]] = {name: {"ADD": [], "DEL": []} for name in plugins}

        def env(command: str, name: str, i: int) -> dict[str, str]:
            return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "CNI_COMMAND": command,
                    "CNI_CONTAINERID": f"{node.token}b{abs(hash(name)) % 1000}x{i}",
                    "CNI_NETNS": f"/var/run/netns/{sandboxes[name][i]}", "CNI_IFNAME": "eth0",
                    "CNI_PATH": REFERENCE_DIR,
                    "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME=p{abs(hash(name)) % 1000}x{i}"}

        def measure() -> None:   # runs in the node netns: the plugins inherit it, like a runtime's
            for command in ("ADD", "DEL"):
                for i in range(args.n):
                    for name, (argv, conf) in plugins.items():
                        times[name][command].append(run_plugin(argv, env(command, name, i), conf))
            for _ in range(args.n):
                times.setdefault("python -I -S -c pass (floor)", {"ADD": [], "DEL": []})["ADD"].append(
                    run_plugin([sys.executable, "-I", "-S", "-c", "pass"], {"CNI_COMMAND": "-"}, {}))

        fd = open_netns(node.netns)
        try:
            run_in_netns(fd, measure)
        finally:
            os.close(fd)

    ref = times["ptp + host-local"]
    rows = []
    print(f"\nCNI latency, {args.n} pods per plugin, agent dataplane: {args.dataplane} (ms)\n")
    print(f"| {'plugin':32} | ADD p50 | ADD p90 | DEL p50 | DEL p90 | ADD / ptp | DEL / ptp |")
    print(f"|{'-' * 34}|---------|---------|---------|---------|-----------|-----------|")
    for name, t in times.items():
        add50, add90 = statistics.median(t["ADD"]), percentile(t["ADD"], 0.9)
        has_del = bool(t["DEL"])
        del50 = statistics.median(t["DEL"]) if has_del else float("nan")
        del90 = percentile(t["DEL"], 0.9) if has_del else float("nan")
        r_add = add50 / statistics.median(ref["ADD"])
        r_del = del50 / statistics.median(ref["DEL"]) if has_del else float("nan")
        rows.append({"plugin": name, "add_p50": add50, "add_p90": add90, "del_p50": del50, "del_p90": del90,
                     "add_ratio": r_add, "del_ratio": r_del})
        dash = "      -"
        print(f"| {name:32} | {add50:7.1f} | {add90:7.1f} | "
              f"{(f'{del50:7.1f}' if has_del else dash)} | {(f'{del90:7.1f}' if has_del else dash)} | "
              f"{r_add:8.2f}x | {(f'{r_del:8.2f}x' if has_del else '        -')} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"n": args.n, "dataplane": args.dataplane, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
