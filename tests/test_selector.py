"""Tests for the Calico selector language: parsing, printing, evaluation, helpers."""

from __future__ import annotations

import pickle
from collections.abc import Mapping

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vppagent.selector import (
    ALL,
    MAX_DEPTH,
    NAMESPACE_LABEL,
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
    SelectorError,
    StartsWith,
    and_,
    from_label_selector,
    parse,
    prefix_keys,
)

PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- table-driven evaluation ---------------------------------------------------

LABELS = {
    "app": "web",
    "tier": "front-end",
    "empty": "",
    "projectcalico.org/orchestrator": "k8s",
    "pcns.kubernetes.io/metadata.name": "default",
    "quote": "it's",
}

EVAL_CASES: list[tuple[str, bool]] = [
    ("", True),
    ("   \t\n", True),
    ("all()", True),
    ("global()", True),
    ("has(app)", True),
    ("has(missing)", False),
    ("!has(app)", False),
    ("!has(missing)", True),
    ("app == 'web'", True),
    ('app == "web"', True),
    ("app == 'db'", False),
    ("missing == 'web'", False),
    ("app != 'db'", True),
    ("app != 'web'", False),
    ("missing != 'web'", True),  # absent label: != is TRUE
    ("empty == ''", True),
    ("missing == ''", False),
    ("app in {'web', 'db'}", True),
    ("app in {'db'}", False),
    ("app in {}", False),
    ("missing in {'web'}", False),
    ("app not in {'web'}", False),
    ("app not in {'db'}", True),
    ("app not in {}", True),
    ("missing not in {'web'}", True),  # absent label: not in is TRUE
    ("tier contains 'nt-e'", True),
    ("tier contains 'back'", False),
    ("missing contains ''", False),
    ("empty contains ''", True),
    ("tier starts with 'front'", True),
    ("tier starts with 'end'", False),
    ("missing starts with ''", False),
    ("tier ends with '-end'", True),
    ("tier ends with 'front'", False),
    ("missing ends with ''", False),
    ("quote == \"it's\"", True),
    ("projectcalico.org/orchestrator == 'k8s'", True),
    ("pcns.kubernetes.io/metadata.name == 'default'", True),
    ("has(pcns.kubernetes.io/metadata.name)", True),
    # precedence: ! > && > ||, left to right
    ("has(missing) && has(app) || has(tier)", True),
    ("has(tier) || has(app) && has(missing)", True),
    ("(has(tier) || has(app)) && has(missing)", False),
    ("!has(missing) && has(app)", True),
    ("!has(app) && has(missing)", False),
    ("!has(app) || has(app)", True),
    ("!(has(missing) || has(app))", False),
    ("!app == 'db'", True),
    ("!!has(app)", True),
    ("! ! has(app)", True),
    ("app=='web'&&tier!='x'", True),
    ("( app == 'web' ) && ( ( tier in { 'front-end' , 'x' } ) )", True),
    # keywords are ordinary keys where a key is expected
    ("has(has) || all == 'x' || in in {'y'} || not not in {}", True),
]


@pytest.mark.parametrize(("text", "expected"), EVAL_CASES)
def test_evaluate_table(text: str, expected: bool) -> None:
    selector = parse(text)
    assert selector.evaluate(LABELS) is expected
    assert selector.matcher(LABELS) is expected
    assert reference_eval(selector, LABELS) is expected
    assert parse(str(selector)) == selector


def test_global_means_no_namespace_label() -> None:
    assert parse("global()").evaluate({"a": "b"})
    assert not parse("global()").evaluate({NAMESPACE_LABEL: "default"})
    assert parse("global()").label_keys() == frozenset({NAMESPACE_LABEL})


# -- table-driven parsing and printing -------------------------------------------

