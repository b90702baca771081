"""``vppagent-cni``: the CNI plugin (spec 1.0.0, plus STATUS and GC from 1.1.0).

A container runtime execs it with ``CNI_COMMAND`` and friends in the
environment and the network configuration on stdin::

    {"cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "vppagent-cni",
     "agentSocket": "/run/vppagent/agent.sock", "mtu": 1450}

ADD asks the agent (gRPC ``cni.CniDataplane`` on its unix socket) to assign
addresses with its IPAM and wire the pod, and prints the CNI result; DEL and
CHECK do the same for their verbs. Errors are CNI error objects on stdout
with the spec's codes and a non-zero exit.

Start-up is the latency here, so this module imports only the standard
library's C parts plus two small sibling modules (no grpc, no protobuf, not
even ``json``/``re``): see ``perf/cni_bench.py``. ``vppagent-cni install DIR``
writes a launcher that also skips the interpreter's site-packages scan.
"""

import sys
from posix import environ   # not ``os``: its import alone costs ~1.5 ms per exec

from vppagent.cni import h2grpc, wire

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_SOCKET = "/run/vppagent/agent.sock"
DEFAULT_TIMEOUT = 60.0
GATEWAYS = {4: "169.254.1.1", 6: "fe80::ecee:eeff:feee:eeee"}

# Well-known error codes (CNI spec) and ours (100+).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
AGENT_REFUSED = 100       # the agent could not do it (IPAM exhausted, wiring failed…)
CHECK_FAILED = 101        # CHECK found differences
AGENT_ERROR = 102         # the agent answered with an unexpected gRPC error

KNOWN_ARGS = {"IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID",
              "K8S_POD_UID", "IP"}


class CniFailure(Exception):
    """Reported to the runtime as a CNI error object."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details


# ---------------------------------------------------------------- JSON without json

class _DecodeContext:
    """What ``_json.make_scanner`` reads from a JSONDecoder (avoids importing ``json``/``re``)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> float:
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


def loads(text: str) -> object:
    try:
        import _json

        scan = _json.make_scanner(_DecodeContext())
    except (ImportError, AttributeError, TypeError):   # pragma: no cover - non-CPython
        import json

        return json.loads(text)
    i = _skip_ws(text, 0)
    try:
        value, i = scan(text, i)
        if _skip_ws(text, i) == len(text):
            return value
    except Exception:   # noqa: BLE001 - the slow path below explains what is wrong
        pass
    import json      # only for invalid input: its error names line and column

    return json.loads(text)


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in " \t\r\n":
        i += 1
    return i


def dumps(obj: object) -> str:
    try:
        import _json

        enc = _json.make_encoder(None, None, _json.encode_basestring_ascii, None, ": ", ", ",
                                 False, False, True)
        return "".join(enc(obj, 0))
    except (ImportError, AttributeError, TypeError):   # pragma: no cover - non-CPython
        import json

        return json.dumps(obj)


# ---------------------------------------------------------------- inputs

def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.split("."))
    except ValueError:
        return (0,)


def parse_cni_args(text: str) -> dict[str, str]:
    """``CNI_ARGS`` ("K=V;K2=V2"); unknown keys are errors unless IgnoreUnknown is set."""
    args: dict[str, str] = {}
    for part in text.split(";"):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq or not key:
            raise CniFailure(INVALID_ENV, f"invalid CNI_ARGS entry {part!r}: expected KEY=VALUE")
        args[key] = value
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and args.get("IgnoreUnknown", "").lower() not in ("1", "true"):
        raise CniFailure(INVALID_ENV, f"unknown CNI_ARGS key(s) {', '.join(unknown)}",
                         "set IgnoreUnknown=1 in CNI_ARGS to ignore arguments this plugin does not use")
    return args


