"""Type-check a condition against the channel schema and compile it to a Program.

Types are CEL's ``double`` and ``bool`` (integer literals are doubles in this
version, see ``native._policy_py``). The checks, each reported at the
offending token:

* an identifier must name a declared channel (a channel is a ``double``);
* ``-``, ``+ - * /`` and ``< <= > >=`` take doubles;
* ``== !=`` take two operands of the same type;
* ``!``, ``&&``, ``||`` take bools; ``c ? a : b`` needs a bool ``c`` and
  branches of one type;
* the whole condition must be a bool.

Code generation is a post-order walk emitting stack instructions. Constant
sub-expressions are folded with the evaluators' own scalar semantics, and
``&&``/``||``/``?:`` with a constant operand are simplified by CEL's rules
(``false && x`` is ``false`` and ``true && x`` is ``x`` for any ``x``,
errors included), so folding never changes a result.
"""

from __future__ import annotations

import difflib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from agent.errors import PolicySyntaxError
from agent.policy.parser import (
    Binary,
    Bool,
    Conditional,
    ConditionError,
    Expr,
    Ident,
    Number,
    Unary,
    parse,
)
from native import _policy_py as _ops
from native.policy import Program

__all__ = ["compile_condition", "compile_expr"]

DOUBLE = "double"
BOOL = "bool"

_BINARY = {
    "+": _ops.ADD,
    "-": _ops.SUB,
    "*": _ops.MUL,
    "/": _ops.DIV,
    "<": _ops.LT,
    "<=": _ops.LE,
    ">": _ops.GT,
    ">=": _ops.GE,
    "==": _ops.EQ,
    "!=": _ops.NE,
    "&&": _ops.AND,
    "||": _ops.OR,
}
_ARITHMETIC = {"+", "-", "*", "/"}
_ORDERING = {"<", "<=", ">", ">="}
_EQUALITY = {"==", "!="}
_LOGICAL = {"&&", "||"}


@dataclass
class _Code:
    """Instructions for one sub-expression; ``const`` is set when it folded to a value."""

    type: str
    instrs: list[tuple[int, float]]
    const: float | None = None


def _load(type_: str, value: float) -> _Code:
    if type_ == BOOL:
        return _Code(BOOL, [(_ops.LOAD_BOOL, value)], value)
    return _Code(DOUBLE, [(_ops.LOAD_CONST, value)], value)


class _Generator:
    def __init__(self, channels: Sequence[str]) -> None:
        self.channels = list(channels)
        self.index = {name: i for i, name in enumerate(self.channels)}

    def gen(self, e: Expr) -> _Code:
        if isinstance(e, Number):
            return _load(DOUBLE, e.value)
        if isinstance(e, Bool):
            return _load(BOOL, 1.0 if e.value else 0.0)
        if isinstance(e, Ident):
            return self.ident(e)
        if isinstance(e, Unary):
            return self.unary(e)
        if isinstance(e, Binary):
            return self.binary(e)
        return self.conditional(e)

    def ident(self, e: Ident) -> _Code:
        if e.name not in self.index:
            raise ConditionError(self.unknown_channel(e.name), e.start)
        return _Code(DOUBLE, [(_ops.LOAD_CHAN, self.index[e.name])])

    def unknown_channel(self, name: str) -> str:
        msg = f"unknown channel '{name}'"
        close = difflib.get_close_matches(name, self.channels, n=1)
        if close:
            msg += f" (did you mean '{close[0]}'?)"
        if self.channels:
            return msg + "; known channels: " + ", ".join(self.channels)
        return msg + "; the bundle declares no channels"

    def unary(self, e: Unary) -> _Code:
        operand = self.gen(e.operand)
        want, op = (DOUBLE, _ops.NEG) if e.op == "-" else (BOOL, _ops.NOT)
        if operand.type != want:
            raise ConditionError(
                f"operator '{e.op}' needs a {want} operand, but got {operand.type}",
                e.operand.start,
            )
        return self.apply(want, op, [operand])

    def binary(self, e: Binary) -> _Code:
        left, right = self.gen(e.left), self.gen(e.right)
        if e.op in _EQUALITY:
            if left.type != right.type:
                raise ConditionError(
                    f"operator '{e.op}' compares {left.type} with {right.type}; "
                    "both sides must have the same type",
                    e.op_pos,
                )
        else:
            want = BOOL if e.op in _LOGICAL else DOUBLE
            for side, code, node in (("left", left, e.left), ("right", right, e.right)):
                if code.type != want:
                    raise ConditionError(
                        f"operator '{e.op}' needs {want} operands, "
                        f"but its {side} operand is {code.type}",
                        node.start,
                    )
        result = DOUBLE if e.op in _ARITHMETIC else BOOL
        if e.op in _LOGICAL:
            simplified = _simplify_logical(e.op, left, right)
            if simplified is not None:
                return simplified
        return self.apply(result, _BINARY[e.op], [left, right])

    def conditional(self, e: Conditional) -> _Code:
        cond, then, otherwise = self.gen(e.cond), self.gen(e.then), self.gen(e.otherwise)
        if cond.type != BOOL:
            raise ConditionError(
                f"the condition of '?:' must be bool, but it is {cond.type}", e.cond.start
            )
        if then.type != otherwise.type:
            raise ConditionError(
                f"the branches of '?:' have different types: {then.type} and {otherwise.type}",
                e.otherwise.start,
            )
        if cond.const is not None and cond.const == cond.const:
            # A constant (non-error) condition selects its branch; the other is dropped.
            return then if cond.const == _ops.TRUE else otherwise
        return self.apply(then.type, _ops.SELECT, [cond, then, otherwise])

    @staticmethod
    def apply(result: str, op: int, args: list[_Code]) -> _Code:
        if all(a.const is not None for a in args):
            value = _ops.apply_op(op, [a.const for a in args])  # type: ignore[misc]
            if value == value:  # fold unless it is an error: keep errors visible as code
                return _load(result, value)
        instrs = [i for a in args for i in a.instrs]
        instrs.append((op, 0))
        return _Code(result, instrs)


