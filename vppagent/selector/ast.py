"""Immutable selector syntax trees that print canonically and evaluate fast.

Nodes are frozen, slotted dataclasses so selectors can be dict keys and set
members (the calculation graph deduplicates by selector).  Each node caches
its hash, printed form and compiled matcher: selectors are built once and
evaluated millions of times, so evaluation must be a single Python call.

Invariants kept by the constructors (so ``parse(str(s)) == s`` always holds):
keys are valid label keys, values are quotable, ``And``/``Or`` have at least
two operands and never directly contain a node of their own type.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from vppagent.selector.errors import SelectorError
from vppagent.selector.keys import check_key, check_value, quote

Labels = Mapping[str, str]
Matcher = Callable[[Labels], bool]

#: The label Calico sets on namespaced resources; ``global()`` means "absent".
NAMESPACE_LABEL = "projectcalico.org/namespace"

# Generated matcher source nests at most this deep; deeper subtrees are
# compiled separately and called, keeping clear of CPython's nesting limits.
_INLINE_DEPTH = 24


class Selector:
    """Base of all selector nodes: evaluation, printing, hashing."""

    __slots__ = ("_hash", "_text", "_keys", "_fn", "_depth")

    _hash: int
    _text: str | None
    _keys: frozenset[str] | None
    _fn: Matcher | None
    _depth: int

    # -- construction -----------------------------------------------------

    def __post_init__(self) -> None:
        self._normalize()
        setattr_ = object.__setattr__
        setattr_(self, "_hash", hash((type(self).__name__, *self._fields())))
        setattr_(self, "_text", None)
        setattr_(self, "_keys", None)
        setattr_(self, "_fn", None)
        setattr_(self, "_depth", 1 + max((c._depth for c in self.children()), default=0))

    def _normalize(self) -> None:
        """Validate and canonicalize fields (frozen: use object.__setattr__)."""

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__match_args__)  # type: ignore[attr-defined]

    def children(self) -> tuple[Selector, ...]:
        """Direct sub-selectors (empty for leaves)."""
        return ()

    # -- public API -------------------------------------------------------

    def evaluate(self, labels: Labels) -> bool:
        """Whether a resource with ``labels`` is selected."""
        fn = self._fn
        if fn is None:
            fn = self.matcher
        return fn(labels)

    @property
    def matcher(self) -> Matcher:
        """The compiled predicate; bind it once in hot loops to skip a lookup."""
        fn = self._fn
        if fn is None:
            fn = _compile(self)
            object.__setattr__(self, "_fn", fn)
        return fn

    def label_keys(self) -> frozenset[str]:
        """Every label key whose presence or value can change the result."""
        keys = self._keys
        if keys is None:
            keys = self._label_keys()
            object.__setattr__(self, "_keys", keys)
        return keys

    def _label_keys(self) -> frozenset[str]:
        return frozenset().union(*(c.label_keys() for c in self.children()))

    def is_all(self) -> bool:
        """True only for the literal ``all()`` node (not for equivalent trees)."""
        return False

    # -- printing ---------------------------------------------------------

    def __str__(self) -> str:
        text = self._text
        if text is None:
            text = self._render()
            object.__setattr__(self, "_text", text)
        return text

    def _render(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"parse({str(self)!r})"

    # -- identity ---------------------------------------------------------

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Selector)
        return self._hash == other._hash and self._fields() == other._fields()

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild through the constructor: caches are not picklable state.
        return (type(self), self._fields())

    # -- compilation ------------------------------------------------------

    def _expr(self, consts: list[Any], budget: int) -> str:
        """Python expression over ``L`` (labels) and ``g`` (``L.get``)."""
        raise NotImplementedError


def _const(consts: list[Any], value: Any) -> str:
    consts.append(value)
    return f"c{len(consts) - 1}"


def _compile(node: Selector) -> Matcher:
    """Generate one flat function for ``node`` (constants passed as cells)."""
    consts: list[Any] = []
    body = node._expr(consts, _INLINE_DEPTH)
    params = ", ".join(f"c{i}" for i in range(len(consts)))
    source = (
        f"def factory({params}):\n"
        f"    def match(L):\n"
        f"        g = L.get\n"
        f"        return {body}\n"
        f"    return match\n"
    )
    namespace: dict[str, Any] = {"__builtins__": {}}
    exec(compile(source, f"<selector {str(node)[:60]!r}>", "exec"), namespace)
    return namespace["factory"](*consts)  # type: ignore[no-any-return]


def _child_expr(child: Selector, consts: list[Any], budget: int) -> str:
    if budget <= 0 and child.children():
        return f"{_const(consts, child.matcher)}(L)"
    return child._expr(consts, budget - 1)


# -- leaves without labels ------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class All(Selector):
    """``all()``: matches every resource."""

    def is_all(self) -> bool:
        return True

    def _label_keys(self) -> frozenset[str]:
        return frozenset()

    def _render(self) -> str:
        return "all()"

    def _expr(self, consts: list[Any], budget: int) -> str:
        return "True"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Global(Selector):
    """``global()``: matches non-namespaced resources (no namespace label)."""

    def _label_keys(self) -> frozenset[str]:
        return frozenset((NAMESPACE_LABEL,))

    def _render(self) -> str:
        return "global()"

    def _expr(self, consts: list[Any], budget: int) -> str:
        return f"({_const(consts, NAMESPACE_LABEL)} not in L)"


# -- leaves testing one label ---------------------------------------------


class _KeyTest(Selector):
    """A test of one label key; subclasses are dataclasses with ``key`` first."""

    __slots__ = ()
    key: str

    def _normalize(self) -> None:
        check_key(self.key)

    def _label_keys(self) -> frozenset[str]:
        return frozenset((self.key,))


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Has(_KeyTest):
    """``has(key)``: the label is present, whatever its value."""

    key: str

    def _render(self) -> str:
        return f"has({self.key})"

    def _expr(self, consts: list[Any], budget: int) -> str:
        return f"({_const(consts, self.key)} in L)"


class _ValueTest(_KeyTest):
    """``key <op> 'value'``; ``_template`` is the compiled form."""

    __slots__ = ()
    value: str
    op: ClassVar[str]
    _template: ClassVar[str]

    def _normalize(self) -> None:
        check_key(self.key)
        check_value(self.value)

    def _render(self) -> str:
        return f"{self.key} {self.op} {quote(self.value)}"

    def _expr(self, consts: list[Any], budget: int) -> str:
        return self._template.format(k=_const(consts, self.key), v=_const(consts, self.value))


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Equals(_ValueTest):
    """``key == 'v'``: false when the label is absent."""

    key: str
    value: str
    op: ClassVar[str] = "=="
    _template: ClassVar[str] = "(g({k}) == {v})"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class NotEquals(_ValueTest):
    """``key != 'v'``: TRUE when the label is absent (Calico semantics)."""

    key: str
    value: str
    op: ClassVar[str] = "!="
    _template: ClassVar[str] = "(g({k}) != {v})"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Contains(_ValueTest):
    """``key contains 'v'``: false when the label is absent."""

    key: str
    value: str
    op: ClassVar[str] = "contains"
    _template: ClassVar[str] = "((x := g({k})) is not None and {v} in x)"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class StartsWith(_ValueTest):
    """``key starts with 'v'``: false when the label is absent."""

    key: str
    value: str
    op: ClassVar[str] = "starts with"
    _template: ClassVar[str] = "((x := g({k})) is not None and x.startswith({v}))"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class EndsWith(_ValueTest):
    """``key ends with 'v'``: false when the label is absent."""

    key: str
    value: str
    op: ClassVar[str] = "ends with"
    _template: ClassVar[str] = "((x := g({k})) is not None and x.endswith({v}))"


class _SetTest(_KeyTest):
    """``key [not] in {...}``; values are held as a frozenset."""

    __slots__ = ()
    values: frozenset[str]
    op: ClassVar[str]
    _template: ClassVar[str]

    def _normalize(self) -> None:
        check_key(self.key)
        values = self.values
        if isinstance(values, str) or not isinstance(values, Iterable):
            raise SelectorError(self.key, 0, f"values for '{self.op}' must be a collection of strings")
        frozen = frozenset(values)
        for value in frozen:
            check_value(value)
        object.__setattr__(self, "values", frozen)

    def _render(self) -> str:
        items = ", ".join(quote(v) for v in sorted(self.values))
        return f"{self.key} {self.op} {{{items}}}"

    def _expr(self, consts: list[Any], budget: int) -> str:
        return self._template.format(k=_const(consts, self.key), v=_const(consts, self.values))


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class In(_SetTest):
    """``key in {...}``: false when the label is absent."""

    key: str
    values: frozenset[str]
    op: ClassVar[str] = "in"
    _template: ClassVar[str] = "(g({k}) in {v})"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class NotIn(_SetTest):
    """``key not in {...}``: TRUE when the label is absent."""

    key: str
    values: frozenset[str]
    op: ClassVar[str] = "not in"
    _template: ClassVar[str] = "(g({k}) not in {v})"


# -- operators ------------------------------------------------------------


def _require_selector(value: object, where: str) -> Selector:
    if not isinstance(value, Selector):
        raise SelectorError("", 0, f"{where} operand must be a Selector, not {type(value).__name__}")
    return value


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Not(Selector):
    """``!expr``."""

    operand: Selector

    def _normalize(self) -> None:
        _require_selector(self.operand, "'!'")

    def children(self) -> tuple[Selector, ...]:
        return (self.operand,)

    def _render(self) -> str:
        inner = str(self.operand)
        if isinstance(self.operand, (And, Or, _ValueTest, _SetTest)):
            inner = f"({inner})"
        return f"!{inner}"

    def _expr(self, consts: list[Any], budget: int) -> str:
        return f"(not {_child_expr(self.operand, consts, budget)})"


class _Junction(Selector):
    """N-ary ``&&`` / ``||``, flattened so equal chains compare equal."""

    __slots__ = ()
    operands: tuple[Selector, ...]
    op: ClassVar[str]
    _pyop: ClassVar[str]

    def _normalize(self) -> None:
        flat: list[Selector] = []
        for operand in self.operands:
            _require_selector(operand, f"'{self.op}'")
            if type(operand) is type(self):
                flat.extend(operand.operands)  # type: ignore[attr-defined]
            else:
                flat.append(operand)
        if len(flat) < 2:
            raise SelectorError("", 0, f"'{self.op}' needs at least two operands")
        object.__setattr__(self, "operands", tuple(flat))

    def children(self) -> tuple[Selector, ...]:
        return self.operands

    def _render(self) -> str:
        parts = []
        for operand in self.operands:
            text = str(operand)
            # Only '||' under '&&' needs parentheses: '&&' binds tighter and
            # a junction never directly holds one of its own kind.
            parts.append(f"({text})" if isinstance(operand, Or) else text)
        return f" {self.op} ".join(parts)

    def _expr(self, consts: list[Any], budget: int) -> str:
        inner = f" {self._pyop} ".join(_child_expr(c, consts, budget) for c in self.operands)
        return f"({inner})"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class And(_Junction):
    """``a && b && ...``."""

    operands: tuple[Selector, ...]
    op: ClassVar[str] = "&&"
    _pyop: ClassVar[str] = "and"


@dataclass(frozen=True, slots=True, eq=False, repr=False)
class Or(_Junction):
    """``a || b || ...``."""

    operands: tuple[Selector, ...]
    op: ClassVar[str] = "||"
    _pyop: ClassVar[str] = "or"


ALL: Selector = All()