def _require_env(env: dict[str, str], *names: str) -> None:
    missing = [n for n in names if not env.get(n)]
    if missing:
        raise CniFailure(INVALID_ENV, f"missing environment variable(s) {', '.join(missing)}",
                         "a container runtime sets CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME,"
                         " CNI_ARGS and CNI_PATH")
    cid = env.get("CNI_CONTAINERID", "")
    if cid and not (cid[0].isalnum() and all(c.isalnum() or c in "_.-" for c in cid)):
        raise CniFailure(INVALID_ENV, f"invalid CNI_CONTAINERID {cid!r}",
                         "a container id starts with a letter or digit and holds only letters, digits, '_', '.', '-'")
    ifname = env.get("CNI_IFNAME", "")
    if ifname and (len(ifname) > 15 or ifname in (".", "..") or any(c in "/: \t\n" for c in ifname)):
        raise CniFailure(INVALID_ENV, f"invalid CNI_IFNAME {ifname!r}",
                         "an interface name has at most 15 characters and no '/', ':' or whitespace")


def parse_config(raw: bytes) -> dict:
    try:
        conf = loads(raw.decode())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CniFailure(DECODE_FAILURE, "cannot decode the network configuration on stdin", str(exc)) from None
    if not isinstance(conf, dict):
        raise CniFailure(DECODE_FAILURE, "the network configuration must be a JSON object")
    version = conf.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniFailure(INVALID_CONFIG, "the network configuration has no cniVersion",
                         f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    if version not in SUPPORTED_VERSIONS:
        raise CniFailure(INCOMPATIBLE_VERSION, f"incompatible CNI version {version}",
                         f"supported versions: {', '.join(SUPPORTED_VERSIONS)}")
    sock = conf.get("agentSocket", DEFAULT_SOCKET)
    if not isinstance(sock, str) or not sock:
        raise CniFailure(INVALID_CONFIG, f"invalid agentSocket {sock!r}: expected a unix socket path")
    if sock.startswith("unix://"):
        conf["agentSocket"] = sock[len("unix://"):]
    mtu = conf.get("mtu", 0)
    if isinstance(mtu, bool) or not isinstance(mtu, int) or not (mtu == 0 or 68 <= mtu <= 65535):
        raise CniFailure(INVALID_CONFIG, f"invalid mtu {mtu!r}: expected an integer between 68 and 65535")
    timeout = conf.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise CniFailure(INVALID_CONFIG, f"invalid timeout {timeout!r}: expected seconds > 0")
    return conf


def requested_ips(conf: dict, args: dict[str, str]) -> list[str]:
    """Addresses the runtime asks for: runtimeConfig.ips, args.cni.ips, or CNI_ARGS IP=."""
    runtime = conf.get("runtimeConfig") or {}
    cni_args = (conf.get("args") or {}).get("cni") or {} if isinstance(conf.get("args"), dict) else {}
    for source, value in (("runtimeConfig.ips", runtime.get("ips") if isinstance(runtime, dict) else None),
                          ("args.cni.ips", cni_args.get("ips") if isinstance(cni_args, dict) else None)):
        if value:
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise CniFailure(INVALID_CONFIG, f"invalid {source} {value!r}: expected a list of addresses")
            return value
    if args.get("IP"):
        return [ip for ip in args["IP"].split(",") if ip]
    return []


# ---------------------------------------------------------------- agent calls

def _call(conf: dict, method: str, request: bytes) -> bytes:
    sock = conf.get("agentSocket", DEFAULT_SOCKET)
    try:
        return h2grpc.call(sock, f"/cni.CniDataplane/{method}", request, float(conf.get("timeout", DEFAULT_TIMEOUT)))
    except h2grpc.Unreachable as exc:
        raise CniFailure(TRY_AGAIN_LATER, f"cannot reach the vppagent agent at {sock}: {exc}",
                         "is the agent running on this node? (vppagent run; agentSocket in the CNI config)") from None
    except h2grpc.RpcError as exc:
        if exc.code == 3:   # INVALID_ARGUMENT: the agent names the bad field
            raise CniFailure(INVALID_CONFIG, f"the agent rejected the request: {exc.message}") from None
        if exc.code in (h2grpc.DEADLINE_EXCEEDED, h2grpc.UNAVAILABLE):
            raise CniFailure(TRY_AGAIN_LATER, f"the vppagent agent at {sock} did not answer: {exc.message}") from None
        raise CniFailure(AGENT_ERROR, f"the vppagent agent at {sock} failed: {exc.message}",
                         f"gRPC status {exc.code}") from None
    except OSError as exc:
        raise CniFailure(IO_FAILURE, f"I/O error talking to the vppagent agent at {sock}: {exc}") from None


def _pod(env: dict[str, str], args: dict[str, str]) -> tuple[str, str]:
    ns, pod = args.get("K8S_POD_NAMESPACE", ""), args.get("K8S_POD_NAME", "")
    if not ns or not pod:
        raise CniFailure(INVALID_ENV, "CNI_ARGS does not name the pod (K8S_POD_NAMESPACE and K8S_POD_NAME)",
                         "the kubelet's runtime passes them; other runtimes must set them in CNI_ARGS")
    return ns, pod


def cmd_add(conf: dict, env: dict[str, str]) -> dict:
    _require_env(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    args = parse_cni_args(env.get("CNI_ARGS", ""))
    namespace, pod = _pod(env, args)
    ifname, netns = env["CNI_IFNAME"], env["CNI_NETNS"]
    request = wire.add_request(
        container_id=env["CNI_CONTAINERID"], netns=netns, interface_name=ifname, namespace=namespace,
        pod=pod, mtu=int(conf.get("mtu", 0)), ips=requested_ips(conf, args),
        options={"cni_network": str(conf.get("name", ""))},
    )
    reply = wire.add_reply(_call(conf, "Add", request))
    if not reply["successful"]:
        raise CniFailure(AGENT_REFUSED, f"vppagent could not add {namespace}/{pod}: {reply['error_message']}")
    return build_result(conf, reply, ifname, netns)


def build_result(conf: dict, reply: dict, ifname: str, netns: str) -> dict:
    """The CNI result for ``conf``'s cniVersion from the agent's AddReply."""
    version = conf["cniVersion"]
    host: dict[str, str] = {"name": str(reply["host_interface_name"])}
    if reply["host_mac"]:
        host["mac"] = str(reply["host_mac"])
    container: dict[str, str] = {"name": ifname, "sandbox": netns}
    if reply["container_mac"]:
        container["mac"] = str(reply["container_mac"])
    ips, routes = [], []
    for ip in reply["assigned_ips"]:  # type: ignore[union-attr]
        family = 6 if ":" in ip["address"] else 4
        entry: dict[str, object] = {"address": ip["address"], "gateway": ip["gateway"] or GATEWAYS[family],
                                    "interface": 1}
        if _version_tuple(version) < (1, 0, 0):
            entry["version"] = str(family)
        ips.append(entry)
        dst = "0.0.0.0/0" if family == 4 else "::/0"
        if {"dst": dst} not in routes:
            routes.append({"dst": dst})
    dns = conf.get("dns") if isinstance(conf.get("dns"), dict) else {}
    return {"cniVersion": version, "interfaces": [host, container], "ips": ips, "routes": routes, "dns": dns}


def cmd_del(conf: dict, env: dict[str, str]) -> None:
    _require_env(env, "CNI_CONTAINERID", "CNI_IFNAME")
    parse_cni_args(env.get("CNI_ARGS", ""))
    request = wire.del_request(container_id=env["CNI_CONTAINERID"], netns=env.get("CNI_NETNS", ""),
                               interface_name=env["CNI_IFNAME"])
    reply = wire.del_reply(_call(conf, "Del", request))
    if not reply["successful"]:
        raise CniFailure(AGENT_REFUSED, f"vppagent could not delete container {env['CNI_CONTAINERID']}:"
                                        f" {reply['error_message']}")


def cmd_check(conf: dict, env: dict[str, str]) -> None:
    if _version_tuple(conf["cniVersion"]) < (0, 4, 0):
        raise CniFailure(INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later, got {conf['cniVersion']}")
    _require_env(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    parse_cni_args(env.get("CNI_ARGS", ""))
    prev = conf.get("prevResult")
    if not isinstance(prev, dict):
        raise CniFailure(INVALID_CONFIG, "CHECK needs prevResult (the result of the ADD) in the configuration")
    expected = [ip.get("address", "") for ip in prev.get("ips") or [] if isinstance(ip, dict)]
    request = wire.check_request(container_id=env["CNI_CONTAINERID"], netns=env["CNI_NETNS"],
                                 interface_name=env["CNI_IFNAME"],
                                 options={"expected_ips": ",".join(a for a in expected if a)})
    reply = wire.check_reply(_call(conf, "Check", request))
    if reply["successful"]:
        return
    drift = list(reply["drift"]) or [str(reply["error_message"])]  # type: ignore[arg-type]
    code = UNKNOWN_CONTAINER if any("is not known to the agent" in d for d in drift) else CHECK_FAILED
    raise CniFailure(code, f"container {env['CNI_CONTAINERID']}: " + "; ".join(drift))


def cmd_status(conf: dict) -> None:
    """STATUS (1.1): succeed when the agent answers its health check as SERVING."""
    sock = conf.get("agentSocket", DEFAULT_SOCKET)
    try:
        data = h2grpc.call(sock, "/grpc.health.v1.Health/Check", b"", 5.0)
    except (h2grpc.Unreachable, h2grpc.RpcError, OSError) as exc:
        raise CniFailure(NOT_AVAILABLE, f"cannot reach the vppagent agent at {sock}: {exc}") from None
    status = wire.parse(data).get(1, [0])[-1]
    if status != 1:
        raise CniFailure(NOT_AVAILABLE, f"the vppagent agent at {sock} is not ready yet")


def cmd_version(raw: bytes) -> dict:
    version = "1.1.0"
    try:
        conf = loads(raw.decode()) if raw.strip() else {}
        if isinstance(conf, dict) and conf.get("cniVersion") in SUPPORTED_VERSIONS:
            version = conf["cniVersion"]
    except (UnicodeDecodeError, ValueError):
        pass
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


# ---------------------------------------------------------------- entry point

def run(command: str, env: dict[str, str], raw: bytes) -> dict | None:
    """Execute one CNI command; returns the JSON to print (None: print nothing)."""
    if command == "VERSION":
        return cmd_version(raw)
    conf = parse_config(raw)
    if command == "ADD":
        return cmd_add(conf, env)
    if command == "DEL":
        cmd_del(conf, env)
    elif command == "CHECK":
        cmd_check(conf, env)
    elif command == "STATUS":
        cmd_status(conf)
    elif command == "GC":
        pass   # nothing is leaked: DEL releases everything (GC of stale attachments: not yet)
    else:
        raise CniFailure(INVALID_ENV, f"unknown CNI_COMMAND {command!r}",
                         "expected ADD, DEL, CHECK, VERSION, STATUS or GC")
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = {k.decode(errors="surrogateescape"): v.decode(errors="surrogateescape") for k, v in environ.items()}
    command = env.get("CNI_COMMAND", "")
    if not command:
        if argv[:1] == ["install"] and len(argv) >= 2:
            from vppagent.cni.install import write_launcher

            print(write_launcher(argv[1], *argv[2:3]))
            return 0
        sys.stderr.write("vppagent-cni: a CNI plugin, run by a container runtime (CNI_COMMAND is not set).\n"
                         f"CNI versions: {', '.join(SUPPORTED_VERSIONS)}.\n"
                         "vppagent-cni install DIR [NAME]: write a fast launcher into a CNI bin dir.\n")
        return 1
    version = "1.1.0"
    try:
        try:
            raw = sys.stdin.buffer.read()
        except OSError as exc:
            raise CniFailure(IO_FAILURE, f"cannot read the network configuration from stdin: {exc}") from None
        try:
            got = loads(raw.decode()) if raw.strip() else None
            if isinstance(got, dict) and got.get("cniVersion") in SUPPORTED_VERSIONS:
                version = got["cniVersion"]
        except (UnicodeDecodeError, ValueError):
            pass
        result = run(command, env, raw)
    except CniFailure as exc:
        error = {"cniVersion": version, "code": exc.code, "msg": exc.msg}
        if exc.details:
            error["details"] = exc.details
        sys.stdout.write(dumps(error) + "\n")
        return 1
    if result is not None:
        sys.stdout.write(dumps(result) + "\n")
    return 0
