"""Find NDR and PDR of the node's dataplane with TRex (RFC 2544), and write a report.

    python perf/trex/runner.py --server 127.0.0.1 --profile udp_64b_flows \\
        --tx-port 0 --rx-port 1 --duration 10 --resolution 0.5 --loss-threshold 0.005 \\
        --profile-arg flows=100000 --link-gbps 10 --output perf/trex/report.json

Rates are percent of the TX port's line rate (TRex's ``mult="N%"``).  Each
trial resets the ports, loads the profile's streams, clears counters, sends
for ``--duration`` seconds, waits ``--settle`` seconds for packets in flight,
and counts TX ``opackets`` against RX ``ipackets`` (``--bidirectional``: both
directions, summed).  The search itself is ``search.find_ndr_pdr``.

TRex's Python client must be importable (``trex.stl.api`` or the older
``trex_stl_lib.api``; set ``TREX_CLIENT_PATH`` to TRex's
``automation/trex_control_plane/interactive``).  Without a TRex server,
``--simulate capacity=63.5,noise=0.01`` runs the same search against the
simulated device (``simulate.py``) to show the report's shape.

Writes ``<output>`` (JSON: parameters, result, every trial) and
``<output>.txt`` (the table, also printed).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Sequence

if __package__ in (None, ""):            # run as a script: make `perf.trex` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from perf.trex.search import (  # noqa: E402
    SearchConfig, SearchError, SearchResult, TrialResult, find_ndr_pdr, format_table,
)

PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


class TrexUnavailable(RuntimeError):
    """No TRex client library or no reachable TRex server."""


def import_stl_client() -> Any:
    """TRex's ``STLClient`` class (newer ``trex.stl.api``, else ``trex_stl_lib.api``)."""
    extra = os.environ.get("TREX_CLIENT_PATH")
    if extra and extra not in sys.path:
        sys.path.insert(0, extra)
    for module in ("trex.stl.api", "trex_stl_lib.api"):
        try:
            return importlib.import_module(module).STLClient
        except ImportError:
            continue
    raise TrexUnavailable("TRex's Python client is not importable: set TREX_CLIENT_PATH to "
                          "<trex>/automation/trex_control_plane/interactive")


