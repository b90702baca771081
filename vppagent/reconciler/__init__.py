"""A generic desired-state engine (in the spirit of ligato's KV scheduler).

Backends describe each kind of dataplane object with a ``Descriptor``; the
``Reconciler`` records desired key/values and turns them into ordered,
retried, resynced writes.
"""

from vppagent.reconciler.backoff import Backoff
from vppagent.reconciler.descriptor import Descriptor
from vppagent.reconciler.engine import Reconciler, Transaction
from vppagent.reconciler.introspect import jsonable
from vppagent.reconciler.kv import Key, KeyState, KeyStatus, Op, OpKind, OpRecord, key_order
from vppagent.reconciler.report import Report

__all__ = [
    "Backoff", "Descriptor", "Key", "KeyState", "KeyStatus", "Op", "OpKind", "OpRecord",
    "Reconciler", "Report", "Transaction", "jsonable", "key_order",
]
