"""Label-key and label-value rules shared by the parser and the AST.

Keys follow Kubernetes (optional DNS-subdomain prefix, ``/``, then a name),
relaxed in ways Calico tolerates: no per-part length limits (so that
``prefix_keys`` can turn a 63-character name into a longer one) and ``_``
allowed anywhere a letter is, e.g. ``a-b_c.d/e.f-g``.
"""

from __future__ import annotations

import re
from functools import lru_cache

from vppagent.selector.errors import SelectorError

# Characters that can appear in a key; the lexer reads a maximal run of them.
KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._/-")
MAX_KEY_LEN = 512

_DNS_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?"
_PREFIX_RE = re.compile(rf"{_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_NAME_RE = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]*[A-Za-z0-9_])?")


@lru_cache(maxsize=4096)
def key_problem(key: object) -> str | None:
    """Why ``key`` is not a valid label key, or None if it is."""
    if not isinstance(key, str):
        return f"label key must be a string, not {type(key).__name__}"
    if not key:
        return "label key is empty"
    if len(key) > MAX_KEY_LEN:
        return f"label key is longer than {MAX_KEY_LEN} characters"
    prefix, slash, name = key.rpartition("/")
    if slash and not _PREFIX_RE.fullmatch(prefix):
        return f"invalid label key {key!r}: prefix {prefix!r} must be dot-separated words of letters, digits, '-' or '_'"
    if not _NAME_RE.fullmatch(name):
        return (
            f"invalid label key {key!r}: name must be letters, digits, '-', '_' or '.',"
            " starting and ending with a letter, digit or '_'"
        )
    return None


def check_key(key: str) -> str:
    """Return ``key`` or raise SelectorError explaining why it is invalid."""
    problem = key_problem(key)
    if problem is not None:
        raise SelectorError(key if isinstance(key, str) else repr(key), 0, problem)
    return key


def check_value(value: str) -> str:
    """Return ``value`` or raise if it cannot be written as a quoted string.

    Calico strings have no escapes, so a value holding both quote kinds has
    no textual form; rejecting it keeps ``parse(str(s)) == s`` true for every
    constructible selector.
    """
    if not isinstance(value, str):
        raise SelectorError(repr(value), 0, f"label value must be a string, not {type(value).__name__}")
    if "'" in value and '"' in value:
        raise SelectorError(value, 0, "label value contains both ' and \" and cannot be quoted")
    return value


def quote(value: str) -> str:
    """Quote ``value`` with single quotes unless it contains one."""
    return f'"{value}"' if "'" in value else f"'{value}'"
