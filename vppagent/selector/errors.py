"""The single exception type of the selector package.

Every bad selector (text, Kubernetes LabelSelector, or hand-built node) is
reported as ``SelectorError`` so callers need exactly one ``except`` clause,
and the column lets a user find the mistake in a long selector.
"""

from __future__ import annotations

# Longer selectors are shown as an excerpt around the column.
_SHOW_MAX_LEN = 120
_CONTEXT = 40


class SelectorError(ValueError):
    """A selector that cannot be parsed or expressed.

    ``column`` is a 0-based index into ``selector``.  Errors that do not come
    from selector text (e.g. a bad Kubernetes matchExpression) have an empty
    ``selector`` and carry the field path at the start of ``reason``.
    """

    selector: str
    column: int
    reason: str

    def __init__(self, selector: str, column: int, reason: str) -> None:
        super().__init__(selector, column, reason)
        self.selector = selector
        self.column = column
        self.reason = reason

    @classmethod
    def for_field(cls, path: str, reason: str) -> SelectorError:
        """An error in structured input, located by its field path."""
        return cls("", 0, f"{path}: {reason}" if path else reason)

    def __str__(self) -> str:
        if not self.selector:
            return f"invalid selector: {self.reason}"
        shown, caret = self.selector, self.column
        if len(shown) > _SHOW_MAX_LEN:
            start = max(0, caret - _CONTEXT)
            end = min(len(shown), caret + _CONTEXT)
            before, after = ("..." if start else ""), ("..." if end < len(shown) else "")
            shown = f"{before}{shown[start:end]}{after}"
            caret = caret - start + len(before)
        head = f'invalid selector at column {self.column}: {self.reason} in "{shown}"'
        if not shown.isprintable():
            return head
        return f"{head}\n  {shown}\n  {' ' * caret}^"
