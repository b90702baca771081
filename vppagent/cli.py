"""The ``vppagent`` command line."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from vppagent import __version__
from vppagent.model.errors import ValidationError


def _cmd_eval(args: argparse.Namespace) -> int:
    from vppagent.evaluator import build_evaluator, make_packet
    from vppagent.manifests.loader import load_strict

    ev = build_evaluator(load_strict(args.manifests))
    if args.matrix:
        from vppagent.evaluator.matrix import print_matrix

        print_matrix(ev, as_json=args.json)
        return 0
    if not args.src or not args.dst:
        raise ValidationError("to" if args.src else "from", "--from and --to are required (or use --matrix)")
    verdict = ev.evaluate(make_packet(ev, args.src, args.dst, args.icmp, 6 if args.ipv6 else None))
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2))
    else:
        print(verdict.explain())
    return 0 if verdict.verdict == "allow" else 1


def _cmd_validate(args: argparse.Namespace) -> int:
    from vppagent.manifests.loader import load_path

    result = load_path(args.manifests)
    for err in result.errors:
        print(f"error: {err}", file=sys.stderr)
    kinds: dict[str, int] = {}
    for r in result.resources:
        kinds[type(r).__name__] = kinds.get(type(r).__name__, 0) + 1
    print(", ".join(f"{n} {k}" for k, n in sorted(kinds.items())) or "no resources")
    return 1 if result.errors else 0


def _cmd_run(args: argparse.Namespace) -> int:
    from vppagent.agent.config import load_config
    from vppagent.agent.daemon import run_agent

    return run_agent(load_config(args.config))


def _cmd_sync(args: argparse.Namespace) -> int:
    from vppagent.sources.config import DatastoreConfig
    from vppagent.sources.factory import create_block_store, create_source
    from vppagent.syncserver.server import SyncServerConfig, run_sync_server

    tls = None
    if args.tcp:
        if not (args.tls_cert and args.tls_key and args.tls_client_ca):
            raise ValidationError("--tcp", "TCP needs mutual TLS: give --tls-cert, --tls-key and --tls-client-ca")
        from vppagent.api.server import TLSConfig

        tls = TLSConfig(cert=args.tls_cert, key=args.tls_key, client_ca=args.tls_client_ca)
    ds = DatastoreConfig(type=args.datastore, path=args.path, poll_interval=args.poll_interval,
                         kubeconfig=args.kubeconfig, endpoints=tuple(args.etcd_endpoints or ("http://127.0.0.1:2379",)))
    config = SyncServerConfig(socket=args.socket or None, tcp=args.tcp, tls=tls, health_host=args.health_host,
                              health_port=args.health_port, max_queue=args.max_queue,
                              default_pools=tuple(args.default_pool or ("10.65.0.0/16",)), log_level=args.log_level)
    return run_sync_server(config, create_source(ds), create_block_store(ds, args.state_dir))


def _cmd_status(args: argparse.Namespace) -> int:
    from vppagent.agent.status import print_status

    return print_status(args.socket, as_json=args.json)


def _cmd_vpp_render_config(args: argparse.Namespace) -> int:
    from vppagent.vpp_node.config import load_node_config
    from vppagent.vpp_node.startup import render_startup_cli, render_startup_conf, rendered_with_cli_comment

    cfg = load_node_config(args.config, check_host=not args.no_host_checks)
    if not args.output:
        sys.stdout.write(rendered_with_cli_comment(cfg))
        return 0
    import os

    conf, cli = render_startup_conf(cfg), render_startup_cli(cfg)
    for path, text in ((args.output, conf), (cfg.exec_file, cli)):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _cmd_vpp_run(args: argparse.Namespace) -> int:
    import logging

    from vppagent.vpp_node.config import load_node_config
    from vppagent.vpp_node.manager import run_manager

    logging.basicConfig(level=getattr(logging, args.log_level.upper()),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("pyroute2", "asyncio", "vpp_papi"):   # their debug output is every message
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return run_manager(load_node_config(args.config))


def _add_vpp_commands(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    vpp = sub.add_parser("vpp", help="run VPP on the node: startup.conf, uplink handover, supervision",
                         description="The node side of the VPP dataplane (the vpp: section of the config).")
    vsub = vpp.add_subparsers(dest="vpp_command", required=True, metavar="VPP_COMMAND")
    rc = vsub.add_parser("render-config", help="print (or write) the startup.conf rendered from the config",
                         description="Render startup.conf from the vpp: section of FILE with the templates in "
                                     "startup-conf/; the startup CLI script follows as ## comments (with "
                                     "--output it is written to vpp.execFile). Exit 2 on an invalid config.")
    rc.add_argument("--config", required=True, metavar="FILE", help="YAML with a vpp: section")
    rc.add_argument("--output", metavar="PATH", help="write startup.conf here instead of printing it")
    rc.add_argument("--no-host-checks", action="store_true",
                    help="render for another machine: skip the CPU, memory, hugepage and plugin checks")
    rc.set_defaults(func=_cmd_vpp_render_config)
    run = vsub.add_parser("run", help="hand the uplink to VPP, supervise VPP, restore Linux when it stops",
                          description="Record the uplink's Linux state, start VPP with it, recreate the uplink's "
                                      "name, MAC, addresses and routes on a host interface through VPP, "
                                      "supervise VPP (restart policy) and restore Linux exactly on SIGTERM or "
                                      "when VPP stops.")
    run.add_argument("--config", required=True, metavar="FILE", help="YAML with a vpp: section")
    run.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    run.set_defaults(func=_cmd_vpp_run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vppagent",
        description="Calico-model Kubernetes node networking agent: policy, services and pod "
                    "networking on VPP or the Linux kernel.",
    )
    parser.add_argument("--version", action="version", version=f"vppagent {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the node agent (datastore -> calculation -> dataplane)")
    run.add_argument("--config", metavar="FILE", help="agent config YAML (default: file datastore on examples/, dataplane none)")
    run.set_defaults(func=_cmd_run)

    sy = sub.add_parser(
        "sync", help="run the shared sync layer: one calculation, each node agent gets its share",
        description="Read the datastore once, calculate for every node and serve node agents "
                    "(datastore: {type: sync}) over the gRPC Sync stream; also serves IPAM to them.")
    sy.add_argument("--datastore", choices=("file", "kubernetes", "etcd"), default="file")
    sy.add_argument("--path", default="examples", metavar="DIR", help="manifest directory (file datastore)")
    sy.add_argument("--poll-interval", type=float, default=1.0, metavar="S", help="file datastore re-read interval")
    sy.add_argument("--kubeconfig", metavar="FILE", help="kubeconfig (kubernetes datastore; default in-cluster)")
    sy.add_argument("--etcd-endpoints", nargs="+", metavar="URL", help="etcd client URLs (etcd datastore)")
    sy.add_argument("--state-dir", default="/var/lib/vppagent-sync", metavar="DIR",
                    help="IPAM blocks for the file datastore (kubernetes and etcd keep them in the datastore)")
    sy.add_argument("--socket", default="/run/vppagent/sync.sock", metavar="PATH", help="unix socket ('' for none)")
    sy.add_argument("--tcp", metavar="HOST:PORT", help="also listen on TCP (mutual TLS required)")
    sy.add_argument("--tls-cert", metavar="FILE")
    sy.add_argument("--tls-key", metavar="FILE")
    sy.add_argument("--tls-client-ca", metavar="FILE")
    sy.add_argument("--health-host", default="127.0.0.1")
    sy.add_argument("--health-port", type=int, default=9098, help="/readiness /liveness /status /metrics (0: any)")
    sy.add_argument("--default-pool", action="append", metavar="CIDR",
                    help="IPAM pool while the datastore has no IPPool (repeatable; default 10.65.0.0/16)")
    sy.add_argument("--max-queue", type=int, default=10_000,
                    help="updates a node's stream may fall behind before it is snapshotted again")
    sy.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    sy.set_defaults(func=_cmd_sync)

    ev = sub.add_parser("eval", help="evaluate a packet against manifests with the reference evaluator",
                        description="Print the verdict of the source's egress and the destination's "
                                    "ingress, and which tier, policy and rule decided. Exit code 0 "
                                    "when allowed, 1 when denied, 2 on bad input.")
    ev.add_argument("--manifests", required=True, metavar="DIR", help="manifest file or directory")
    ev.add_argument("--from", dest="src", metavar="SRC", help="namespace/pod or an IP")
    ev.add_argument("--to", dest="dst", metavar="DST[:PORT[/PROTO]]",
                    help="namespace/pod or an IP, optional port and protocol (TCP, UDP, SCTP; default TCP)")
    ev.add_argument("--icmp", metavar="TYPE[/CODE]", help="send ICMP (ICMPv6 for IPv6) instead of a port")
    ev.add_argument("-6", "--ipv6", action="store_true", help="prefer IPv6 addresses of dual-stack pods")
    ev.add_argument("--matrix", action="store_true",
                    help="every pod to every other pod on each of its named container ports, with reasons")
    ev.add_argument("--json", action="store_true", help="machine-readable output")
    ev.set_defaults(func=_cmd_eval)

    va = sub.add_parser("validate", help="check manifests and report every invalid document")
    va.add_argument("--manifests", required=True, metavar="DIR")
    va.set_defaults(func=_cmd_validate)

    st = sub.add_parser("status", help="show the running agent's state (like calicoctl node status)")
    st.add_argument("--socket", default="/run/vppagent/agent.sock", help="agent gRPC socket")
    st.add_argument("--json", action="store_true")
    st.set_defaults(func=_cmd_status)

    _add_vpp_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ValidationError as exc:
        print(f"vppagent: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
