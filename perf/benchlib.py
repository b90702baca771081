"""Helpers the dataplane benchmarks share: commands in a netns, TCP probes, iperf3, result tables
and the JSON/PNG output step."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import plot

PROBE = (
    "import socket, sys\ns = socket.socket()\ns.settimeout(float(sys.argv[3]))\n"
    "try:\n    s.connect((sys.argv[1], int(sys.argv[2])))\n    print('open')\n"
    "except ConnectionRefusedError:\n    print('refused')\n"
    "except OSError:\n    print('dropped')\n")


def exec_in(ns: str, argv: list[str], timeout: float, check: bool = False) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in netns ``ns``; with ``check``, a non-zero exit raises RuntimeError."""
    proc = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} in {ns}: exit {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[:400]}")
    return proc


def probe(ns: str, ip: str, port: int, timeout: float = 0.7, check: bool = False) -> str:
    """What a TCP SYN from ``ns`` gets: 'open', 'refused' (RST) or 'dropped' (nothing back)."""
    argv = [sys.executable, "-I", "-S", "-c", PROBE, ip, str(port), str(timeout)]
    return exec_in(ns, argv, timeout=15, check=check).stdout.strip()


def iperf3_gbps(ns: str, ip: str, port: int, seconds: int, attempts: int = 6, slack: float = 40,
                connect_timeout_ms: int | None = 3000) -> float:
    """Gbit/s the server received from one ``iperf3 -c`` TCP stream run in ``ns``; retried (up to
    ``attempts`` runs) while the server is busy with the previous run or not up yet."""
    argv = ["iperf3", "-c", ip, "-p", str(port), "-t", str(int(seconds)), "-J"]
    if connect_timeout_ms is not None:
        argv += ["--connect-timeout", str(connect_timeout_ms)]
    last = ""
    for _ in range(attempts):
        proc = exec_in(ns, argv, timeout=seconds + slack)
        try:
            data = json.loads(proc.stdout)
        except json.JSONDecodeError:
            data = {"error": proc.stderr.strip() or "no output"}
        if "error" not in data and proc.returncode == 0:
            return data["end"]["sum_received"]["bits_per_second"] / 1e9
        last = data.get("error", "")
        time.sleep(0.5)
    raise RuntimeError(f"iperf3 to {ip}:{port} from {ns} failed: {last}")


def replace_resources(graph: Any, current: dict[str, Any], wanted: dict[str, Any]) -> list[Any]:
    """Move a CalcGraph from the resources ``current`` to ``wanted`` (by name); returns its updates."""
    for name in set(current) - set(wanted):
        graph.remove(current[name])
    for r in wanted.values():
        graph.update(r)
    return graph.flush()


def md_table(heads: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, every column padded to its widest cell."""
    widths = [max(len(x) for x in col) for col in zip(heads, *rows)]
    lines = [f"| {' | '.join(h.ljust(w) for h, w in zip(heads, widths))} |",
             f"|{'|'.join('-' * (w + 2) for w in widths)}|"]
    lines += [f"| {' | '.join(v.ljust(w) for v, w in zip(row, widths))} |" for row in rows]
    return "\n".join(lines)


def print_md_table(heads: list[str], rows: list[list[str]], notes: Iterable[str] = ()) -> None:
    """Print ``md_table(heads, rows)``, then a ``note: …`` line per note."""
    print(md_table(heads, rows))
    for note in notes:
        print(f"note: {note}")


def each_point(lanes: dict[str, dict[str, Any]], rule_counts: list[int],
               baseline: str) -> Iterator[tuple[int, str, dict[str, Any], dict[str, Any]]]:
    """``(rules, lane, point, the baseline lane's point)`` for every measured point, by rule count."""
    base = {p["rules"]: p for p in lanes[baseline]["points"]}
    for rules in rule_counts:
        b = base[rules]
        for name, lane in lanes.items():
            for p in lane["points"]:
                if p["rules"] == rules:
                    yield rules, name, p, b


def add_output_args(ap: argparse.ArgumentParser) -> None:
    """``--out``, ``--tag`` and ``--no-plot``, as ``write_results`` reads them."""
    ap.add_argument("--out", default=str(plot.OUT_DIR))
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-plot", action="store_true")


def write_results(res: dict[str, Any], name: str, a: argparse.Namespace,
                  plot_results: Callable[[dict[str, Any], str, str], list[Path]]) -> None:
    """Write ``<out>/<name>[-<tag>].json`` and, unless ``--no-plot``, the benchmark's plots."""
    stem = name + (f"-{a.tag}" if a.tag else "")
    jpath = plot.out_path(stem + ".json", a.out)
    jpath.write_text(json.dumps(res, indent=2, default=str))
    print(f"\nwrote {jpath}")
    if not a.no_plot:
        for path in plot_results(res, stem, a.out):
            print(f"wrote {path}")
