"""How the engine reads and writes one kind of key.

A descriptor is the only place that knows a backend's API; the engine only
knows keys, values, dependencies and the outcome of each call. Optional
capabilities (in-place update, pipelined batches) are detected by whether a
subclass overrides the method, so a backend states them by writing them.
"""

from __future__ import annotations

import abc
from typing import Any, Callable, Generic, Hashable, Iterable, Mapping, Sequence, TypeVar

from vppagent.reconciler.kv import Key, Op

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Descriptor(abc.ABC, Generic[K, V]):
    """Create/update/delete/dump for keys of type ``K`` with values ``V``.

    ``kind`` is a key type (matched with isinstance) or a predicate on keys.
    ``dump`` must return only objects this agent owns: everything it returns
    that is not desired will be deleted by a resync.
    """

    kind: type | Callable[[Any], bool]
    name: str = ""

    def __init__(self) -> None:
        if not self.name:
            self.name = type(self).__name__

    def handles(self, key: Key) -> bool:
        if isinstance(self.kind, type):
            return isinstance(key, self.kind)
        return bool(self.kind(key))

    @abc.abstractmethod
    def create(self, key: K, value: V) -> Any:
        """Write a new object; return metadata to keep (e.g. a VPP sw_if_index) or None."""

    def update(self, key: K, old: V, new: V, metadata: Any) -> Any:
        """Change an object in place; return new metadata, or None to keep ``metadata``."""
        raise NotImplementedError

    @abc.abstractmethod
    def delete(self, key: K, value: V, metadata: Any) -> None:
        """Remove an object."""

    @abc.abstractmethod
    def dump(self) -> Mapping[K, tuple[V, Any]]:
        """Read back the owned objects that exist: ``{key: (value, metadata)}``."""

    def dependencies(self, key: K, value: V) -> Iterable[Key]:
        """Keys that must exist before this value can be written."""
        return ()

    def equivalent(self, key: K, desired: V, actual: V) -> bool:
        """Whether ``actual`` needs no write to become ``desired``."""
        return bool(desired == actual)

    def needs_recreate(self, key: K, old: V, new: V) -> bool:
        """Whether going from ``old`` to ``new`` cannot be done by ``update``."""
        return False

    def retriable(self, exc: BaseException) -> bool:
        """Whether a failure is worth retrying with backoff."""
        return True

    def batch_apply(self, ops: Sequence[Op]) -> list[Any]:
        """Execute ``ops`` in order as one pipelined batch.

        Returns one entry per op: metadata (or None) on success, the exception
        instance on failure. Later ops may depend on earlier ones.
        """
        raise NotImplementedError

    @property
    def supports_update(self) -> bool:
        return type(self).update is not Descriptor.update

    @property
    def supports_batch(self) -> bool:
        return type(self).batch_apply is not Descriptor.batch_apply
