"""Checks a rendered startup.conf against the options VPP's parsers accept.

VPP reports an unknown startup option only in its log and then refuses to
start (or, inside some stanzas, silently ignores it).  This table was written
from the option parsers of VPP 26.10 (vlib/unix/main.c, vlib/threads.c,
vlib/buffer.c, vlib/stats/init.c, vpp/vnet/main.c, vpp/api/api.c,
vlibmemory/socket_api.c, vlib/unix/plugin.c, plugins/dpdk/device/init.c,
vnet/dev/config.c, plugins/cnat/cnat_types.c) so that templates, including a user's own, are checked
before VPP ever sees them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping, Union

_INT = r"\d+"
_SIZE = r"\d+[kKmMgG]?"
_PAGE = r"(default|default-hugepage|\d+[kKmMgG]?)"
_CORES = r"\d+(-\d+)?(,\d+(-\d+)?)*"


@dataclass(frozen=True)
class Block:
    """A key taking one argument and an optional (or required) ``{ ... }`` body."""

    body: Mapping[str, "Spec"]
    arg: str = r"\S+"
    required: bool = False


Spec = Union[None, str, tuple[str, ...], Block]     # None: flag; str: one value (regex); tuple: several

_DPDK_DEV = {
    "num-rx-queues": _INT, "num-tx-queues": _INT, "num-rx-desc": _INT, "num-tx-desc": _INT,
    "name": r"\S+", "tag": r"\S+", "workers": _CORES, "no-rx-interrupts": None, "tso": "on|off",
    "devargs": r"\S+", "rss-queues": _CORES, "max-lro-pkt-size": _INT,
}
_DEV_PORT = {
    "name": r"\S+", "num-rx-queues": _INT, "num-tx-queues": _INT, "rx-queue-size": _INT,
    "tx-queue-size": _INT, "flags": r"\S+", "args": r"\S+",
}

SECTIONS: Mapping[str, Mapping[str, Spec]] = {
    "unix": {
        "nodaemon": None, "interactive": None, "nosyslog": None, "nocolor": None, "nobanner": None,
        "cli-prompt": r"\S+", "cli-listen": r"\S+", "use-current-dir": None, "runtime-dir": r"/\S*",
        "cli-line-mode": None, "cli-no-banner": None, "cli-no-pager": None, "poll-sleep-usec": _INT,
        "cli-pager-buffer-limit": _INT, "cli-history-limit": _INT, "coredump-size": r"\S+",
        "full-coredump": None, "startup-config": r"\S+", "exec": r"\S+", "log": r"\S+",
        "gid": r"\S+", "pidfile": r"\S+",
    },
    "api-trace": {"on": None, "enable": None, "nitems": _INT, "save-api-table": r"\S+"},
    "api-segment": {"prefix": r"[A-Za-z0-9_.-]+", "uid": r"\S+", "gid": r"\S+", "baseva": r"\S+",
                    "global-size": _SIZE, "global-pvt-heap-size": _SIZE, "api-pvt-heap-size": _SIZE,
                    "api-size": _SIZE},
    "socksvr": {"socket-name": r"\S+", "default": None},
    "statseg": {"socket-name": r"\S+", "default": None, "size": _SIZE, "page-size": _PAGE,
                "per-node-counters": "on|off", "update-interval": r"[\d.]+"},
    "memory": {"main-heap-size": _SIZE, "main-heap-page-size": _PAGE, "default-hugepage-size": _SIZE},
    "buffers": {"buffers-per-numa": _INT, "page-size": _PAGE, "default": ("data-size", _INT),
                "layout": "natural|packed"},
    "cpu": {"main-core": _INT, "corelist-workers": _CORES, "coremask-workers": r"[0-9a-fA-Fx]+",
            "workers": _INT, "skip-cores": _INT, "relative": None, "use-pthreads": None,
            "thread-prefix": r"\S+", "numa-heap-size": _SIZE, "scheduler-policy": r"other|batch|idle|fifo|rr",
            "scheduler-priority": _INT},
    "plugins": {"path": r"\S+", "add-path": r"\S+", "name-filter": r"\S+", "vat-path": r"\S+",
                "vat-name-filter": r"\S+",
                "plugin": Block({"enable": None, "disable": None, "skip-version-check": None},
                                arg=r"(default|[A-Za-z0-9_]+\.so)", required=True)},
    "dpdk": {
        "dev": Block(_DPDK_DEV, arg=r"(default|[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7])"),
        "uio-driver": r"auto|vfio-pci|igb_uio|uio_pci_generic", "uio-bind-force": None,
        "no-hugetlb": None, "iova-mode": "pa|va", "socket-mem": r"[\d,]+", "no-multi-seg": None,
        "no-tx-checksum-offload": None, "enable-tcp-udp-checksum": None,
        "enable-outer-checksum-offload": None, "telemetry": None, "decimal-interface-names": None,
        "enable-mbuf-fast-free": None, "enable-lro": None, "max-simd-bitwidth": "256|512",
        "link-state-poll-interval": r"[\d.]+", "stats-poll-interval": r"[\d.]+", "no-pci": None,
        "blacklist": r"\S+", "no-vmbus": None, "log-level": r"\S+", "huge-dir": r"\S+",
        "file-prefix": r"\S+", "proc-type": r"\S+", "vdev": r"\S+", "block": r"\S+",
        "base-virtaddr": r"\S+", "no-shconf": None, "no-hpet": None, "no-huge": None,
    },
    "cnat": {
        "session-max": _INT, "session-cleanup-timeout": r"\d+(\.\d+)?", "session-max-age": _INT,
        "tcp-max-age": _INT, "session-max-port-retries": _INT, "session-max-per-vrf": _INT,
        "session-log2-pool-size": _INT, "maglev-len": _INT, "scanner": "on|off",
        "translation-db-buckets": _INT, "translation-db-memory": _SIZE, "client-db-buckets": _INT,
        "client-db-memory": _SIZE, "snat-db-buckets": _INT, "snat-db-memory": _SIZE, "snat-if-map-len": _INT,
    },
    "devices": {
        "dev": Block({"driver": r"[a-z0-9_]+", "flags": r"\S+", "args": r"\S+",
                      "port": Block(_DEV_PORT, arg=_INT, required=True)},
                     arg=r"[a-z]+/\S+"),
        "driver": Block({"args": r"\S+"}, arg=r"[a-z0-9_]+", required=True),
    },
}


class StartupConfError(ValueError):
    """An option VPP would not accept, with the line it is on."""

    def __init__(self, line: int, message: str) -> None:
        self.line = line
        super().__init__(f"startup.conf line {line}: {message}")


_TOKEN = re.compile(r"[{}]|[^\s{}]+")


def _tokens(text: str) -> list[tuple[str, int]]:
    out = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0]
        out.extend((t, n) for t in _TOKEN.findall(line))
    return out


def check_startup_conf(text: str, sections: Mapping[str, Mapping[str, Spec]] = SECTIONS) -> None:
    """Raise ``StartupConfError`` for an unknown section, option or value,
    or unbalanced braces."""
    toks = _tokens(text)
    pos = 0
    seen: set[str] = set()
    while pos < len(toks):
        name, line = toks[pos]
        if name not in sections:
            raise StartupConfError(line, f"unknown section {name!r}")
        if name in seen:
            raise StartupConfError(line, f"section {name!r} appears twice (VPP keeps only one)")
        seen.add(name)
        pos = _expect(toks, pos + 1, "{", f"after section {name!r}")
        pos = _body(toks, pos, sections[name], name)


def _expect(toks: list[tuple[str, int]], pos: int, want: str, where: str) -> int:
    if pos >= len(toks):
        raise StartupConfError(toks[-1][1] if toks else 0, f"expected {want!r} {where}, got end of file")
    tok, line = toks[pos]
    if tok != want:
        raise StartupConfError(line, f"expected {want!r} {where}, got {tok!r}")
    return pos + 1


def _value(toks: list[tuple[str, int]], pos: int, pattern: str, key: str, where: str) -> int:
    if pos >= len(toks) or toks[pos][0] in "{}":
        line = toks[min(pos, len(toks) - 1)][1]
        raise StartupConfError(line, f"{where} {key!r} needs a value")
    tok, line = toks[pos]
    if not re.fullmatch(pattern, tok):
        raise StartupConfError(line, f"{where} {key!r}: invalid value {tok!r}")
    return pos + 1


def _body(toks: list[tuple[str, int]], pos: int, spec: Mapping[str, Spec], where: str) -> int:
    """Parse items up to the matching ``}``; return the position after it."""
    while True:
        if pos >= len(toks):
            raise StartupConfError(toks[-1][1], f"unclosed '{{' in {where}")
        tok, line = toks[pos]
        if tok == "}":
            return pos + 1
        if tok not in spec:
            raise StartupConfError(line, f"unknown option {tok!r} in {where} (known: {', '.join(sorted(spec))})")
        kind = spec[tok]
        pos += 1
        if kind is None:
            continue
        if isinstance(kind, str):
            pos = _value(toks, pos, kind, tok, where)
        elif isinstance(kind, tuple):
            for part in kind:
                pos = _value(toks, pos, part, tok, where)
        else:
            pos = _value(toks, pos, kind.arg, tok, where)
            has_body = pos < len(toks) and toks[pos][0] == "{"
            if kind.required and not has_body:
                raise StartupConfError(line, f"{where} {tok!r} needs a {{ ... }} block")
            if has_body:
                pos = _body(toks, pos + 1, kind.body, f"{where} {tok}")
