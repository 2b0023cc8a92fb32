"""Lexer and parser for rule conditions: a subset of CEL.

The grammar is CEL's (cel-spec ``doc/langdef.md`` §"Syntax"), restricted to
what this version supports; precedence and associativity are CEL's::

    Expr           = ConditionalOr ["?" ConditionalOr ":" Expr]
    ConditionalOr  = [ConditionalOr "||"] ConditionalAnd
    ConditionalAnd = [ConditionalAnd "&&"] Relation
    Relation       = [Relation Relop] Addition
    Addition       = [Addition ("+" | "-")] Multiplication
    Multiplication = [Multiplication ("*" | "/")] Unary
    Relop          = "<" | "<=" | ">=" | ">" | "==" | "!=" | "in"
    Unary          = Primary | "!" {"!"} Primary | "-" {"-"} Primary
    Primary        = IDENT | IDENT "(" [Expr {"," Expr}] ")" | "(" Expr ")"
                   | "[" [Expr {"," Expr}] "]" | INT_LIT | FLOAT_LIT | STRING_LIT
                   | DURATION_LIT | "true" | "false"

``INT_LIT`` is decimal or ``0x`` hex (a CEL ``int``), ``FLOAT_LIT`` is
``DIGIT* . DIGIT+ EXPONENT?`` or ``DIGIT+ EXPONENT`` (a ``double``),
``STRING_LIT`` is single- or double-quoted with the escapes ``\\ \" \' \n
\r \t``. ``DURATION_LIT`` is our one addition to CEL's lexical grammar: a
number with a unit, ``500ms``, ``30s``, ``10m``, ``1h``, ``1d`` (only where a
function takes a duration; ``duration("10m")`` is accepted too). ``//``
starts a comment to the end of the line. CEL constructs outside the subset
(``%``, ``null``, field selection, maps, unsigned and byte literals) are
rejected with a message saying so, not a generic syntax error.

Positions are 0-based character offsets into the condition text; the caller
(``compiler``/``bundle``) maps them to file lines and columns.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

__all__ = [
    "Binary",
    "Bool",
    "Call",
    "ConditionError",
    "Conditional",
    "DurationLit",
    "Expr",
    "Ident",
    "Int",
    "ListLit",
    "Number",
    "Str",
    "Unary",
    "children",
    "parse",
    "parse_duration",
]

INT_MIN, INT_MAX = -(2**63), 2**63 - 1
#: Longest condition text accepted (characters).
MAX_LENGTH = 10_000

#: Deepest AST accepted (keeps the recursion of later passes bounded).
MAX_DEPTH = 100
#: Deepest nesting of parentheses / conditionals accepted by the parser.
MAX_NESTING = 32

# CEL reserved words (langdef.md §"Syntax"): not usable as identifiers.
RESERVED = frozenset(
    {
        "as", "break", "const", "continue", "else", "for", "function", "if", "import", "let",
        "loop", "package", "namespace", "return", "var", "void", "while", "in", "null", "true",
        "false",
    }
)  # fmt: skip


class ConditionError(Exception):
    """A condition does not parse or type-check; ``offset`` is where, in the text."""

    def __init__(self, message: str, offset: int) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


# -- AST ---------------------------------------------------------------------
# Positions do not take part in equality, so trees compare by structure.


@dataclass(frozen=True)
class Number:
    value: float
    start: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Int:
    """A CEL ``int`` literal (64-bit signed); ``2**63`` only directly under a unary minus."""

    value: int
    start: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Str:
    value: str
    start: int = field(default=0, compare=False)


@dataclass(frozen=True)
class DurationLit:
    """A duration such as ``10m``, in milliseconds."""

    ms: int
    start: int = field(default=0, compare=False)


@dataclass(frozen=True)
class ListLit:
    items: tuple[Expr, ...]
    start: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Expr, ...]
    start: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Bool:
    value: bool
    start: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Ident:
    name: str
    start: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Unary:
    op: str  # "-" or "!"
    operand: Expr
    start: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Binary:
    op: str  # "+ - * / < <= > >= == != in && ||"
    left: Expr
    right: Expr
    start: int = field(default=0, compare=False)
    op_pos: int = field(default=0, compare=False)


@dataclass(frozen=True)
class Conditional:
    cond: Expr
    then: Expr
    otherwise: Expr
    start: int = field(default=0, compare=False)
    op_pos: int = field(default=0, compare=False)  # the "?"


Expr = (
    Number | Int | Str | DurationLit | ListLit | Call | Bool | Ident | Unary | Binary | Conditional
)


# -- lexer -------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # "num", "int", "str", "dur", "ident", "op", "eof"
    text: str
    pos: int
    value: float = 0.0
    ivalue: int = 0
    svalue: str = ""


_DIGITS = "0123456789"
_SPACE = re.compile(r"(?:[ \t\r\n\f]+|//[^\r\n]*)+")
_NUMBER = re.compile(
    r"0[xX][0-9a-fA-F]+|(?:[0-9]*\.[0-9]+(?:[eE][+-]?[0-9]+)?|[0-9]+[eE][+-]?[0-9]+)|[0-9]+"
)
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h|d)(?![_a-zA-Z0-9])")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_ESCAPES = {"\\": "\\", '"': '"', "'": "'", "n": "\n", "r": "\r", "t": "\t"}
_IDENT = re.compile(r"[_a-zA-Z][_a-zA-Z0-9]*")
# Longest first, so that "<=" is not read as "<" "=".
_OPERATORS = (
    "<=", ">=", "==", "!=", "&&", "||", "<", ">", "+", "-", "*", "/", "!", "?", ":", "(", ")",
    "[", "]", ",",
)  # fmt: skip
_UNSUPPORTED = {
    "%": "the '%' operator is not supported in this version",
    ".": "field selection ('.') is not supported",
    "{": "maps ('{') are not supported",
    "}": "maps ('}') are not supported",
    "=": "unexpected '='; did you mean '=='?",
    "&": "unexpected '&'; did you mean '&&'?",
    "|": "unexpected '|'; did you mean '||'?",
}


def _tokens(text: str) -> Iterator[_Token]:
    # A generator: the parser pulls tokens, so errors come out in source order.
    last_end = 0
    pos, n = 0, len(text)
    while True:
        m = _SPACE.match(text, pos)
        if m:
            pos = m.end()
        if pos >= n:
            # "Unexpected end" points just after the last token.
            yield _Token("eof", "", last_end)
            return
        ch = text[pos]
        if ch in "\"'":
            tok = _string(text, pos)
            yield tok
            pos = last_end = pos + len(tok.text)
            continue
        m = _DURATION.match(text, pos) if ch in _DIGITS else None
        if m:
            ms = float(m.group(1)) * _UNIT_MS[m.group(2)]
            if ms != int(ms) or ms > 366 * 86_400_000:
                raise ConditionError(
                    f"duration {m.group()!r} must be a whole number of ms, at most 366d", pos
                )
            yield _Token("dur", m.group(), pos, ivalue=int(ms))
            pos = last_end = m.end()
            continue
        if ch in _DIGITS or (ch == "." and pos + 1 < n and text[pos + 1] in _DIGITS):
            m = _NUMBER.match(text, pos)
            assert m is not None
            end = m.end()
            lit = m.group()
            if end < n and (text[end] in "uU"):
                raise ConditionError("unsigned integer literals are not supported", pos)
            if end < n and (text[end].isalnum() or text[end] in "_."):
                raise ConditionError(f"malformed number {text[pos : end + 1]!r}", pos)
            if lit[:2] in ("0x", "0X") or not any(c in lit for c in ".eE"):
                ivalue = int(lit, 16) if lit[:2] in ("0x", "0X") else int(lit)
                if ivalue > INT_MAX + 1:
                    raise ConditionError(f"integer {lit[:20]!r} is out of range for an int", pos)
                yield _Token("int", lit, pos, ivalue=ivalue)
                pos = last_end = end
                continue
            try:
                value = float(lit)
            except OverflowError:
                value = math.inf
            if math.isinf(value):
                raise ConditionError(f"number {lit[:20]!r} is out of range for a double", pos)
            yield _Token("num", lit, pos, value)
            pos = last_end = end
            continue
        m = _IDENT.match(text, pos)
        if m:
            yield _Token("ident", m.group(), pos)
            pos = last_end = m.end()
            continue
        for op in _OPERATORS:
            if text.startswith(op, pos):
                yield _Token("op", op, pos)
                pos = last_end = pos + len(op)
                break
        else:
            raise ConditionError(_UNSUPPORTED.get(ch, f"unexpected character {ch!r}"), pos)


def _string(text: str, pos: int) -> _Token:
    quote = text[pos]
    if text.startswith(quote * 3, pos):
        raise ConditionError("triple-quoted strings are not supported", pos)
    out: list[str] = []
    p = pos + 1
    while p < len(text):
        c = text[p]
        if c == quote:
            return _Token("str", text[pos : p + 1], pos, svalue="".join(out))
        if c in "\r\n":
            break
        if c == "\\":
            esc = text[p + 1 : p + 2]
            if esc not in _ESCAPES:
                raise ConditionError(f"unsupported escape sequence '\\{esc}'", p)
            out.append(_ESCAPES[esc])
            p += 2
            continue
        out.append(c)
        p += 1
    raise ConditionError("unterminated string literal", pos)


# -- parser ------------------------------------------------------------------

_PRECEDENCE = {
    "||": 1,
    "&&": 2,
    "<": 3,
    "<=": 3,
    ">": 3,
    ">=": 3,
    "==": 3,
    "!=": 3,
    "in": 3,
    "+": 4,
    "-": 4,
    "*": 5,
    "/": 5,
}


class _Parser:
    def __init__(self, text: str) -> None:
        if len(text) > MAX_LENGTH:
            raise ConditionError(f"condition longer than {MAX_LENGTH} characters", MAX_LENGTH)
        self.stream = _tokens(text)
        self.tok = next(self.stream)  # one token of lookahead
        self.depth = 0

    def advance(self) -> _Token:
        t = self.tok
        if t.kind != "eof":
            self.tok = next(self.stream)
        return t

    def at(self, text: str) -> bool:
        return self.tok.kind == "op" and self.tok.text == text

    def fail_here(self, expected: str) -> ConditionError:
        t = self.tok
        if t.kind == "eof":
            return ConditionError(f"unexpected end of condition; expected {expected}", t.pos)
        return ConditionError(f"expected {expected}, found {t.text!r}", t.pos)

    def enter(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ConditionError(f"expression nested too deeply (limit {MAX_NESTING})", pos)

    def parse(self) -> Expr:
        if self.tok.kind == "eof":
            raise ConditionError("condition is empty", 0)
        e = self.expr()
        if self.tok.kind != "eof":
            raise ConditionError(
                f"unexpected {self.tok.text!r} after a complete expression", self.tok.pos
            )
        if _depth(e) > MAX_DEPTH:
            raise ConditionError(f"expression too deep (limit {MAX_DEPTH} levels)", 0)
        return e

    def expr(self) -> Expr:
        # Expr = ConditionalOr ["?" ConditionalOr ":" Expr]; right-associative.
        self.enter(self.tok.pos)
        cond = self.binary(1)
        if self.at("?"):
            q = self.advance()
            then = self.binary(1)
            if not self.at(":"):
                raise self.fail_here("':' of the conditional")
            self.advance()
            otherwise = self.expr()
            cond = Conditional(cond, then, otherwise, start=cond.start, op_pos=q.pos)
        self.depth -= 1
        return cond

    def binary(self, min_prec: int) -> Expr:
        # Precedence climbing; every binary level is left-associative in CEL.
        left = self.unary()
        while self.tok.kind in ("op", "ident") and _PRECEDENCE.get(self.tok.text, 0) >= min_prec:
            if self.tok.kind == "ident" and self.tok.text != "in":
                break
            op = self.advance()
            right = self.binary(_PRECEDENCE[op.text] + 1)
            left = Binary(op.text, left, right, start=left.start, op_pos=op.pos)
        return left

    def unary(self) -> Expr:
        # Unary = Primary | "!" {"!"} Primary | "-" {"-"} Primary: no mixing of ! and -.
        if self.at("!") or self.at("-"):
            ops = [self.advance()]
            while self.at(ops[0].text):
                ops.append(self.advance())
            if self.at("!") or self.at("-"):
                other = self.tok.text
                raise ConditionError(
                    f"'{other}' cannot follow '{ops[0].text}' directly in CEL; "
                    f"use parentheses: {ops[0].text}({other}...)",
                    self.tok.pos,
                )
            operand = self.primary()
            for op in reversed(ops):
                if isinstance(operand, Int) and op.text == "-" and operand.value == INT_MAX + 1:
                    operand = Int(INT_MIN, start=op.pos)  # the literal -9223372036854775808
                    continue
                operand = Unary(op.text, operand, start=op.pos)
            return operand
        return self.primary()

    def primary(self) -> Expr:
        t = self.tok
        if t.kind == "num":
            self.advance()
            return Number(t.value, start=t.pos)
        if t.kind == "int":
            self.advance()
            return Int(t.ivalue, start=t.pos)
        if t.kind == "str":
            self.advance()
            return Str(t.svalue, start=t.pos)
        if t.kind == "dur":
            self.advance()
            return DurationLit(t.ivalue, start=t.pos)
        if self.at("["):
            self.advance()
            return ListLit(tuple(self.arguments("]")), start=t.pos)
        if t.kind == "ident":
            self.advance()
            if t.text in ("true", "false"):
                return Bool(t.text == "true", start=t.pos)
            if t.text == "null":
                raise ConditionError("'null' is not supported", t.pos)
            if t.text in RESERVED:
                raise ConditionError(f"'{t.text}' is a reserved word in CEL", t.pos)
            if self.at("("):
                self.advance()
                return Call(t.text, tuple(self.arguments(")")), start=t.pos)
            return Ident(t.text, start=t.pos)
        if self.at("("):
            lpar = self.advance()
            inner = self.expr()
            if not self.at(")"):
                raise self.fail_here("')'")
            self.advance()
            # The span of a parenthesised expression starts at its "(".
            return _with_start(inner, lpar.pos)
        raise self.fail_here("a number, true, false, a channel name, '(', '!' or '-'")

    def arguments(self, close: str) -> list[Expr]:
        """Comma-separated expressions up to ``close`` (consumed)."""
        self.enter(self.tok.pos)
        items: list[Expr] = []
        if not self.at(close):
            items.append(self.expr())
            while self.at(","):
                self.advance()
                items.append(self.expr())
        if not self.at(close):
            raise self.fail_here(f"',' or '{close}'")
        self.advance()
        self.depth -= 1
        return items


def _with_start(e: Expr, start: int) -> Expr:
    return replace(e, start=start)


def children(e: Expr) -> tuple[Expr, ...]:
    """The direct sub-expressions of a node, left to right."""
    if isinstance(e, Unary):
        return (e.operand,)
    if isinstance(e, Binary):
        return (e.left, e.right)
    if isinstance(e, Conditional):
        return (e.cond, e.then, e.otherwise)
    if isinstance(e, ListLit):
        return e.items
    if isinstance(e, Call):
        return e.args
    return ()


def _depth(e: Expr) -> int:
    # Iterative: the tree may be deeper than is safe to recurse into.
    best = 0
    todo = [(e, 1)]
    while todo:
        node, d = todo.pop()
        best = max(best, d)
        todo.extend((c, d + 1) for c in children(node))
    return best


def parse(text: str) -> Expr:
    """Parse a condition into an AST.

    Raises:
        ConditionError: with the offset of the offending character.
    """
    return _Parser(text).parse()


def parse_duration(text: str) -> int | None:
    """``text`` as one duration literal (``500ms``, ``10m``) in ms; None if it is not one."""
    try:
        e = parse(text)
    except ConditionError:
        return None
    return e.ms if isinstance(e, DurationLit) else None