PRINT_CASES: list[tuple[str, str]] = [
    ("", "all()"),
    ("all( )", "all()"),
    ("global ( )", "global()"),
    ("has( app )", "has(app)"),
    ('a=="x"', "a == 'x'"),
    ("a == \"it's\"", "a == \"it's\""),
    ("a in {'b','a','a'}", "a in {'a', 'b'}"),
    ("a not   in{}", "a not in {}"),
    ("a contains'x'", "a contains 'x'"),
    ("a starts  with 'x'", "a starts with 'x'"),
    ("a ends\twith 'x'", "a ends with 'x'"),
    ("(a == 'x' && b == 'y') && c == 'z'", "a == 'x' && b == 'y' && c == 'z'"),
    ("a == 'x' || (b == 'y' || c == 'z')", "a == 'x' || b == 'y' || c == 'z'"),
    ("(a == 'x' && b == 'y') || c == 'z'", "a == 'x' && b == 'y' || c == 'z'"),
    ("a == 'x' && (b == 'y' || c == 'z')", "a == 'x' && (b == 'y' || c == 'z')"),
    ("!a == 'x'", "!(a == 'x')"),
    ("!(has(a))", "!has(a)"),
    ("!(a == 'x' && has(b))", "!(a == 'x' && has(b))"),
    ("((((has(a)))))", "has(a)"),
    ("a == 'x && y || (z)'", "a == 'x && y || (z)'"),
    ("_x.y-z == 'v'", "_x.y-z == 'v'"),
    ("pcsa.foo == 'v'", "pcsa.foo == 'v'"),
    ("a-b_c.d/e.f-g == 'v'", "a-b_c.d/e.f-g == 'v'"),
]


@pytest.mark.parametrize(("text", "printed"), PRINT_CASES)
def test_canonical_printing(text: str, printed: str) -> None:
    selector = parse(text)
    assert str(selector) == printed
    assert parse(printed) == selector
    assert str(parse(printed)) == printed


def test_structure() -> None:
    assert parse("a == 'x' && b == 'y' || c == 'z'") == Or(
        (And((Equals("a", "x"), Equals("b", "y"))), Equals("c", "z"))
    )
    assert parse("!has(a) && a not in {'1'}") == And((Not(Has("a")), NotIn("a", frozenset({"1"}))))
    assert parse("a contains 'x' || a starts with 'y' || a ends with 'z' || a != 'w' || a in {'v'}") == Or(
        (Contains("a", "x"), StartsWith("a", "y"), EndsWith("a", "z"), NotEquals("a", "w"), In("a", {"v"}))
    )
    assert parse("") is ALL and parse("all()").is_all() and not parse("!all()").is_all()
    assert parse("global()") == Global() and isinstance(ALL, All)


def test_selectors_are_hashable_immutable_and_picklable() -> None:
    a, b = parse("a == 'x' && has(b)"), parse("a=='x'&&has(b)")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a != parse("has(b) && a == 'x'")
    with pytest.raises(AttributeError):
        a.operands = ()  # type: ignore[misc]
    clone = pickle.loads(pickle.dumps(a))
    assert clone == a and clone.evaluate({"a": "x", "b": ""})


def test_label_keys() -> None:
    sel = parse("a == 'x' || !has(b) && (c in {} || global() || all())")
    assert sel.label_keys() == frozenset({"a", "b", "c", NAMESPACE_LABEL})
    assert ALL.label_keys() == frozenset()


# -- errors ------------------------------------------------------------------------

ERROR_CASES: list[tuple[object, int, str]] = [
    ("app == foo", 7, "expected a quoted string after '=='"),
    ("app ==", 6, "expected a quoted string"),
    ("app", 3, "expected an operator"),
    ("app = 'x'", 4, "expected an operator"),
    ("app == 'x", 7, "unterminated string"),
    ("(app == 'x'", 11, "expected ')'"),
    ("app == 'x')", 10, "unmatched ')'"),
    ("app == 'x' tier", 11, "expected '&&', '||'"),
    ("app == 'x' &&", 13, "unexpected end"),
    ("app == 'x' & has(b)", 11, "expected '&&', '||'"),
    ("has()", 4, "expected a label key inside has()"),
    ("has(a", 5, "expected ')'"),
    ("all(x)", 4, "expected ')'"),
    ("a in 'x'", 5, "expected '{'"),
    ("a in {'x' 'y'}", 10, "expected ',' or '}'"),
    ("a in {'x',}", 10, "expected a quoted string after ','"),
    ("a not 'x'", 6, "expected 'in' after 'not'"),
    ("a starts 'x'", 9, "expected 'with' after 'starts'"),
    ("a ends with x", 12, "expected a quoted string after 'ends with'"),
    ("a/b/c == 'x'", 0, "invalid label key"),
    ("-a == 'x'", 0, "invalid label key"),
    ("a. == 'x'", 0, "invalid label key"),
    ("has(a/)", 4, "invalid label key"),
    ("==", 0, "expected a label key"),
    ("!", 1, "unexpected end"),
    ("()", 1, "expected a label key"),
    ("a == 'x' || || b == 'y'", 12, "expected a label key"),
    ("a == 'x'\u00a0", 8, "expected '&&', '||'"),
    ("(" * 10_000, MAX_DEPTH, "too deeply nested"),
    ("!" * 10_000, MAX_DEPTH, "too deeply nested"),
    ("!(" * 5_000, MAX_DEPTH, "too deeply nested"),
    (42, 0, "must be a string"),
    (None, 0, "must be a string"),
]


