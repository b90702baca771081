"""The VPP dataplane (``dataplane: {type: vpp}``).

Modules, each with one job: ``config`` (options), ``names`` (tags),
``keys`` (reconciler keys), ``store`` (what VPP cannot tell us), ``batch``
and ``context`` (pipelined descriptor plans), ``pod_desc``/``pods``/
``podlinux`` (pod interfaces), ``match``/``program``/``flatten`` (policy as
a decision program), ``npol_render``/``npol_desc`` and ``acl_render``/
``acl_desc`` (the two policy engines), ``ipsets``, ``groups``, ``policy``,
and ``dataplane`` (the ``Dataplane`` itself).
"""

from vppagent.dataplane.vpp.config import ConfigError, VppConfig
from vppagent.dataplane.vpp.dataplane import VppDataplane

__all__ = ["ConfigError", "VppConfig", "VppDataplane"]
