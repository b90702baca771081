"""Calico (projectcalico.org/v3) label selectors: parse, print, evaluate, combine.

``parse`` turns selector text into an immutable, hashable ``Selector`` whose
``evaluate(labels)`` is a single compiled call; ``str(selector)`` is the
canonical text (``parse(str(s)) == s``).  All failures raise ``SelectorError``.
"""

from vppagent.selector.ast import (
    ALL,
    NAMESPACE_LABEL,
    All,
    And,
    Contains,
    EndsWith,
    Equals,
    Global,
    Has,
    In,
    Labels,
    Matcher,
    Not,
    NotEquals,
    NotIn,
    Or,
    Selector,
    StartsWith,
)
from vppagent.selector.build import and_, from_label_selector, prefix_keys
from vppagent.selector.errors import SelectorError
from vppagent.selector.parser import MAX_DEPTH, parse

__all__ = [
    "ALL",
    "MAX_DEPTH",
    "NAMESPACE_LABEL",
    "All",
    "And",
    "Contains",
    "EndsWith",
    "Equals",
    "Global",
    "Has",
    "In",
    "Labels",
    "Matcher",
    "Not",
    "NotEquals",
    "NotIn",
    "Or",
    "Selector",
    "SelectorError",
    "StartsWith",
    "and_",
    "from_label_selector",
    "parse",
    "prefix_keys",
]