@pytest.mark.parametrize(("text", "column", "reason"), ERROR_CASES)
def test_error_columns(text: object, column: int, reason: str) -> None:
    with pytest.raises(SelectorError) as info:
        parse(text)  # type: ignore[arg-type]
    err = info.value
    assert err.column == column, str(err)
    assert reason in err.reason
    assert f"column {column}" in str(err) and reason in str(err)
    assert isinstance(err, ValueError)


def test_error_message_format() -> None:
    with pytest.raises(SelectorError) as info:
        parse("app == foo")
    lines = str(info.value).splitlines()
    assert lines[0] == "invalid selector at column 7: expected a quoted string after '==' in \"app == foo\""
    assert lines[1] == "  app == foo"
    assert lines[2] == "         ^"
    assert info.value.selector == "app == foo"


def test_nesting_limit_is_inclusive() -> None:
    assert parse("!" * MAX_DEPTH + "has(a)").evaluate({}) is (MAX_DEPTH % 2 == 1)
    assert parse("(" * MAX_DEPTH + "has(a)" + ")" * MAX_DEPTH) == Has("a")


def test_deep_selector_evaluates_correctly() -> None:
    # Node depth beyond the inline-compilation budget exercises sub-matchers.
    text = "has(z)"
    for i in range(20):  # 3 nesting levels each, under MAX_DEPTH
        text = f"(k{i % 3} == 'v' || !(has(k{(i + 1) % 3}) && {text}))"
    sel = parse(text)
    for labels in ({}, {"k0": "v"}, {"k1": "x", "k2": "v", "z": ""}, {"k0": "x", "k1": "x", "k2": "x"}):
        assert sel.evaluate(labels) is reference_eval(sel, labels)
    assert parse(str(sel)) == sel


# -- helpers -------------------------------------------------------------------------


def test_and_() -> None:
    a, b = parse("a == 'x'"), parse("has(b)")
    assert and_() is ALL
    assert and_(ALL, ALL) is ALL
    assert and_(ALL, a) is a
    assert and_(a, ALL, b) == parse("a == 'x' && has(b)")
    assert and_(parse("a == 'x' && has(c)"), b) == parse("a == 'x' && has(c) && has(b)")
    assert and_(parse("has(a) || has(c)"), b) == parse("(has(a) || has(c)) && has(b)")


def test_prefix_keys() -> None:
    sel = parse(
        "team == 'a' && !has(x) || kubernetes.io/metadata.name in {'n'} && global() && all()"
        " || t not in {} || t != 'q' || t contains 'c' || t starts with 's' || t ends with 'e'"
    )
    assert prefix_keys(sel, "pcns.") == parse(
        "pcns.team == 'a' && !has(pcns.x) || pcns.kubernetes.io/metadata.name in {'n'} && global() && all()"
        " || pcns.t not in {} || pcns.t != 'q' || pcns.t contains 'c' || pcns.t starts with 's'"
        " || pcns.t ends with 'e'"
    )
    assert prefix_keys(ALL, "pcns.") is ALL
    assert prefix_keys(Global(), "pcsa.") == Global()
    assert prefix_keys(sel, "") is sel
    with pytest.raises(SelectorError):
        prefix_keys(sel, "bad prefix ")


def test_from_label_selector() -> None:
    assert from_label_selector(None, None) is ALL
    assert from_label_selector({}, []) is ALL
    sel = from_label_selector(
        {"b": "2", "a": "1"},
        [
            {"key": "c", "operator": "In", "values": ["y", "x"]},
            {"key": "a", "operator": "NotIn", "values": ["3"]},
            {"key": "d", "operator": "Exists"},
            {"key": "e", "operator": "DoesNotExist", "values": []},
        ],
        "spec.podSelector",
    )
    assert str(sel) == "a == '1' && a not in {'3'} && b == '2' && c in {'x', 'y'} && has(d) && !has(e)"
    assert sel.evaluate({"a": "1", "b": "2", "c": "x", "d": ""})
    assert not sel.evaluate({"a": "1", "b": "2", "c": "x", "d": "", "e": ""})
    reordered = from_label_selector(
        {"a": "1", "b": "2"},
        [
            {"key": "e", "operator": "DoesNotExist"},
            {"key": "d", "operator": "Exists"},
            {"key": "a", "operator": "NotIn", "values": ["3"]},
            {"key": "c", "operator": "In", "values": ["x", "y"]},
        ],
    )
    assert reordered == sel
    assert from_label_selector({"q": "it's"}, None) == parse("q == \"it's\"")


