"""startup.conf rendering and the ``vpp:`` config: every template renders,
validation names the field, and (``vpp`` marker) a rendered no-hugepages
config starts the real VPP."""

from __future__ import annotations

import io
import os
import time
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest
import yaml

from vppagent.cli import main
from vppagent.model.errors import ValidationError
from vppagent.vpp_node.conf_syntax import StartupConfError, check_startup_conf
from vppagent.vpp_node.config import HostFacts, load_node_config, parse_node_config
from vppagent.vpp_node.startup import (
    TEMPLATE_DIR, render_startup_cli, render_startup_conf, rendered_with_cli_comment, template_for,
)

EXAMPLES = sorted((TEMPLATE_DIR / "examples").glob("*.yaml"))
BIG = HostFacts(cpu_count=16, mem_available=64 << 30, hugepages_free={2 << 20: 8192, 1 << 30: 16})
SMALL = HostFacts(cpu_count=2, mem_available=2 << 30)
needs_vpp = pytest.mark.skipif(not os.environ.get("VPP_BIN"), reason="VPP_BIN not set")


def cfg(data: dict | None = None, host: HostFacts = BIG, **kw):
    return parse_node_config({**(data or {}), **kw}, host=host)


def error(data: dict, host: HostFacts = BIG) -> ValidationError:
    with pytest.raises(ValidationError) as e:
        parse_node_config(data, host=host)
    return e.value


# ------------------------------------------------------------------ templates

@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_renders_and_parses_as_vpp_would(example: Path) -> None:
    node = parse_node_config(yaml.safe_load(example.read_text())["vpp"], host=BIG)
    vf_pcis = {i: f"0000:3b:02.{i}" for i in range(8)}
    text = render_startup_conf(node, vf_pcis=vf_pcis)
    check_startup_conf(text)                       # render already checks; be explicit
    assert "${" not in text
    assert f"socket-name {node.api_socket}" in text
    assert "plugin default { disable }" in text
    assert all(f"plugin {p}_plugin.so {{ enable }}" in text for p in node.plugins)
    cli = render_startup_cli(node)
    assert cli.rstrip().endswith(f"ip6 table add {node.host_interface.vrf}")


def test_every_template_is_used_by_an_example() -> None:
    used = {template_for(parse_node_config(yaml.safe_load(p.read_text())["vpp"], host=BIG)).name
            for p in EXAMPLES}
    assert used == {p.name for p in TEMPLATE_DIR.glob("*.conf")}


def test_template_choice_follows_driver_and_page_size() -> None:
    def name(**uplink) -> str:
        page = uplink.pop("pageSize", "4k")
        return template_for(cfg(pageSize=page, uplink={"interface": "eth0", "pci": "0000:01:00.0", **uplink})).name
    assert name() == "af_packet-nohuge.conf"
    assert name(pageSize="2M") == "af_packet.conf"
    assert name(driver="dpdk") == "dpdk-nohuge.conf"
    assert name(driver="dpdk", pageSize="1G") == "dpdk.conf"
    assert name(driver="af_xdp") == "af_xdp.conf"
    assert name(driver="rdma") == "rdma.conf"
    assert name(driver="dev") == "dev.conf"
    assert template_for(cfg(template="dpdk", uplink={"interface": "e", "driver": "dpdk"})).name == "dpdk.conf"


def test_no_hugepages_render_uses_4k_everywhere() -> None:
    text = render_startup_conf(cfg(pageSize="4k", heapSize="512M", buffers=9000))
    assert "main-heap-page-size 4k" in text and "page-size 4k" in text
    assert "main-heap-size 512M" in text and "buffers-per-numa 9000" in text
    assert "page-size 2M" not in text


def test_hugepage_render_and_workers() -> None:
    text = render_startup_conf(cfg(pageSize="2M", mainCore=0, workers="1-3,6"))
    assert "main-heap-page-size 2M" in text and "page-size 2M" in text
    assert "corelist-workers 1-3,6" in text and "main-core 0" in text
    assert "workers 2" in render_startup_conf(cfg(workers=2))
    assert "workers" not in render_startup_conf(cfg())


def test_dpdk_stanzas() -> None:
    node = cfg(pageSize="2M", uplink={"interface": "ens2", "driver": "dpdk", "pci": "0000:3b:00.0",
                                      "rxQueues": 2, "rxRingSize": 2048})
    text = render_startup_conf(node)
    assert "dev 0000:3b:00.0 { name ens2 }" in text
    assert "num-rx-queues 2" in text and "num-rx-desc 2048" in text and "uio-driver vfio-pci" in text
    assert "plugin dpdk_plugin.so { enable }" in text
    nohuge = render_startup_conf(cfg(uplink={"interface": "ens2", "driver": "dpdk", "pci": "0000:3b:00.0"}))
    assert "no-hugetlb" in nohuge and "iova-mode va" in nohuge


