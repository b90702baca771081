"""Building selectors from other selectors and from Kubernetes LabelSelectors.

Kubernetes NetworkPolicy and namespace/service-account selectors are turned
into Calico selectors here so the rest of the agent deals with one selector
type only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vppagent.selector.ast import (
    ALL,
    All,
    And,
    Contains,
    EndsWith,
    Equals,
    Global,
    Has,
    In,
    Not,
    NotEquals,
    NotIn,
    Or,
    Selector,
    StartsWith,
)
from vppagent.selector.errors import SelectorError
from vppagent.selector.keys import key_problem


def and_(*selectors: Selector) -> Selector:
    """Conjunction of ``selectors`` ignoring ``all()``; ALL if nothing is left."""
    kept = [s for s in selectors if not s.is_all()]
    if not kept:
        return ALL
    if len(kept) == 1:
        return kept[0]
    return And(tuple(kept))


def prefix_keys(selector: Selector, prefix: str) -> Selector:
    """Copy of ``selector`` reading ``prefix + key`` wherever it read ``key``.

    Used to match namespace (``pcns.``) and service-account (``pcsa.``)
    selectors against labels that were copied onto endpoints under a prefix.
    ``all()`` and ``global()`` are unchanged.
    """
    if not prefix:
        return selector
    return _prefixed(selector, prefix)


def _prefixed(node: Selector, prefix: str) -> Selector:
    if isinstance(node, (All, Global)):
        return node
    if isinstance(node, Has):
        return Has(prefix + node.key)
    if isinstance(node, (Equals, NotEquals, Contains, StartsWith, EndsWith)):
        return type(node)(prefix + node.key, node.value)
    if isinstance(node, (In, NotIn)):
        return type(node)(prefix + node.key, node.values)
    if isinstance(node, Not):
        return Not(_prefixed(node.operand, prefix))
    if isinstance(node, (And, Or)):
        return type(node)(tuple(_prefixed(c, prefix) for c in node.operands))
    raise SelectorError(str(node), 0, f"cannot prefix keys of {type(node).__name__}")


def _join(path: str, part: str) -> str:
    if part.startswith("["):
        return f"{path}{part}"
    return f"{path}.{part}" if path else part


def _check_key(key: Any, path: str) -> str:
    problem = key_problem(key)
    if problem is not None:
        raise SelectorError.for_field(path, problem)
    return key  # type: ignore[no-any-return]


def _check_value(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise SelectorError.for_field(path, f"label value must be a string, not {type(value).__name__}")
    if "'" in value and '"' in value:
        raise SelectorError.for_field(
            path, f"label value {value!r} contains both ' and \" and cannot be expressed as a selector"
        )
    return value


def _requirement(expr: Any, path: str) -> Selector:
    """One matchExpressions entry, validated like the Kubernetes API server."""
    if not isinstance(expr, Mapping):
        raise SelectorError.for_field(path, f"expected an object with key/operator/values, not {type(expr).__name__}")
    key = _check_key(expr.get("key"), _join(path, "key"))
    operator = expr.get("operator")
    values = expr.get("values")
    values_path = _join(path, "values")
    if values is None:
        values = []
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise SelectorError.for_field(values_path, "must be a list of strings")
    checked = [_check_value(v, _join(values_path, f"[{i}]")) for i, v in enumerate(values)]
    if operator in ("In", "NotIn"):
        if not checked:
            raise SelectorError.for_field(values_path, f"must be non-empty for operator {operator}")
        return In(key, frozenset(checked)) if operator == "In" else NotIn(key, frozenset(checked))
    if operator in ("Exists", "DoesNotExist"):
        if checked:
            raise SelectorError.for_field(values_path, f"must be empty for operator {operator}")
        return Has(key) if operator == "Exists" else Not(Has(key))
    raise SelectorError.for_field(
        _join(path, "operator"), f"unknown operator {operator!r} (expected In, NotIn, Exists or DoesNotExist)"
    )


def from_label_selector(
    match_labels: Mapping[str, str] | None,
    match_expressions: list[dict[str, Any]] | None,
    field: str = "",
) -> Selector:
    """Calico selector equivalent to a Kubernetes LabelSelector.

    Terms are ordered by key (then by printed form) so equal LabelSelectors
    give equal selectors whatever their input order.  An empty selector
    matches everything.  Errors name the offending field below ``field``.
    """
    terms: list[tuple[str, str, Selector]] = []
    if match_labels:
        if not isinstance(match_labels, Mapping):
            raise SelectorError.for_field(_join(field, "matchLabels"), "must be a map of label key to value")
        for key, value in match_labels.items():
            path = _join(field, f"matchLabels[{key!r}]")
            node = Equals(_check_key(key, path), _check_value(value, path))
            terms.append((key, str(node), node))
    if match_expressions:
        if not isinstance(match_expressions, (list, tuple)):
            raise SelectorError.for_field(_join(field, "matchExpressions"), "must be a list")
        for index, expr in enumerate(match_expressions):
            node = _requirement(expr, _join(field, f"matchExpressions[{index}]"))
            terms.append((next(iter(node.label_keys())), str(node), node))
    terms.sort(key=lambda t: (t[0], t[1]))
    return and_(*(node for _, _, node in terms))
