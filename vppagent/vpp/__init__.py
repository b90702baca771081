"""VPP's binary API as the agent uses it: a declared message table, a checked
single-owner connection over vpp_papi, typed errors, and a fake VPP for tests.

The VPP dataplane (``vppagent.dataplane.vpp``) builds on this layer; nothing
here knows about pods, policies or services.
"""

from vppagent.vpp.connection import VppConnection
from vppagent.vpp.errors import (
    VppApiError, VppApiMismatch, VppArgumentError, VppError, VppNotConnected, VppRestarted, VppTimeout,
    VppWrongThread,
)
from vppagent.vpp.messages import MESSAGES, TYPES, MessageDef, TypeDef

__all__ = [
    "MESSAGES", "TYPES", "MessageDef", "TypeDef", "VppApiError", "VppApiMismatch", "VppArgumentError",
    "VppConnection", "VppError", "VppNotConnected", "VppRestarted", "VppTimeout", "VppWrongThread",
]
