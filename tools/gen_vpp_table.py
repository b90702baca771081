#!/usr/bin/env python3
"""Regenerate ``vppagent/vpp/table_data.py`` from VPP ``.api.json`` schemas.

The agent declares exactly the VPP messages it uses (``WANTED`` below) and
commits their definitions, so installing or running it never needs the
schemas.  This dev tool resolves each wanted message, its reply, its
``details``/stream messages and events, and every type they reference
(transitively), then writes the table as plain Python literals.

    tools/gen_vpp_table.py /work/shared/vpp-api [more dirs...] [-o FILE]

A wanted name absent from the schemas is reported and skipped (exit status 0,
so a schema set without an optional plugin still generates); ``--strict``
makes it an error.
"""

from __future__ import annotations

import argparse
import json
import os
import pprint
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable

# The request/event messages the agent uses.  Replies, details and events
# follow automatically.
WANTED: tuple[str, ...] = (
    # vpe / memclnt
    "control_ping", "show_version", "show_vpe_system_time",
    # interfaces
    "want_interface_events", "sw_interface_dump", "sw_interface_set_flags",
    "sw_interface_add_del_address", "sw_interface_address_replace_begin",
    "sw_interface_address_replace_end", "sw_interface_set_unnumbered",
    "sw_interface_set_table", "sw_interface_set_mtu", "sw_interface_set_rx_mode",
    "sw_interface_set_rx_placement", "sw_interface_rx_placement_dump",
    "sw_interface_tag_add_del", "sw_interface_set_mac_address",
    "create_loopback_instance", "delete_loopback",
    # ip
    "ip_address_dump", "ip_table_add_del", "ip_table_dump", "ip_route_add_del",
    "ip_route_v2_dump", "ip_neighbor_add_del", "ip_neighbor_dump",
    "ip_unnumbered_dump", "sw_interface_ip6_enable_disable",
    "proxy_arp_intfc_enable_disable", "proxy_arp_intfc_dump",
    "sw_interface_ip6nd_ra_config", "ip_punt_redirect",
    # uRPF lives in the urpf plugin (urpf_update_v2), absent from the schemas
    "urpf_update_v2", "ip_source_check_interface_add_del",
    # pod interfaces
    "tap_create_v3", "tap_delete_v2", "sw_interface_tap_v2_dump",
    "af_packet_create_v3", "af_packet_delete", "af_packet_dump",
    "af_packet_set_l4_cksum_offload",
    "memif_socket_filename_add_del_v2", "memif_create_v2", "memif_delete",
    "memif_dump", "memif_socket_filename_dump",
    # policy
    "acl_add_replace", "acl_del", "acl_dump", "acl_interface_set_acl_list",
    "acl_interface_list_dump",
    "npol_get_version", "npol_ipset_create", "npol_ipset_add_del_members",
    "npol_ipset_delete", "npol_rule_create", "npol_rule_update",
    "npol_rule_delete", "npol_policy_create", "npol_policy_update",
    "npol_policy_delete", "npol_configure_policies",
    # services
    "cnat_translation_update", "cnat_translation_del", "cnat_translation_dump",
    "cnat_session_dump", "cnat_session_purge", "cnat_set_snat_addresses_v2",
    "cnat_get_snat_addresses", "cnat_snat_policy_add_del_exclude_pfx",
    "cnat_set_snat_policy", "cnat_snat_policy_add_del_if",
    "feature_cnat_enable_disable",
    "nat44_ed_plugin_enable_disable", "nat44_interface_add_del_feature",
    "nat44_interface_dump", "nat44_add_del_address_range", "nat44_address_dump",
    "nat44_add_del_static_mapping_v2", "nat44_static_mapping_dump",
    # uplinks, SR-IOV, tunnels
    "af_xdp_create_v3", "dev_attach", "dev_create_port_if", "dev_remove_port_if",
    "dev_detach", "vxlan_add_del_tunnel_v3", "vxlan_tunnel_v2_dump",
    "sw_interface_set_vxlan_bypass",
    # node routes over VXLAN: decap into ethernet-input, the shared VTEP MAC
    "add_node_next", "sw_interface_add_del_mac_address",
)

HEADER_FIELDS = ("_vl_msg_id", "client_index", "context")


