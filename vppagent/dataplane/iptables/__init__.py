"""The iptables dataplane: Felix's iptables layout for policy, services and host endpoints.

Modules, one job each: ``names`` (chain/set names), ``marks`` (mark bits),
``config`` (the ``dataplane:`` section), ``match`` (a Calico rule → iptables
matches), ``policy``/``endpoints``/``static``/``services``/``pools`` (chains),
``ipsets`` (set contents and restore scripts), ``readback`` (parsing
``iptables-save``/``ipset save``), ``backend`` (nft or legacy),
``commands`` (running tools, optionally in a netns), ``conntrack`` (stale UDP
entries), ``descriptor`` (the reconciler's batched writes) and ``dataplane``
(updates → keys).
"""

from vppagent.dataplane.iptables.config import IptablesConfig
from vppagent.dataplane.iptables.dataplane import IptablesDataplane

__all__ = ["IptablesConfig", "IptablesDataplane"]