def load_profile(name_or_path: str) -> ModuleType:
    """A profile module by name (``profiles/<name>.py``) or path, loaded like TRex does."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.py"
    if not path.is_file():
        known = ", ".join(p.stem for p in sorted(PROFILE_DIR.glob("*.py")) if p.stem != "__init__")
        raise SystemExit(f"no profile {name_or_path!r} (known: {known})")
    spec = importlib.util.spec_from_file_location(f"trex_profile_{path.stem}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TrexTrial:
    """One RFC 2544 trial on a connected ``STLClient`` (``(rate %, seconds) -> TrialResult``)."""

    def __init__(self, client: Any, streams: dict[int, list], rx_of: dict[int, int], settle: float = 1.0,
                 timeout_margin: float = 30.0) -> None:
        self.client = client
        self.streams = streams          # tx port -> streams
        self.rx_of = rx_of              # tx port -> the port its traffic comes back on
        self.settle = settle
        self.timeout_margin = timeout_margin

    def __call__(self, rate: float, duration: float) -> TrialResult:
        c = self.client
        tx = sorted(self.streams)
        ports = sorted(set(tx) | set(self.rx_of.values()))
        c.reset(ports=ports)
        for port in tx:
            c.add_streams(self.streams[port], ports=[port])
        c.clear_stats()
        c.start(ports=tx, mult=f"{rate}%", duration=duration, force=True)
        c.wait_on_traffic(ports=tx, timeout=duration + self.timeout_margin)
        if self.settle:
            time.sleep(self.settle)     # packets still in flight are counted (RFC 2544: wait before reading)
        stats = c.get_stats()
        offered = sum(int(stats[p]["opackets"]) for p in tx)
        received = sum(int(stats[self.rx_of[p]]["ipackets"]) for p in tx)
        return TrialResult(offered=offered, received=received)


def _profile_kwargs(items: Sequence[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--profile-arg {item!r}: expected key=value")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def write_report(path: str, result: SearchResult, meta: dict[str, Any], pps_at_max: float | None) -> str:
    table = format_table(result, "%", pps_at_max)
    report = {"meta": meta, "ppsAtMaxRate": pps_at_max, **result.to_json()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=1)
    with open(path + ".txt", "w") as f:
        f.write(table + "\n")
    return table


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="RFC 2544 NDR/PDR search through TRex (stateless).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--server", help="TRex server address (e.g. 127.0.0.1)")
    src.add_argument("--simulate", metavar="K=V,...", help="simulated device instead of TRex, e.g. capacity=63.5")
    p.add_argument("--profile", default="udp_64b_flows", help="profile name in profiles/ or a path")
    p.add_argument("--profile-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="keyword passed to the profile (repeatable), e.g. flows=100000")
    p.add_argument("--tx-port", type=int, default=0)
    p.add_argument("--rx-port", type=int, default=1)
    p.add_argument("--bidirectional", action="store_true", help="also send rx-port -> tx-port (direction 1)")
    p.add_argument("--min-rate", type=float, default=1.0, help="percent of line rate")
    p.add_argument("--max-rate", type=float, default=100.0, help="percent of line rate")
    p.add_argument("--resolution", type=float, default=0.5, help="percent of line rate")
    p.add_argument("--loss-threshold", type=float, default=0.005, help="PDR loss ratio (0.005 = 0.5%%)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per trial")
    p.add_argument("--confirm-duration", type=float, help="seconds of the confirming trial (default: --duration)")
    p.add_argument("--max-iterations", type=int, default=20)
    p.add_argument("--settle", type=float, default=1.0, help="seconds to wait for packets in flight")
    p.add_argument("--link-gbps", type=float, help="port speed, to show rates in Mpps too")
    p.add_argument("--output", default="perf/trex/report.json")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    kwargs = _profile_kwargs(args.profile_arg)
    module = load_profile(args.profile)
    plan = module.describe(**kwargs)
    cfg = SearchConfig(min_rate=args.min_rate, max_rate=args.max_rate, resolution=args.resolution,
                       loss_threshold=args.loss_threshold, trial_duration=args.duration,
                       confirm_duration=args.confirm_duration, max_iterations=args.max_iterations)
    try:
        cfg.validate()
    except SearchError as e:
        print(f"runner: {e}", file=sys.stderr)
        return 2
    pps_at_max = None
    if args.link_gbps:
        pps_at_max = args.link_gbps * 1e9 / ((plan["avg_frame_size"] + 20) * 8)   # + preamble and gap
    meta = {"profile": args.profile, "profileArgs": kwargs, "plan": plan, "txPort": args.tx_port,
            "rxPort": args.rx_port, "bidirectional": args.bidirectional, "started": time.time()}
    client = None
    if args.simulate:
        from perf.trex.simulate import SimulatedDut
        sim = {k: int(v) if v.isdigit() else float(v)
               for k, v in (kv.split("=", 1) for kv in args.simulate.split(",") if kv)}
        trial: Any = SimulatedDut(**sim)            # type: ignore[arg-type]
        meta["simulated"] = sim
    else:
        try:
            client_cls = import_stl_client()
            client = client_cls(server=args.server)
            client.connect()
        except TrexUnavailable as e:
            print(f"runner: {e}", file=sys.stderr)
            return 3
        except Exception as e:      # the client raises its own error types for an unreachable server
            print(f"runner: cannot reach the TRex server at {args.server}: {e}", file=sys.stderr)
            return 3
        streams = {args.tx_port: module.register().get_streams(direction=0, **kwargs)}
        rx_of = {args.tx_port: args.rx_port}
        if args.bidirectional:
            streams[args.rx_port] = module.register().get_streams(direction=1, **kwargs)
            rx_of[args.rx_port] = args.tx_port
        trial = TrexTrial(client, streams, rx_of, settle=args.settle)
        meta["server"] = args.server
    try:
        result = find_ndr_pdr(trial, cfg)
    finally:
        if client is not None:
            client.disconnect()
    meta["finished"] = time.time()
    print(write_report(args.output, result, meta, pps_at_max))
    print(f"\nreport: {args.output} (+ .txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