@dataclass
class Schemas:
    """Everything found in a set of .api.json files, keyed by name."""

    messages: dict[str, tuple[str, list]] = field(default_factory=dict)   # name -> (module, def)
    services: dict[str, dict] = field(default_factory=dict)
    types: dict[str, tuple[str, list[str], Any]] = field(default_factory=dict)  # vl_api_X_t -> (kind, modules, def)
    versions: dict[str, str] = field(default_factory=dict)                 # module -> vl_api_version
    imports: dict[str, set[str]] = field(default_factory=dict)             # module -> imported modules
    files: list[str] = field(default_factory=list)


def _clean(items: Iterable[Any]) -> list:
    """Drop comments: they are not part of the wire format or the CRC."""
    out: list = []
    for item in items:
        if isinstance(item, dict):
            item = {k: v for k, v in item.items() if k != "comment"}
            if item:
                out.append(item)
        else:
            out.append(item)
    return out


def load(dirs: Iterable[str]) -> Schemas:
    """Read every *.api.json under ``dirs``; the same type defined by several
    modules (imports are inlined by the generator) must agree."""
    s = Schemas()
    for top in dirs:
        for root, _, names in sorted(os.walk(top)):
            for fname in sorted(names):
                if fname.endswith(".api.json"):
                    _load_file(s, os.path.join(root, fname))
    return s


def _add_type(s: Schemas, name: str, kind: str, module: str, data: Any, path: str) -> None:
    """Imported types are inlined into every importing module's JSON, so the
    same definition appears many times; remember every module that has it."""
    old = s.types.get(name)
    if old is None:
        s.types[name] = (kind, [module], data)
    elif (old[0], old[2]) != (kind, data):
        raise SystemExit(f"{path}: {name} conflicts with its definition in module {old[1][0]}")
    else:
        old[1].append(module)


def _home_module(s: Schemas, modules: list[str]) -> str:
    """Where a shared type is really declared: among the modules carrying it,
    the one that does not import it from another of them."""
    native = [m for m in modules if not (s.imports.get(m, set()) & set(modules))]
    return (native or modules)[0]


def _load_file(s: Schemas, path: str) -> None:
    with open(path) as f:
        api = json.load(f)
    module = api.get("module") or os.path.basename(path).split(".")[0]
    s.files.append(path)
    s.versions[module] = api.get("vl_api_version", "")
    s.imports[module] = {os.path.basename(i).split(".")[0] for i in api.get("imports", [])}
    for kind, section in (("enum", "enums"), ("enumflag", "enumflags"),
                          ("union", "unions"), ("type", "types")):
        for t in api.get(section, []):
            _add_type(s, f"vl_api_{t[0]}_t", kind, module, _clean(t[1:]), path)
    for name, alias in api.get("aliases", {}).items():
        _add_type(s, f"vl_api_{name}_t", "alias", module, dict(alias), path)
    for m in api.get("messages", []):
        prev = s.messages.get(m[0])
        if prev is None or prev[0] == module:
            s.messages[m[0]] = (module, _clean(m[1:]))
    s.services.update(api.get("services", {}))


def _field(f: list) -> tuple:
    """JSON field -> (type, name, length, length_field, options)."""
    opts = next((x for x in f if isinstance(x, dict)), None)
    plain = [x for x in f if not isinstance(x, dict)]
    ftype, fname = plain[0], plain[1]
    length = plain[2] if len(plain) > 2 else None
    length_field = plain[3] if len(plain) > 3 else None
    return (ftype, fname, length, length_field, opts or None)


def _referenced(ftype: str) -> str | None:
    return ftype if ftype.startswith("vl_api_") else None


