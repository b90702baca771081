"""The declared VPP message table: consistent, current, and true to VPP.

The table is committed data; these tests keep it honest against the schemas
it was generated from (when ``/work/shared/vpp-api`` is present) and, under
the ``vpp`` marker, against a running VPP's own message table.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from vppagent.vpp import table_data
from vppagent.vpp.messages import ABSENT, BASE_TYPES, MESSAGES, TYPES, check_args, papi_msgdef, requests

ROOT = Path(__file__).resolve().parent.parent
SCHEMAS = Path(os.environ.get("VPP_API_SCHEMAS", "/work/shared/vpp-api"))

# Plugins the declared table uses (and ping, harmless); everything else off.
TEST_PLUGINS = ("acl", "af_packet", "cnat", "memif", "nat", "npol", "tap", "vxlan")


def _gen_tool():
    spec = importlib.util.spec_from_file_location("gen_vpp_table", ROOT / "tools" / "gen_vpp_table.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gen_vpp_table", mod)      # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


# ------------------------------------------------------------ consistency

def test_every_referenced_type_is_declared() -> None:
    def check(owner: str, fields: tuple) -> None:
        names = [f.name for f in fields]
        for i, f in enumerate(fields):
            assert f.type in BASE_TYPES or f.type in TYPES, f"{owner}.{f.name}: {f.type} undeclared"
            if f.length_field:
                assert f.length_field in names[:i], f"{owner}.{f.name}: length field {f.length_field} must precede"

    for name, m in MESSAGES.items():
        assert re.fullmatch(r"0x[0-9a-f]{8}", m.crc), name
        check(name, m.fields)
    for name, t in TYPES.items():
        check(name, t.fields)
        if t.kind == "alias":
            assert t.alias_of in BASE_TYPES or t.alias_of in TYPES, name
        if t.kind in ("enum", "enumflag"):
            assert t.values and t.size in ("u8", "u16", "u32"), name


def test_every_request_brings_its_answers() -> None:
    for m in requests():
        assert m.reply in MESSAGES, m.name
        if m.stream:
            assert m.stream in MESSAGES, m.name
            if m.ends_with_ping:
                assert "control_ping_reply" in MESSAGES
        for ev in m.events:
            assert ev in MESSAGES, m.name
        assert not {"i", "msg"} & {f.name for f in m.args}   # never shadow call parameters


def test_table_lists_the_messages_the_agent_needs() -> None:
    wanted = {"tap_create_v3", "af_packet_create_v3", "memif_create_v2", "sw_interface_set_unnumbered",
              "ip_route_add_del", "ip_route_v2_dump", "acl_add_replace", "npol_configure_policies",
              "cnat_translation_update", "cnat_set_snat_addresses_v2", "nat44_ed_plugin_enable_disable",
              "dev_attach", "dev_create_port_if", "vxlan_add_del_tunnel_v3", "control_ping"}
    assert wanted <= {m.name for m in requests()}
    npol = {m.name for m in requests() if m.module == "npol"}
    assert len(npol) == 11
    # Absent from FDio/vpp 26.10's schemas: uRPF is the urpf plugin, af_xdp was not built.
    assert set(ABSENT) == {"urpf_update_v2", "ip_source_check_interface_add_del", "af_xdp_create_v3"}


def test_messages_record_their_origin() -> None:
    assert MESSAGES["npol_rule_create"].plugin == "npol"
    assert MESSAGES["tap_create_v3"].plugin == "tap"
    assert MESSAGES["nat44_ed_plugin_enable_disable"].plugin == "nat"
    assert MESSAGES["sw_interface_dump"].plugin is None
    assert MESSAGES["sw_interface_dump"].ends_with_ping
    assert MESSAGES["control_ping_reply"].field("vpe_pid").type == "u32"
    assert [f.as_tuple() for f in MESSAGES["sw_interface_set_mtu"].args] == [
        ("vl_api_interface_index_t", "sw_if_index", None), ("u32", "mtu", 4)]


def test_required_fields_guard_silent_zero_fill() -> None:
    assert {"is_add", "sw_if_index", "prefix"} <= MESSAGES["sw_interface_add_del_address"].required
    assert "flags" in MESSAGES["sw_interface_set_flags"].required
    assert not MESSAGES["tap_create_v3"].required      # defaults and *_set-guarded fields


def test_check_args_fills_what_vpp_papi_cannot_leave_out() -> None:
    out = check_args("ip_route_add_del", {"is_add": True, "is_multipath": False, "route": {
        "table_id": 0, "prefix": "10.0.0.0/24", "paths": [{"sw_if_index": 1}]}})
    assert out["route"]["n_paths"] == 1
    assert len(out["route"]["paths"][0]["label_stack"]) == 16


# ---------------------------------------------------- against the schemas

needs_schemas = pytest.mark.skipif(not SCHEMAS.is_dir(), reason=f"{SCHEMAS} not present")


@needs_schemas
def test_table_matches_the_schemas() -> None:
    gen = _gen_tool()
    s = gen.load([str(SCHEMAS)])
    for name, m in MESSAGES.items():
        assert name in s.messages, f"{name} not in the schemas"
        module, data = s.messages[name]
        assert module == m.module, name
        crc = next(x["crc"] for x in data if isinstance(x, dict) and "crc" in x)
        assert crc == m.crc, f"{name}: table {m.crc}, schema {crc}"
        fields = [gen._field(f) for f in data if not isinstance(f, dict)]
        assert [f[:4] for f in fields] == [(f.type, f.name, f.length, f.length_field) for f in m.fields], name
    for name, t in TYPES.items():
        kind, _, data = s.types[name]
        assert kind == t.kind, name
        if kind in ("type", "union"):
            fields = [gen._field(f)[:4] for f in data if not isinstance(f, dict)]
            assert fields == [(f.type, f.name, f.length, f.length_field) for f in t.fields], name
    for name in ABSENT:
        assert name not in s.messages


@needs_schemas
def test_committed_table_is_what_the_generator_writes(tmp_path: Path) -> None:
    out = tmp_path / "table_data.py"
    gen = _gen_tool()
    assert gen.main([str(SCHEMAS), "-o", str(out)]) == 0
    assert out.read_text() == Path(table_data.__file__).read_text(), \
        "table_data.py is stale: run tools/gen_vpp_table.py /work/shared/vpp-api"


# ----------------------------------------------------- against a real VPP

def _plugin_path(vpp_bin: str) -> str | None:
    if os.environ.get("VPP_PLUGIN_PATH"):
        return os.environ["VPP_PLUGIN_PATH"]
    prefix = Path(vpp_bin).resolve().parent.parent
    for cand in sorted(prefix.glob("lib*/**/vpp_plugins")):
        return str(cand)
    return None


class VppProcess:
    """``$VPP_BIN`` run with a minimal 4k-page startup.conf in a temp dir."""

    def __init__(self, plugins: tuple[str, ...] = TEST_PLUGINS) -> None:
        vpp_bin = os.environ["VPP_BIN"]
        self.dir = tempfile.mkdtemp(prefix="vppagent-vpp-")
        self.socket = f"{self.dir}/api.sock"
        plugin_path = _plugin_path(vpp_bin)
        plugin_lines = "".join(f" plugin {p}_plugin.so {{ enable }}" for p in plugins)
        self.conf = Path(self.dir) / "startup.conf"
        self.conf.write_text(
            f"unix {{ nodaemon nosyslog cli-listen {self.dir}/cli.sock runtime-dir {self.dir} }}\n"
            f"api-segment {{ prefix vppagent{os.getpid()} }}\n"
            f"socksvr {{ socket-name {self.socket} }}\n"
            f"statseg {{ socket-name {self.dir}/stats.sock page-size 4k }}\n"
            f"memory {{ main-heap-size 256M main-heap-page-size 4k }}\n"
            f"buffers {{ buffers-per-numa 8192 page-size 4k }}\n"
            f"plugins {{ {'path ' + plugin_path if plugin_path else ''} plugin default {{ disable }}"
            f"{plugin_lines} }}\n")
        self.bin = vpp_bin
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        log = open(Path(self.dir) / "vpp.log", "a")
        self.proc = subprocess.Popen([self.bin, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        deadline = time.monotonic() + 20
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"VPP did not start: {(Path(self.dir) / 'vpp.log').read_text()[-2000:]}")
            time.sleep(0.05)
        time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def running_vpp(plugins: tuple[str, ...] = TEST_PLUGINS) -> Iterator[VppProcess]:
    """A started VPP; always killed and cleaned up afterwards."""
    vpp = VppProcess(plugins)
    try:
        vpp.start()
        yield vpp
    finally:
        vpp.stop()
        shutil.rmtree(vpp.dir, ignore_errors=True)


needs_vpp = pytest.mark.skipif(not os.environ.get("VPP_BIN"), reason="VPP_BIN not set")


@pytest.mark.vpp
@needs_vpp
def test_table_matches_a_real_vpp() -> None:
    from vpp_papi import VPPApiClient

    from vppagent.vpp.connection import VppConnection

    with running_vpp() as vpp:
        sock = vpp.socket
        client = VPPApiClient(server_address=sock, bootstrapapi=True)
        client.connect("vppagent-table-test")
        try:
            table = client.dump_message_table()
            for name, m in MESSAGES.items():
                assert m.name_crc in table, f"{name} {m.crc} not in VPP's message table"
                theirs = [tuple(f[:4]) if len(f) > 3 and not isinstance(f[3], dict) else tuple(
                    x for x in f[:3] if not isinstance(x, dict))
                    for f in client.messages[name].msgdef if isinstance(f, list)]
                ours = [tuple(x for x in f if not isinstance(x, dict)) for f in papi_msgdef(name)
                        if isinstance(f, list)]
                assert theirs == ours, name
        finally:
            client.disconnect()
        conn = VppConnection(sock, optional=())     # nothing optional: everything must be there
        conn.connect()
        try:
            assert conn.version and conn.vpe_pid
            assert not conn.unavailable
        finally:
            conn.disconnect()