def test_dpdk_pci_is_read_from_sysfs_when_not_given() -> None:
    node = cfg(uplink={"interface": "ens2", "driver": "dpdk"})
    text = render_startup_conf(node, pci_of=lambda name: {"ens2": "0000:5e:00.1"}[name])
    assert "dev 0000:5e:00.1 { name ens2 }" in text


def test_dev_stanza_and_exec_created_uplinks() -> None:
    text = render_startup_conf(cfg(uplink={"interface": "vf0", "driver": "dev", "pci": "0000:3b:02.0",
                                           "txQueues": 2}))
    assert "dev pci/0000:3b:02.0 {" in text and "driver iavf" in text and "port 0 {" in text
    assert "name vf0" in text and "num-tx-queues 2" in text
    xdp = render_startup_cli(cfg(uplink={"interface": "eth1", "driver": "af_xdp", "rxQueues": 2}))
    assert "create interface af_xdp host-if eth1 name eth1 num-rx-queues 2" in xdp
    assert "plugin af_xdp_plugin.so" in render_startup_conf(cfg(uplink={"interface": "eth1", "driver": "af_xdp"}))
    rdma = render_startup_cli(cfg(uplink={"interface": "eth1", "driver": "rdma"}))
    assert "create interface rdma host-if eth1 name eth1" in rdma


def test_sriov_vfs_for_dpdk_need_their_pci_addresses() -> None:
    node = cfg(pageSize="2M", uplink={"interface": "e0", "driver": "dpdk", "pci": "0000:01:00.0"},
               sriov={"pf": "e1", "numVfs": 2, "vfs": [{"index": 1, "attach": "dpdk"}]})
    assert "dev 0000:01:10.1 { name e1v1 }" in render_startup_conf(node, vf_pcis={1: "0000:01:10.1"})
    with pytest.raises(ValidationError) as e:
        render_startup_conf(node)
    assert e.value.path == "vpp.sriov.vfs[0]"


def test_startup_cli_script_holds_host_plumbing() -> None:
    cli = render_startup_cli(cfg(hostInterface={"vrf": 42}))
    for line in ("ip table add 42", "set arp proxy table-id 42 start 0.0.0.0 end 255.255.255.255",
                 "set punt ipv4 udp all", "set punt ipv6 tcp all", "ip6 table add 42"):
        assert line in cli
    node = cfg()
    assert f"exec {node.exec_file}" in render_startup_conf(node)
    assert "exec" not in render_startup_conf(node, exec_script=False)
    combined = rendered_with_cli_comment(node)
    check_startup_conf(combined)                      # the script is only comments there
    assert "## ip table add" in combined


def test_runtime_paths_and_prefix_follow_the_runtime_dir() -> None:
    node = cfg(runtimeDir="/run/vppx")
    assert (node.api_socket, node.stats_socket, node.cli_socket, node.exec_file) == (
        "/run/vppx/api.sock", "/run/vppx/stats.sock", "/run/vppx/cli.sock", "/run/vppx/startup.cli")
    moved = node.with_runtime_dir("/tmp/other")
    assert moved.api_socket == "/tmp/other/api.sock" and moved.api_prefix != node.api_prefix
    assert moved.supervise.state_file == "/tmp/other/uplink-state.json"
    assert cfg(apiSocket="/x/api.sock").api_socket == "/x/api.sock"


def test_custom_template_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("unix {\n  nodaemon\n  cli-listne ${cli_socket}\n}\n")
    with pytest.raises(ValidationError) as e:
        render_startup_conf(cfg(template=str(bad)))
    assert "cli-listne" in str(e.value) and e.value.path == "vpp.template"
    unknown = tmp_path / "unknown.conf"
    unknown.write_text("unix { log ${nope} }\n")
    with pytest.raises(ValidationError, match="nope"):
        render_startup_conf(cfg(template=str(unknown)))
    with pytest.raises(ValidationError, match="no template"):
        render_startup_conf(cfg(template="missing"))