def _simplify_logical(op: str, left: _Code, right: _Code) -> _Code | None:
    # CEL commutative logic: the absorbing constant wins whatever the other
    # side is (error included); the neutral constant leaves the other side.
    absorbing = _ops.FALSE if op == "&&" else _ops.TRUE
    for this, other in ((left, right), (right, left)):
        if this.const is None or this.const != this.const:
            continue
        if this.const == absorbing:
            return _load(BOOL, absorbing)
        if other.const is None:
            return other
    return None


def compile_expr(text: str, channels: Sequence[str]) -> Program:
    """Parse, check and compile a condition.

    Raises:
        ConditionError: with the offset of the problem in ``text``.
        ValueError: ``channels`` has duplicates (API misuse).
    """
    if len(set(channels)) != len(channels):
        raise ValueError("channel names must be unique")
    expr = parse(text)
    code = _Generator(channels).gen(expr)
    if code.type != BOOL:
        raise ConditionError(f"a condition must be bool, but this expression is {code.type}", 0)
    consts: list[float] = []
    slot: dict[bytes, int] = {}
    opcodes, operands = [], []
    for op, arg in code.instrs:
        if op == _ops.LOAD_CONST:
            key = struct.pack("<d", arg)  # by bits: keeps 0.0 and -0.0 apart
            if key not in slot:
                slot[key] = len(consts)
                consts.append(arg)
            arg = slot[key]
        opcodes.append(op)
        operands.append(int(arg))
    return Program(opcodes, operands, consts, n_channels=len(channels), source=text.strip())


def offset_to_line_col(text: str, offset: int, line: int = 1, column: int = 1) -> tuple[int, int]:
    """Line and column of ``text[offset]`` given that ``text`` starts at (line, column)."""
    before = text[:offset]
    parts = before.splitlines(keepends=True)
    if not parts:
        return line, column
    if parts[-1].splitlines() != [parts[-1]]:  # ends with a line break
        return line + len(parts), 1
    if len(parts) == 1:
        return line, column + len(parts[0])
    return line + len(parts) - 1, len(parts[-1]) + 1


def compile_condition(
    text: str,
    channels: Sequence[str],
    *,
    source: str = "",
    line: int = 1,
    column: int = 1,
    full_text: str = "",
) -> Program:
    """Compile one condition against the channel list (in column order).

    Args:
        text: the condition.
        channels: channel names; position = row in the ``columns`` input.
        source: file name for diagnostics.
        line, column: where ``text`` starts in ``source`` (1-based).
        full_text: the whole source file, for the caret excerpt.

    Raises:
        PolicySyntaxError: the condition does not parse or type-check; the
            position is in ``source`` coordinates.
    """
    try:
        return compile_expr(text, channels)
    except ConditionError as e:
        err_line, err_col = offset_to_line_col(text, e.offset, line, column)
        if not full_text:
            # No file text: show the condition itself, placed where it would be.
            full_text = "\n" * (line - 1) + " " * (column - 1) + text
        raise PolicySyntaxError(
            e.message, source=source, line=err_line, column=err_col, text=full_text
        ) from None
