"""Validation errors that name the file, the document and the field path.

Every edge (YAML manifests, protobuf requests, Kubernetes objects) reports bad
input through ``ValidationError`` so a user sees exactly which field to fix,
e.g. ``policies.yaml#2 spec.ingress[0].destination.ports[1]: invalid port range '90:80'``.
"""

from __future__ import annotations


class ValidationError(ValueError):
    """Bad input at a known field path; nothing of the containing document is applied."""

    def __init__(self, path: str, message: str, source: str = "") -> None:
        self.path = path
        self.message = message
        self.source = source
        super().__init__(self._render())

    def _render(self) -> str:
        where = " ".join(p for p in (self.source, self.path) if p)
        return f"{where}: {self.message}" if where else self.message

    def with_source(self, source: str) -> "ValidationError":
        """Return a copy located in ``source`` (e.g. ``policies.yaml#2``)."""
        return ValidationError(self.path, self.message, source)

    def under(self, prefix: str) -> "ValidationError":
        """Return a copy whose path is nested below ``prefix``."""
        if not prefix:
            return self
        path = prefix + ("" if not self.path or self.path.startswith("[") else ".") + self.path
        return ValidationError(path, self.message, self.source)


def join_path(prefix: str, part: str | int) -> str:
    """Append a field name or list index to a dotted field path."""
    if isinstance(part, int):
        return f"{prefix}[{part}]"
    return f"{prefix}.{part}" if prefix else part