def resolve(s: Schemas, wanted: Iterable[str]) -> tuple[dict, dict, list[str]]:
    """Return (messages, types, missing) for the wanted request names."""
    messages: dict[str, dict] = {}
    types: dict[str, dict] = {}
    missing: list[str] = []

    def add_type(tname: str) -> None:
        if tname in types:
            return
        if tname not in s.types:
            raise SystemExit(f"type {tname} is referenced but defined nowhere")
        kind, modules, data = s.types[tname]
        entry: dict[str, Any] = {"kind": kind, "module": _home_module(s, modules)}
        if kind in ("enum", "enumflag"):
            entry["size"] = next((x["enumtype"] for x in data if isinstance(x, dict)), "u32")
            entry["values"] = [(n, v) for n, v in (x for x in data if not isinstance(x, dict))]
        elif kind == "alias":
            entry["type"] = data["type"]
            entry["length"] = data.get("length")
        else:
            entry["fields"] = [_field(f) for f in data if not isinstance(f, dict)]
        types[tname] = entry
        for dep in _type_deps(entry):
            add_type(dep)

    def add_message(name: str, reply: str | None, stream_msg: str | None,
                    events: list[str] | None) -> None:
        module, data = s.messages[name]
        crc = next(x["crc"] for x in data if isinstance(x, dict) and "crc" in x)
        options = next((x.get("options") for x in data if isinstance(x, dict) and "crc" in x), {}) or {}
        fields = [_field(f) for f in data if not isinstance(f, dict)]
        messages[name] = {
            "crc": crc, "module": module, "fields": fields, "reply": reply,
            "stream": stream_msg, "events": events or [], "options": options,
        }
        for f in fields:
            ref = _referenced(f[0])
            if ref:
                add_type(ref)

    for name in wanted:
        if name not in s.messages or name not in s.services:
            missing.append(name)
            continue
        svc = s.services[name]
        reply = svc["reply"]
        # Old-style dumps: "reply" is the details message, ended by a ping.
        # New-style (stream_msg): a real _reply ends a stream of details.
        stream = svc.get("stream_msg") or (reply if svc.get("stream") else None)
        events = list(svc.get("events", []))
        add_message(name, reply, stream, events)
        for other in {reply, stream, *events} - {None}:
            if other not in messages:
                add_message(other, None, None, None)
    # Old-style dumps end with control_ping_reply.
    if any(m["stream"] == m["reply"] for m in messages.values()) and "control_ping" not in messages:
        add_message("control_ping", "control_ping_reply", None, None)
        add_message("control_ping_reply", None, None, None)
    return messages, types, missing


def _type_deps(entry: dict) -> list[str]:
    if entry["kind"] == "alias":
        return [entry["type"]] if _referenced(entry["type"]) else []
    return [f[0] for f in entry.get("fields", []) if _referenced(f[0])]


def render(messages: dict, types: dict, versions: dict, missing: list[str], sources: list[str]) -> str:
    used_modules = sorted({m["module"] for m in messages.values()} | {t["module"] for t in types.values()})
    pp = pprint.PrettyPrinter(indent=1, width=100, sort_dicts=True)
    parts = [
        '"""The VPP messages vppagent uses: committed data, generated; do not edit.\n\n'
        "Regenerate with ``tools/gen_vpp_table.py <dir with .api.json files>``.\n"
        "Fields are ``(type, name, length, length_field, options)``: length None is a\n"
        "scalar, 0 a variable-length array (sized by length_field when set), N a\n"
        'fixed array.\n"""\n',
        "# Generated from: " + ", ".join(sorted(sources)),
        "# Wanted but absent from those schemas: " + (", ".join(missing) or "none"),
        "",
        "from __future__ import annotations",
        "",
        "from typing import Any",
        "",
        "MODULE_VERSIONS: dict[str, str] = " + pp.pformat({m: versions.get(m, "") for m in used_modules}),
        "",
        "ABSENT: tuple[str, ...] = " + pp.pformat(tuple(missing)),
        "",
        "MESSAGES: dict[str, dict[str, Any]] = " + pp.pformat(messages),
        "",
        "TYPES: dict[str, dict[str, Any]] = " + pp.pformat(types),
        "",
    ]
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    default_out = os.path.join(here, "..", "vppagent", "vpp", "table_data.py")
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", help="directories holding *.api.json (searched recursively)")
    ap.add_argument("-o", "--output", default=default_out)
    ap.add_argument("--strict", action="store_true", help="fail when a wanted message is absent")
    args = ap.parse_args(argv)

    s = load(args.dirs)
    if not s.files:
        print(f"no .api.json files under {args.dirs}", file=sys.stderr)
        return 2
    messages, types, missing = resolve(s, WANTED)
    sources = [os.path.basename(os.path.normpath(d)) for d in args.dirs]
    text = render(messages, types, s.versions, missing, sources)
    with open(args.output, "w") as f:
        f.write(text)
    print(f"wrote {args.output}: {len(messages)} messages, {len(types)} types")
    if missing:
        print("absent from the schemas: " + ", ".join(missing), file=sys.stderr)
        if args.strict:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