@pytest.mark.parametrize("text, message", [
    ("unix { nodaemon }\nfoo { }", "unknown section 'foo'"),
    ("cpu { main-core x }", "invalid value 'x'"),
    ("cpu { main-core }", "needs a value"),
    ("buffers { page-size 3q }", "invalid value"),
    ("plugins { plugin acl_plugin.so }", "needs a { ... } block"),
    ("dpdk { dev 0000:01:00.0 { bogus 1 } }", "unknown option 'bogus'"),
    ("unix { nodaemon", "unclosed"),
    ("unix { } unix { }", "appears twice"),
])
def test_conf_syntax_rejects(text: str, message: str) -> None:
    with pytest.raises(StartupConfError, match=message.replace("{", r"\{").replace("}", r"\}")
                       .replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        check_startup_conf(text)


def test_conf_syntax_accepts_vpp_examples() -> None:
    check_startup_conf(Path("/opt/vpp/startup-test.conf").read_text() if Path("/opt/vpp/startup-test.conf").exists()
                       else "unix { nodaemon }")
    check_startup_conf("buffers { default data-size 2048 layout packed }\n"
                       "devices { dev pci/0000:01:00.0 { driver iavf port 0 { name e0 } } }\n"
                       "dpdk { dev default { num-rx-queues 2 } no-multi-seg socket-mem 1024,1024 }")


# ----------------------------------------------------------------- validation

@pytest.mark.parametrize("data, field, text", [
    ({"bogus": 1}, "vpp.bogus", "unknown field"),
    ({"uplink": {"interface": "eth0", "rxqueues": 2}}, "vpp.uplink.rxqueues", "unknown field"),
    ({"hostInterface": {"kind": "tun"}}, "vpp.hostInterface.kind", "unknown host interface kind"),
    ({"supervise": {"restartPolicy": "sometimes"}}, "vpp.supervise.restartPolicy", "unknown restart policy"),
    ({"uplink": {"driver": "af_packet"}}, "vpp.uplink.interface", "required"),
    ({"uplink": {"interface": "eth0", "driver": "virtio"}}, "vpp.uplink.driver", "unknown driver"),
    ({"uplink": {"interface": "eth0", "pci": "01:00.0"}}, "vpp.uplink.pci", "invalid PCI address"),
    ({"uplink": {"interface": "eth0", "rxRingSize": 1000}}, "vpp.uplink.rxRingSize", "power of two"),
    ({"uplink": {"interface": "eth0", "rxQueues": 0}}, "vpp.uplink.rxQueues", "outside"),
    ({"workers": "1-"}, "vpp.workers", "malformed"),
    ({"workers": "a"}, "vpp.workers", "malformed"),
    ({"workers": "3-1"}, "vpp.workers", "reversed range"),
    ({"workers": "1,1"}, "vpp.workers", "listed twice"),
    ({"workers": "1-20"}, "vpp.workers", "core 16 is beyond this host's 16 CPUs"),
    ({"workers": 16}, "vpp.workers", "need more than"),
    ({"mainCore": 2, "workers": "1-3"}, "vpp.workers", "main core 2 is also in the worker list"),
    ({"mainCore": 99}, "vpp.mainCore", "beyond"),
    ({"pageSize": "64k"}, "vpp.pageSize", "unsupported page size"),
    ({"heapSize": "12Q"}, "vpp.heapSize", "expected a size"),
    ({"heapSize": "1M"}, "vpp.heapSize", "below the minimum"),
    ({"runtimeDir": "relative"}, "vpp.runtimeDir", "absolute"),
    ({"apiSocket": "/" + "x" * 120}, "vpp.apiSocket", "longer than"),
    ({"plugins": ["acl", "acl"]}, "vpp.plugins[1]", "listed twice"),
    ({"plugins": ["acl", "tap"], "uplink": {"interface": "eth0"}}, "vpp.plugins", "af_packet"),
    ({"plugins": ["af_packet"], "uplink": {"interface": "eth0"}}, "vpp.plugins", "tap plugin"),
    ({"plugins": ["af_packet"], "uplink": {"interface": "e", "driver": "af_xdp"}}, "vpp.plugins", "af_xdp"),
    ({"hostInterface": {"vppMac": "03:00:00:00:00:01"}}, "vpp.hostInterface.vppMac", "unicast"),
])
def test_invalid_configs_name_the_field(data: dict, field: str, text: str) -> None:
    e = error(data)
    assert e.path == field, str(e)
    assert text in e.message, str(e)


def test_buffers_too_few_for_the_rings() -> None:
    e = error({"buffers": 4096, "workers": 2,
               "uplink": {"interface": "eth0", "rxQueues": 2, "rxRingSize": 1024, "txQueues": 2}})
    assert e.path == "vpp.buffers"
    need = 2 * 1024 + 2 * 1024 + 1024 + 1024 + 512 * 3
    assert f"at least {need}" in e.message and "2x1024 rx" in e.message
    assert cfg(buffers=need, workers=2, uplink={"interface": "eth0", "rxQueues": 2, "txQueues": 2}).buffers == need


def test_buffers_beyond_memory_and_hugepages() -> None:
    e = error({"buffers": 1_000_000, "heapSize": "1G"}, host=SMALL)
    assert e.path == "vpp.buffers" and "exceed" in e.message and "available memory" in e.message
    e = error({"pageSize": "2M"}, host=SMALL)
    assert e.path == "vpp.pageSize" and "no free 2M hugepages" in e.message
    e = error({"pageSize": "2M", "buffers": 200_000},
              host=HostFacts(cpu_count=4, mem_available=64 << 30, hugepages_free={2 << 20: 100}))
    assert e.path == "vpp.buffers" and "hugepages; 100 are free" in e.message


def test_cpu_checks_use_the_host() -> None:
    assert error({"workers": "1-2"}, host=SMALL).message.startswith("core 2 is beyond this host's 2 CPUs")
    assert cfg(workers="1", host=SMALL).workers == (1,)
    # rendering for another machine skips host facts, not syntax
    assert parse_node_config({"workers": "1-10"}, check_host=False).workers == tuple(range(1, 11))
    with pytest.raises(ValidationError):
        parse_node_config({"workers": "1-"}, check_host=False)


def test_plugins_must_exist_in_the_plugin_path() -> None:
    host = HostFacts(cpu_count=4, mem_available=8 << 30, plugin_files=frozenset({"af_packet_plugin.so"}))
    e = error({"plugins": ["af_packet", "npol"], "pluginPath": "/p"}, host=host)
    assert e.path == "vpp.plugins" and "npol_plugin.so is not in /p" in e.message
    assert cfg({"plugins": ["af_packet_plugin.so"]}, host=host).plugins == ("af_packet",)


def test_sriov_section_validation() -> None:
    good = cfg(sriov={"pf": "ens1", "numVfs": 2, "vfs": [{"index": 1, "mac": "02:00:00:00:00:09", "vlan": 7,
                                                           "trust": True, "spoofCheck": False}]})
    assert good.sriov is not None and good.sriov.vfs[0].vlan == 7 and good.sriov.vfs[0].trust is True
    for vfs, field, text in [
        ([{"index": 2}], "vpp.sriov.vfs[0].index", "does not exist with numVfs 2"),
        ([{"index": 0}, {"index": 0}], "vpp.sriov.vfs[1].index", "configured twice"),
        ([{"index": 0, "vlan": 5000}], "vpp.sriov.vfs[0].vlan", "outside"),
        ([{"index": 0, "mac": "01:00:00:00:00:01"}], "vpp.sriov.vfs[0].mac", "unicast"),
        ([{"index": 0, "attach": "dev", "driver": "ixgbevf"}], "vpp.sriov.vfs[0].driver", "vfio-pci"),
        ([{"index": 0, "attach": "later"}], "vpp.sriov.vfs[0].attach", "unknown attach"),
        ([{"index": 0, "colour": "red"}], "vpp.sriov.vfs[0].colour", "unknown field"),
    ]:
        e = error({"sriov": {"pf": "ens1", "numVfs": 2, "vfs": vfs}})
        assert (e.path, text in e.message) == (field, True), str(e)


def test_load_node_config_reads_the_vpp_section(tmp_path: Path) -> None:
    f = tmp_path / "agent.yaml"
    f.write_text("nodeName: n1\nvpp:\n  buffers: 9000\n  uplink: {interface: eth0}\n")
    assert load_node_config(str(f), host=BIG).buffers == 9000
    f.write_text("nodeName: n1\n")
    with pytest.raises(ValidationError, match="no vpp: section"):
        load_node_config(str(f), host=BIG)
    f.write_text("vpp:\n  workers: '1-'\n")
    with pytest.raises(ValidationError) as e:
        load_node_config(str(f), host=BIG)
    assert str(e.value).startswith(f"{f} vpp.workers:")


# ------------------------------------------------------------------------ CLI

def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            rc = main(list(argv))
        except SystemExit as e:
            rc = int(e.code or 0)
    return rc, out.getvalue(), err.getvalue()


def test_cli_render_config(tmp_path: Path) -> None:
    f = tmp_path / "node.yaml"
    run_dir = tmp_path / "run"
    f.write_text(f"vpp:\n  runtimeDir: {run_dir}\n  heapSize: 256M\n  buffers: 8192\n"
                 f"  uplink: {{interface: eth0}}\n  hostInterface: {{kind: veth}}\n")
    rc, out, _ = run_cli("vpp", "render-config", "--config", str(f), "--no-host-checks")
    assert rc == 0 and f"socket-name {run_dir}/api.sock" in out and "## set punt ipv4 udp all" in out
    check_startup_conf(out)
    target = tmp_path / "etc" / "startup.conf"
    rc, _, err = run_cli("vpp", "render-config", "--config", str(f), "--output", str(target), "--no-host-checks")
    assert rc == 0 and target.read_text().startswith("## vppagent startup.conf template")
    assert (run_dir / "startup.cli").read_text().startswith("# vppagent startup CLI")
    assert str(target) in err
    f.write_text("vpp:\n  workers: 'x'\n")
    rc, out, err = run_cli("vpp", "render-config", "--config", str(f))
    assert rc == 2 and "vpp.workers" in err and out == ""


def test_cli_help_lists_vpp() -> None:
    rc, out, _ = run_cli("--help")
    assert rc == 0 and "vpp" in out and "eval" in out
    rc, out, _ = run_cli("vpp", "--help")
    assert rc == 0 and "render-config" in out and "run" in out


# ------------------------------------------------------------------- real VPP

def _base(tmp: Path) -> dict:
    return {"runtimeDir": str(tmp), "heapSize": "256M", "buffers": 8192, "pageSize": "4k", "pollSleepUsec": 100}


@pytest.mark.vpp
@needs_vpp
def test_rendered_no_hugepages_config_starts_real_vpp() -> None:
    from vppagent.vpp_node.startup import start_vpp

    with start_vpp({"heapSize": "256M", "buffers": 8192, "pageSize": "4k", "pollSleepUsec": 100}) as vpp:
        text = vpp.conf_path.read_text()
        assert "main-heap-page-size 4k" in text and "exec" not in text
        conn = vpp.connect()
        try:
            assert conn.version and conn.vpe_pid == vpp.pid
            names = {d.interface_name for d in conn.dump("sw_interface_dump", sw_if_index=0xFFFFFFFF)}
            assert "local0" in names
        finally:
            conn.disconnect()
        pid, api, prefix, workdir = vpp.pid, vpp.api_socket, vpp.api_prefix, vpp.conf_path.parent
        assert prefix and any(p.startswith(prefix) for p in os.listdir("/dev/shm"))
    assert not os.path.exists(f"/proc/{pid}")
    assert not os.path.exists(api) and not workdir.exists()
    assert not any(p.startswith(prefix + "-") for p in os.listdir("/dev/shm"))


@pytest.mark.vpp
@needs_vpp
def test_startup_cli_script_runs_in_real_vpp(tmp_path: Path) -> None:
    from vppagent.vpp_node.startup import start_vpp

    short = Path(f"/tmp/vppa-t{os.getpid()}")
    try:
        with start_vpp(_base(short) | {"hostInterface": {"vrf": 4242}}, short, exec_script=True) as vpp:
            conn = vpp.connect()
            try:
                deadline = time.monotonic() + 15
                while not any(t.table.table_id == 4242 and t.table.is_ip6 for t in conn.dump("ip_table_dump")):
                    assert time.monotonic() < deadline, vpp.log_tail()
                    time.sleep(0.1)
            finally:
                conn.disconnect()
            assert "Fib_index 1   0.0.0.0 - 255.255.255.255" in vpp.cli("show arp proxy")
            assert "IPv4 UDP punt: enabled" in vpp.cli("show udp punt")
    finally:
        import shutil
        shutil.rmtree(short, ignore_errors=True)


@pytest.mark.vpp
@needs_vpp
def test_start_vpp_from_text_and_failure_reports_the_log() -> None:
    from vppagent.vpp_node.process import VppStartError
    from vppagent.vpp_node.startup import start_vpp

    node = parse_node_config(_base(Path("/tmp/y")))
    good = render_startup_conf(node.with_runtime_dir("/tmp/unused"), exec_script=False)
    workdir = Path(f"/tmp/vppa-text{os.getpid()}")
    text = good.replace("/tmp/unused", str(workdir))
    try:
        with start_vpp(text, workdir) as vpp:
            assert vpp.api_socket == f"{workdir}/api.sock" and vpp.alive()
        assert workdir.exists()                  # not owned: left to the caller
    finally:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    broken = text.replace("buffers-per-numa 8192", "buffers-per-numa 8192\n  nonsense", 1)   # VPP rejects it
    assert broken != text
    try:
        with pytest.raises(VppStartError) as e:
            start_vpp(broken, workdir, ready_timeout=15).close()     # close() if it wrongly started
        assert "VPP exited" in str(e.value) and "nonsense" in str(e.value)
    finally:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