LABEL_SELECTOR_ERRORS: list[tuple[object, object, str]] = [
    (None, [{"key": "a", "operator": "Equals", "values": ["x"]}], "spec.podSelector.matchExpressions[0].operator"),
    (None, [{"key": "a", "operator": "In", "values": []}], "spec.podSelector.matchExpressions[0].values"),
    (None, [{"key": "a", "operator": "In"}], "spec.podSelector.matchExpressions[0].values"),
    (None, [{"key": "a", "operator": "Exists", "values": ["x"]}], "spec.podSelector.matchExpressions[0].values"),
    (None, [{"key": "a", "operator": "In", "values": "x"}], "spec.podSelector.matchExpressions[0].values"),
    (None, [{"key": "a", "operator": "In", "values": [1]}], "spec.podSelector.matchExpressions[0].values[0]"),
    (None, [{"key": "a", "operator": "In", "values": ["'\""]}], "spec.podSelector.matchExpressions[0].values[0]"),
    (None, [{"operator": "Exists"}], "spec.podSelector.matchExpressions[0].key"),
    (None, [{"key": "a", "operator": "Exists"}, "junk"], "spec.podSelector.matchExpressions[1]"),
    ({"a": "both ' and \""}, None, "spec.podSelector.matchLabels['a']"),
    ({"bad key": "x"}, None, "spec.podSelector.matchLabels['bad key']"),
    ({"a": 1}, None, "spec.podSelector.matchLabels['a']"),
]


@pytest.mark.parametrize(("labels", "exprs", "path"), LABEL_SELECTOR_ERRORS)
def test_from_label_selector_errors(labels: object, exprs: object, path: str) -> None:
    with pytest.raises(SelectorError) as info:
        from_label_selector(labels, exprs, "spec.podSelector")  # type: ignore[arg-type]
    assert info.value.reason.startswith(path + ":"), info.value.reason
    assert path in str(info.value)


def test_constructors_reject_unprintable_selectors() -> None:
    with pytest.raises(SelectorError):
        Equals("a", "'\"")
    with pytest.raises(SelectorError):
        Has("not a key")
    with pytest.raises(SelectorError):
        In("a", "abc")  # type: ignore[arg-type]
    with pytest.raises(SelectorError):
        And((Has("a"),))


# -- property tests ----------------------------------------------------------------

KEY_POOL = ["a", "b", "app", "x.y", "pcns.team", "projectcalico.org/orchestrator", "has", "in", NAMESPACE_LABEL]
VALUE_POOL = ["", "a", "b", "ab", "ba", "it's", 'say "hi"', "x && y || (z)"]

pool_keys = st.sampled_from(KEY_POOL)
any_keys = st.one_of(
    pool_keys,
    st.from_regex(r"([a-z0-9]([a-z0-9-]{0,3}[a-z0-9])?\.){0,2}[a-z]{1,3}/[A-Za-z0-9_]([A-Za-z0-9_.-]{0,4}[A-Za-z0-9_])?",
                  fullmatch=True),
)
values = st.one_of(
    st.sampled_from(VALUE_POOL),
    st.text(alphabet="ab '\"{},()&|!=\t", max_size=6).filter(lambda v: not ("'" in v and '"' in v)),
)


LEAF_KINDS: list[type[Selector]] = [All, Global, Has, Equals, NotEquals, Contains, StartsWith, EndsWith, In, NotIn]


def leaf_of(
    kind: type[Selector], keys: st.SearchStrategy[str], values: st.SearchStrategy[str] = values
) -> st.SearchStrategy[Selector]:
    """Random leaves of one ``kind`` testing labels named by ``keys``."""
    if kind in (All, Global):
        return st.just(kind())
    if kind is Has:
        return st.builds(Has, keys)
    if kind in (In, NotIn):
        return st.builds(kind, keys, st.frozensets(values, max_size=3))
    return st.builds(kind, keys, values)


def leaf_nodes(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Selector]:
    """Every kind of leaf, testing labels named by ``keys``."""
    return st.sampled_from(LEAF_KINDS).flatmap(lambda kind: leaf_of(kind, keys))


def selector_trees(keys: st.SearchStrategy[str]) -> st.SearchStrategy[Selector]:
    """Random valid ASTs whose label tests use ``keys``."""
    return st.recursive(
        leaf_nodes(keys),
        lambda inner: st.one_of(
            st.builds(Not, inner),
            st.builds(And, st.lists(inner, min_size=2, max_size=4).map(tuple)),
            st.builds(Or, st.lists(inner, min_size=2, max_size=4).map(tuple)),
        ),
        max_leaves=12,
    )


