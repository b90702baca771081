"""Recursive-descent parser for the Calico (projectcalico.org/v3) selector language.

Grammar, lowest precedence first::

    or      := and ("||" and)*
    and     := unary ("&&" unary)*
    unary   := "!"* primary
    primary := "(" or ")" | "all()" | "global()" | "has(" key ")"
             | key ("==" | "!=" | "contains" | "starts with" | "ends with") string
             | key ["not"] "in" "{" [string ("," string)*] "}"

Lexing is done in place because it is context dependent: ``has``, ``in`` or
``all`` are ordinary label keys unless they sit where a keyword is expected.
Nesting is capped so hostile input fails with SelectorError, never
RecursionError.
"""

from __future__ import annotations

from typing import NoReturn

from vppagent.selector.ast import (
    ALL,
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
from vppagent.selector.keys import KEY_CHARS, key_problem

#: Maximum nesting of '(' and '!' combined; real selectors use a handful.
MAX_DEPTH = 64

_WHITESPACE = frozenset(" \t\n\r\f\v")
_QUOTES = frozenset("'\"")
_VALUE_OPS = {"contains": Contains, "starts": StartsWith, "ends": EndsWith}
_OPERATORS_HINT = "==, !=, in, not in, contains, starts with or ends with"


def parse(text: str) -> Selector:
    """Parse selector ``text``; empty or blank text means ``all()``.

    Raises SelectorError (and nothing else) for any invalid input.
    """
    if not isinstance(text, str):
        raise SelectorError(repr(text)[:100], 0, f"selector must be a string, not {type(text).__name__}")
    return _Parser(text).parse()


class _Parser:
    """One-shot parser state: the text, a cursor and the nesting depth."""

    __slots__ = ("text", "pos", "depth")

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0
        self.depth = 0

    # -- entry ------------------------------------------------------------

    def parse(self) -> Selector:
        self._skip_ws()
        if self._at_end():
            return ALL
        node = self._or()
        self._skip_ws()
        if not self._at_end():
            if self.text[self.pos] == ")":
                self._fail("unmatched ')'")
            self._fail(f"unexpected {self.text[self.pos]!r}: expected '&&', '||' or end of selector")
        return node

    # -- grammar ----------------------------------------------------------

    def _or(self) -> Selector:
        terms = [self._and()]
        while self._take("||"):
            terms.append(self._and())
        return terms[0] if len(terms) == 1 else Or(tuple(terms))

    def _and(self) -> Selector:
        terms = [self._unary()]
        while self._take("&&"):
            terms.append(self._unary())
        return terms[0] if len(terms) == 1 else And(tuple(terms))

    def _unary(self) -> Selector:
        bangs = 0
        self._skip_ws()
        while self._peek() == "!":
            bangs += 1
            self._enter()
            self.pos += 1
            self._skip_ws()
        node = self._primary()
        self.depth -= bangs
        for _ in range(bangs):
            node = Not(node)
        return node

    def _primary(self) -> Selector:
        self._skip_ws()
        if self._at_end():
            self._fail("unexpected end of selector: expected an expression")
        char = self.text[self.pos]
        if char == "(":
            return self._group()
        if char in KEY_CHARS:
            start = self.pos
            word = self._word()
            self._skip_ws()
            if word in ("all", "global", "has") and self._peek() == "(":
                return self._function(word, start)
            return self._comparison(self._check_key(word, start), start)
        self._fail(f"unexpected {char!r}: expected a label key, has(), all(), global(), '!' or '('")

    def _group(self) -> Selector:
        open_at = self.pos
        self._enter()
        self.pos += 1
        node = self._or()
        self._skip_ws()
        if self._peek() != ")":
            self._fail(f"expected ')' to close '(' at column {open_at}")
        self.pos += 1
        self.depth -= 1
        return node

    def _function(self, name: str, start: int) -> Selector:
        self.pos += 1  # the '('
        self._skip_ws()
        node: Selector
        if name == "has":
            key_at = self.pos
            word = self._word()
            if not word:
                self._fail("expected a label key inside has()")
            node = Has(self._check_key(word, key_at))
            self._skip_ws()
        else:
            node = ALL if name == "all" else Global()
        if self._peek() != ")":
            self._fail(f"expected ')' to close '{name}(' at column {start}")
        self.pos += 1
        return node

    def _comparison(self, key: str, start: int) -> Selector:
        if self._take("=="):
            return Equals(key, self._string("'=='"))
        if self._take("!="):
            return NotEquals(key, self._string("'!='"))
        op_at = self.pos
        word = self._word()
        if word == "in":
            return In(key, self._set("'in'"))
        if word == "not":
            self._expect_word("in", "'not'", op_at)
            return NotIn(key, self._set("'not in'"))
        if word in _VALUE_OPS:
            if word != "contains":
                self._expect_word("with", f"'{word}'", op_at)
            return _VALUE_OPS[word](key, self._string(f"'{word}'" if word == "contains" else f"'{word} with'"))
        self.pos = op_at
        if self._at_end():
            self._fail(f"unexpected end of selector: expected an operator ({_OPERATORS_HINT}) after label key {key!r}")
        self._fail(f"expected an operator ({_OPERATORS_HINT}) after label key {key!r}")

    def _expect_word(self, wanted: str, after: str, op_at: int) -> None:
        had_space = self._skip_ws()
        at = self.pos
        if not had_space or self._word() != wanted:
            self.pos = at
            self._fail(f"expected '{wanted}' after {after} (operator at column {op_at})")

    def _string(self, after: str) -> str:
        self._skip_ws()
        quote_at = self.pos
        char = self._peek()
        if char not in _QUOTES:
            self._fail(f"expected a quoted string after {after}")
        end = self.text.find(char, quote_at + 1)
        if end < 0:
            self._fail(f"unterminated string starting at column {quote_at}")
        self.pos = end + 1
        return self.text[quote_at + 1 : end]

    def _set(self, after: str) -> frozenset[str]:
        self._skip_ws()
        if self._peek() != "{":
            self._fail(f"expected '{{' after {after}")
        self.pos += 1
        self._skip_ws()
        values: list[str] = []
        if self._take("}"):
            return frozenset()
        values.append(self._string("'{'"))
        while True:
            self._skip_ws()
            if self._take("}"):
                return frozenset(values)
            if not self._take(","):
                self._fail("expected ',' or '}' in set")
            values.append(self._string("','"))

    # -- lexing helpers ---------------------------------------------------

    def _word(self) -> str:
        """Consume a maximal run of key characters (possibly empty)."""
        text, start = self.text, self.pos
        end = start
        while end < len(text) and text[end] in KEY_CHARS:
            end += 1
        self.pos = end
        return text[start:end]

    def _check_key(self, word: str, start: int) -> str:
        problem = key_problem(word)
        if problem is not None:
            self.pos = start
            self._fail(problem)
        return word

    def _skip_ws(self) -> bool:
        """Skip whitespace; report whether there was any."""
        text, start = self.text, self.pos
        pos = start
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        self.pos = pos
        return pos > start

    def _take(self, token: str) -> bool:
        self._skip_ws()
        if self.text.startswith(token, self.pos):
            self.pos += len(token)
            return True
        return False

    def _peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def _at_end(self) -> bool:
        return self.pos >= len(self.text)

    def _enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self._fail(f"selector too deeply nested (more than {MAX_DEPTH} levels of '(' and '!')")

    def _fail(self, reason: str) -> NoReturn:
        raise SelectorError(self.text, self.pos, reason)
