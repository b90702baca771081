"""The node side of the VPP dataplane: what Calico/VPP's vpp-manager does.

- ``config``: the ``vpp:`` section of the agent config (schema, validation
  against the host: CPUs, memory, hugepages, plugins).
- ``startup``: renders ``startup.conf`` (and VPP's startup CLI script) from
  the templates in ``startup-conf/``; ``conf_syntax`` checks a rendering
  against VPP's option parsers; ``start_vpp`` runs a VPP for tests.
- ``process``: one VPP process (start in a namespace, readiness, stop, cleanup).
- ``netns``: netlink work inside a network namespace without moving the caller.
- ``linux_state``: records a Linux interface (addresses, routes, MTU, MAC,
  flags, neighbours, sysctls) and puts it back exactly.
- ``uplink``: hands the uplink to VPP per driver and takes it back.
- ``host_interface``: the tap or veth that carries the uplink's identity
  back into Linux; ``vpp_wiring``: VPP's side of uplink and host interface.
- ``manager``: ``vppagent vpp run``: record, hand over, supervise, restore.
- ``sriov``: VFs through sysfs and netlink, vfio-pci binding, ``dev_attach``.
"""