selectors = selector_trees(any_keys)
# Keys and values drawn from small pools so labels often hit the selector's tests.
pool_selectors = selector_trees(pool_keys)
label_dicts = st.dictionaries(pool_keys, st.sampled_from(VALUE_POOL) | values, min_size=2, max_size=len(KEY_POOL))


def reference_eval(sel: Selector, labels: Mapping[str, str]) -> bool:
    """Independent, deliberately naive interpreter over the AST."""
    if isinstance(sel, All):
        return True
    if isinstance(sel, Global):
        return NAMESPACE_LABEL not in labels
    if isinstance(sel, Not):
        return not reference_eval(sel.operand, labels)
    if isinstance(sel, And):
        return all(reference_eval(c, labels) for c in sel.operands)
    if isinstance(sel, Or):
        return any(reference_eval(c, labels) for c in sel.operands)
    assert isinstance(sel, (Has, Equals, NotEquals, Contains, StartsWith, EndsWith, In, NotIn))
    present = sel.key in labels
    value = labels.get(sel.key, "")
    if isinstance(sel, Has):
        return present
    if isinstance(sel, NotEquals):
        return not present or value != sel.value
    if isinstance(sel, NotIn):
        return not present or value not in sel.values
    if not present:
        return False
    if isinstance(sel, Equals):
        return value == sel.value
    if isinstance(sel, In):
        return value in sel.values
    if isinstance(sel, Contains):
        return sel.value in value
    if isinstance(sel, StartsWith):
        return value.startswith(sel.value)
    return value.endswith(sel.value)


@PROPS
@given(selectors)
def test_print_parse_roundtrip(sel: Selector) -> None:
    text = str(sel)
    reparsed = parse(text)
    assert reparsed == sel
    assert hash(reparsed) == hash(sel)
    assert str(reparsed) == text


SELECTORISH = "()!&|='\"{},abcdehilnorstw .-/\t"


@PROPS
@given(st.one_of(st.text(max_size=60), st.text(alphabet=SELECTORISH, max_size=60)))
def test_parse_arbitrary_text_only_raises_selector_error(text: str) -> None:
    try:
        sel = parse(text)
    except SelectorError as err:
        assert 0 <= err.column <= len(text)
        assert str(err)
    else:
        assert isinstance(sel, Selector)
        assert parse(str(sel)) == sel


@PROPS
@given(st.lists(st.sampled_from(["has(a)", "a == 'x'", "&&", "||", "!", "(", ")", " ", "in", "{", "}", "'b'", ","]),
                max_size=30).map("".join))
def test_parse_token_soup(text: str) -> None:
    try:
        sel = parse(text)
    except SelectorError:
        return
    assert parse(str(sel)) == sel


short_values = st.text(alphabet="ab", max_size=3)


@pytest.mark.parametrize("kind", LEAF_KINDS, ids=lambda kind: kind.__name__)
def test_leaf_evaluate_agrees_with_reference(kind: type[Selector]) -> None:
    @settings(max_examples=100, deadline=None)
    @given(
        leaf_of(kind, st.just("a"), short_values),
        st.dictionaries(st.sampled_from(["a", "a", "a", NAMESPACE_LABEL]), short_values),
    )
    def check(sel: Selector, labels: dict[str, str]) -> None:
        assert sel.evaluate(labels) is reference_eval(sel, labels)
        assert Not(sel).evaluate(labels) is not reference_eval(sel, labels)

    check()


@PROPS
@given(pool_selectors, st.lists(label_dicts, min_size=1, max_size=8))
def test_evaluate_agrees_with_reference(sel: Selector, label_sets: list[dict[str, str]]) -> None:
    for labels in label_sets:
        expected = reference_eval(sel, labels)
        assert sel.evaluate(labels) is expected
        assert parse(str(sel)).evaluate(labels) is expected


@PROPS
@given(pool_selectors, label_dicts)
def test_prefix_keys_matches_prefixed_labels(sel: Selector, labels: dict[str, str]) -> None:
    moved = {"pcns." + k: v for k, v in labels.items()}
    if NAMESPACE_LABEL in labels:  # global() keeps reading the unprefixed label
        moved[NAMESPACE_LABEL] = labels[NAMESPACE_LABEL]
    assert prefix_keys(sel, "pcns.").evaluate(moved) is sel.evaluate(labels)
