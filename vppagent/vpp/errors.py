"""Typed errors of the VPP layer, and VPP's error numbers by name.

Callers branch on the class (argument bug, VPP refused, VPP gone); the
message always names the VPP message and what was sent, so a log line is
enough to reproduce the failure.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

# vnet/error.h (foreach_vnet_error): retval -> (name, VPP's text).
VPP_ERRORS: Mapping[int, tuple[str, str]] = {
    -1: ("UNSPECIFIED", "Unspecified Error"),
    -2: ("INVALID_SW_IF_INDEX", "Invalid sw_if_index"),
    -3: ("NO_SUCH_FIB", "No such FIB / VRF"),
    -4: ("NO_SUCH_INNER_FIB", "No such inner FIB / VRF"),
    -5: ("NO_SUCH_LABEL", "No such label"),
    -6: ("NO_SUCH_ENTRY", "No such entry"),
    -7: ("INVALID_VALUE", "Invalid value"),
    -8: ("INVALID_VALUE_2", "Invalid value #2"),
    -9: ("UNIMPLEMENTED", "Unimplemented"),
    -10: ("INVALID_SW_IF_INDEX_2", "Invalid sw_if_index #2"),
    -11: ("SYSCALL_ERROR_1", "System call error #1"),
    -12: ("SYSCALL_ERROR_2", "System call error #2"),
    -13: ("SYSCALL_ERROR_3", "System call error #3"),
    -14: ("SYSCALL_ERROR_4", "System call error #4"),
    -15: ("SYSCALL_ERROR_5", "System call error #5"),
    -16: ("SYSCALL_ERROR_6", "System call error #6"),
    -17: ("SYSCALL_ERROR_7", "System call error #7"),
    -18: ("SYSCALL_ERROR_8", "System call error #8"),
    -19: ("SYSCALL_ERROR_9", "System call error #9"),
    -20: ("SYSCALL_ERROR_10", "System call error #10"),
    -30: ("FEATURE_DISABLED", "Feature disabled by configuration"),
    -31: ("INVALID_REGISTRATION", "Invalid registration"),
    -50: ("NEXT_HOP_NOT_IN_FIB", "Next hop not in FIB"),
    -51: ("UNKNOWN_DESTINATION", "Unknown destination"),
    -52: ("NO_PATHS_IN_ROUTE", "No paths specified in route"),
    -53: ("NEXT_HOP_NOT_FOUND_MP", "Next hop not found (multipath)"),
    -54: ("NO_MATCHING_INTERFACE", "No matching interface for probe"),
    -55: ("INVALID_VLAN", "Invalid VLAN"),
    -56: ("VLAN_ALREADY_EXISTS", "VLAN subif already exists"),
    -57: ("INVALID_SRC_ADDRESS", "Invalid src address"),
    -58: ("INVALID_DST_ADDRESS", "Invalid dst address"),
    -59: ("ADDRESS_LENGTH_MISMATCH", "Address length mismatch"),
    -60: ("ADDRESS_NOT_FOUND_FOR_INTERFACE", "Address not found for interface"),
    -61: ("ADDRESS_NOT_DELETABLE", "Address not deletable"),
    -62: ("IP6_NOT_ENABLED", "ip6 not enabled"),
    -63: ("NO_SUCH_NODE", "No such graph node"),
    -64: ("NO_SUCH_NODE2", "No such graph node #2"),
    -65: ("NO_SUCH_TABLE", "No such table"),
    -66: ("NO_SUCH_TABLE2", "No such table #2"),
    -67: ("NO_SUCH_TABLE3", "No such table #3"),
    -68: ("SUBIF_ALREADY_EXISTS", "Subinterface already exists"),
    -69: ("SUBIF_CREATE_FAILED", "Subinterface creation failed"),
    -70: ("INVALID_MEMORY_SIZE", "Invalid memory size requested"),
    -71: ("INVALID_INTERFACE", "Invalid interface"),
    -72: ("INVALID_VLAN_TAG_COUNT", "Invalid number of tags for requested operation"),
    -73: ("INVALID_ARGUMENT", "Invalid argument"),
    -74: ("UNEXPECTED_INTF_STATE", "Unexpected interface state"),
    -75: ("TUNNEL_EXIST", "Tunnel already exists"),
    -76: ("INVALID_DECAP_NEXT", "Invalid decap-next"),
    -77: ("RESPONSE_NOT_READY", "Response not ready"),
    -78: ("NOT_CONNECTED", "Not connected to the data plane"),
    -79: ("IF_ALREADY_EXISTS", "Interface already exists"),
    -80: ("BOND_SLAVE_NOT_ALLOWED", "Operation not allowed on slave of BondEthernet"),
    -81: ("VALUE_EXIST", "Value already exists"),
    -82: ("SAME_SRC_DST", "Source and destination are the same"),
    -83: ("IP6_MULTICAST_ADDRESS_NOT_PRESENT", "IP6 multicast address required"),
    -84: ("SR_POLICY_NAME_NOT_PRESENT", "Segment routing policy name required"),
    -85: ("NOT_RUNNING_AS_ROOT", "Not running as root"),
    -86: ("ALREADY_CONNECTED", "Connection to the data plane already exists"),
    -87: ("UNSUPPORTED_JNI_VERSION", "Unsupported JNI version"),
    -88: ("IP_PREFIX_INVALID", "IP prefix invalid (masked bits set in address"),
    -89: ("INVALID_WORKER", "Invalid worker thread"),
    -90: ("LISP_DISABLED", "LISP is disabled"),
    -91: ("CLASSIFY_TABLE_NOT_FOUND", "Classify table not found"),
    -92: ("INVALID_EID_TYPE", "Unsupported LISP EID type"),
    -93: ("CANNOT_CREATE_PCAP_FILE", "Cannot create pcap file"),
    -94: ("INCORRECT_ADJACENCY_TYPE", "Invalid adjacency type for this operation"),
    -95: ("EXCEEDED_NUMBER_OF_RANGES_CAPACITY", "Operation would exceed configured capacity of ranges"),
    -96: ("EXCEEDED_NUMBER_OF_PORTS_CAPACITY", "Operation would exceed capacity of number of ports"),
    -97: ("INVALID_ADDRESS_FAMILY", "Invalid address family"),
    -98: ("INVALID_SUB_SW_IF_INDEX", "Invalid sub-interface sw_if_index"),
    -99: ("TABLE_TOO_BIG", "Table too big"),
    -100: ("CANNOT_ENABLE_DISABLE_FEATURE", "Cannot enable/disable feature"),
    -101: ("BFD_EEXIST", "Duplicate BFD object"),
    -102: ("BFD_ENOENT", "No such BFD object"),
    -103: ("BFD_EINUSE", "BFD object in use"),
    -104: ("BFD_NOTSUPP", "BFD feature not supported"),
    -105: ("ADDRESS_IN_USE", "Address in use"),
    -106: ("ADDRESS_NOT_IN_USE", "Address not in use"),
    -107: ("QUEUE_FULL", "Queue full"),
    -108: ("APP_UNSUPPORTED_CFG", "Unsupported application config"),
    -109: ("URI_FIFO_CREATE_FAILED", "URI FIFO segment create failed"),
    -110: ("LISP_RLOC_LOCAL", "RLOC address is local"),
    -111: ("BFD_EAGAIN", "BFD object cannot be manipulated at this time"),
    -112: ("INVALID_GPE_MODE", "Invalid GPE mode"),
    -113: ("LISP_GPE_ENTRIES_PRESENT", "LISP GPE entries are present"),
    -114: ("ADDRESS_FOUND_FOR_INTERFACE", "Address found for interface"),
    -115: ("SESSION_CONNECT", "Session failed to connect"),
    -116: ("ENTRY_ALREADY_EXISTS", "Entry already exists"),
    -117: ("SVM_SEGMENT_CREATE_FAIL", "Svm segment create fail"),
    -118: ("APPLICATION_NOT_ATTACHED", "Application not attached"),
    -119: ("BD_ALREADY_EXISTS", "Bridge domain already exists"),
    -120: ("BD_IN_USE", "Bridge domain has member interfaces"),
    -121: ("BD_NOT_MODIFIABLE", "Bridge domain 0 can't be deleted/modified"),
    -122: ("BD_ID_EXCEED_MAX", "Bridge domain ID exceeds 16M limit"),
    -123: ("SUBIF_DOESNT_EXIST", "Subinterface doesn't exist"),
    -124: ("L2_MACS_EVENT_CLINET_PRESENT", "Client already exist for L2 MACs events"),
    -125: ("INVALID_QUEUE", "Invalid queue"),
    -126: ("UNSUPPORTED", "Unsupported"),
    -127: ("DUPLICATE_IF_ADDRESS", "Address already present on another interface"),
    -128: ("APP_INVALID_NS", "Invalid application namespace"),
    -129: ("APP_WRONG_NS_SECRET", "Wrong app namespace secret"),
    -130: ("APP_CONNECT_SCOPE", "Connect scope"),
    -131: ("APP_ALREADY_ATTACHED", "App already attached"),
    -132: ("SESSION_REDIRECT", "Redirect failed"),
    -133: ("ILLEGAL_NAME", "Illegal name"),
    -134: ("NO_NAME_SERVERS", "No name servers configured"),
    -135: ("NAME_SERVER_NOT_FOUND", "Name server not found"),
    -136: ("NAME_RESOLUTION_NOT_ENABLED", "Name resolution not enabled"),
    -137: ("NAME_SERVER_FORMAT_ERROR", "Server format error (bug!)"),
    -138: ("NAME_SERVER_NO_SUCH_NAME", "No such name"),
    -139: ("NAME_SERVER_NO_ADDRESSES", "No addresses available"),
    -140: ("NAME_SERVER_NEXT_SERVER", "Retry with new server"),
    -141: ("APP_CONNECT_FILTERED", "Connect was filtered"),
    -142: ("ACL_IN_USE_INBOUND", "Inbound ACL in use"),
    -143: ("ACL_IN_USE_OUTBOUND", "Outbound ACL in use"),
    -144: ("INIT_FAILED", "Initialization Failed"),
    -145: ("NETLINK_ERROR", "Netlink error"),
    -146: ("BIER_BSL_UNSUP", "BIER bit-string-length unsupported"),
    -147: ("INSTANCE_IN_USE", "Instance in use"),
    -148: ("INVALID_SESSION_ID", "Session ID out of range"),
    -149: ("ACL_IN_USE_BY_LOOKUP_CONTEXT", "ACL in use by a lookup context"),
    -150: ("INVALID_VALUE_3", "Invalid value #3"),
    -151: ("NON_ETHERNET", "Interface is not an Ethernet interface"),
    -152: ("BD_ALREADY_HAS_BVI", "Bridge domain already has a BVI interface"),
    -153: ("INVALID_PROTOCOL", "Invalid Protocol"),
    -154: ("INVALID_ALGORITHM", "Invalid Algorithm"),
    -155: ("RSRC_IN_USE", "Resource In Use"),
    -156: ("KEY_LENGTH", "invalid Key Length"),
    -157: ("FIB_PATH_UNSUPPORTED_NH_PROTO", "Unsupported FIB Path protocol"),
    -159: ("API_ENDIAN_FAILED", "Endian mismatch detected"),
    -160: ("NO_CHANGE", "No change in table"),
    -161: ("MISSING_CERT_KEY", "Missing certifcate or key"),
    -162: ("LIMIT_EXCEEDED", "limit exceeded"),
    -163: ("IKE_NO_PORT", "port not managed by IKE"),
    -164: ("UDP_PORT_TAKEN", "UDP port already taken"),
    -165: ("EAGAIN", "Retry stream call with cursor"),
    -166: ("INVALID_VALUE_4", "Invalid value #4"),
    -167: ("BUSY", "Busy"),
    -168: ("BUG", "Bug"),
    -169: ("FEATURE_ALREADY_DISABLED", "Feature already disabled"),
    -170: ("FEATURE_ALREADY_ENABLED", "Feature already enabled"),
    -171: ("INVALID_PREFIX_LENGTH", "Invalid prefix length"),
}

ERRNO: Mapping[str, int] = {name: rv for rv, (name, _) in VPP_ERRORS.items()}


def retval_name(retval: int) -> str:
    """``-2`` -> ``"INVALID_SW_IF_INDEX"``; unknown values keep their number."""
    return VPP_ERRORS.get(retval, (f"ERROR_{retval}", ""))[0]


def retval_text(retval: int) -> str:
    return VPP_ERRORS.get(retval, ("", f"unknown error {retval}"))[1]


class VppError(Exception):
    """Base of every error raised by ``vppagent.vpp``."""


class VppArgumentError(VppError, ValueError):
    """Arguments that do not match the declared message table: a bug in the
    caller, caught before anything reaches VPP."""

    def __init__(self, message: str, field: str, reason: str) -> None:
        self.message = message
        self.field = field
        self.reason = reason
        super().__init__(f"{message}: {field}: {reason}" if field else f"{message}: {reason}")


class VppApiError(VppError):
    """VPP answered with a nonzero ``retval``."""

    def __init__(self, message: str, retval: int, args: Mapping[str, Any] | None = None,
                 index: int | None = None) -> None:
        self.message = message
        self.retval = retval
        self.name = retval_name(retval)
        self.text = retval_text(retval)
        self.arguments = dict(args or {})   # not ``args``: BaseException owns that
        self.index = index                  # position in a pipeline, when there was one
        where = f" (pipeline item {index})" if index is not None else ""
        super().__init__(f"{message}{where}: {self.name} ({retval}: {self.text}) "
                         f"for {_short(self.arguments)}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.message, self.retval, self.arguments, self.index))


class VppApiMismatch(VppError):
    """The running VPP lacks messages the agent needs, or has other versions
    of them (CRC differs): programming it would be guesswork."""

    def __init__(self, missing: Sequence[str], mismatched: Sequence[tuple[str, str, str]],
                 version: str) -> None:
        self.missing = tuple(missing)
        self.mismatched = tuple(mismatched)      # (name, our crc, VPP's crc)
        self.version = version
        parts = []
        if self.missing:
            parts.append("missing: " + ", ".join(self.missing))
        if self.mismatched:
            parts.append("CRC mismatch: " + ", ".join(
                f"{n} (ours {ours}, VPP {theirs})" for n, ours, theirs in self.mismatched))
        super().__init__(f"VPP {version or '(unknown version)'} does not match the agent's "
                         f"message table; " + "; ".join(parts))

    def __reduce__(self) -> tuple:
        return (type(self), (self.missing, self.mismatched, self.version))


class VppRestarted(VppError):
    """The connection is unusable: the socket was lost, VPP stopped answering,
    or VPP's pid changed.  Reconnect, then reprogram VPP from desired state."""

    def __init__(self, reason: str, old_pid: int | None = None, new_pid: int | None = None) -> None:
        self.reason = reason
        self.old_pid = old_pid
        self.new_pid = new_pid
        super().__init__(reason)

    def __reduce__(self) -> tuple:
        return (type(self), (self.reason, self.old_pid, self.new_pid))


class VppTimeout(VppRestarted):
    """No reply in time: VPP is hung or gone; handled like a restart."""


class VppNotConnected(VppError):
    """A call was made before ``connect()`` or after ``disconnect()``."""


class VppWrongThread(VppError, RuntimeError):
    """vpp_papi is not thread-safe, so only the owner thread may use a connection."""


def _short(args: Mapping[str, Any], limit: int = 300) -> str:
    text = ", ".join(f"{k}={v!r}" for k, v in args.items())
    return "{" + (text if len(text) <= limit else text[:limit] + "...") + "}"
