"""Type-check conditions against the channel schema and compile them to programs.

Types are CEL's ``int``, ``double``, ``bool`` and ``string`` (plus
``duration`` and ``list`` literals where a function or ``in`` takes them).
Channels are ``double`` (or ``bool`` when declared so); window aggregates,
``duration_true``, ``completeness`` and ``risk`` return ``double``. The
checks, each reported at the offending token:

* an identifier must name a declared channel; a function must be known and
  take the argument types given;
* arithmetic takes two operands of one numeric type (CEL has no implicit
  int/double conversion: ``x + 1`` is an error, ``x + 1.0`` is not);
  ordering and equality also accept an ``int`` beside a ``double`` (CEL's
  cross-type numeric comparison);
* ``!``, ``&&``, ``||`` take bools; ``c ? a : b`` needs a bool ``c`` and
  branches of one type; ``x in [..]`` needs list elements of ``x``'s type;
* the whole condition must be a bool.

Runtime values are doubles and bools (see ``native.policy_format``). Every
``int`` and ``string`` value is a constant (channels are doubles), so they
are folded here with CEL's exact semantics: 64-bit overflow and division by
zero give CEL's error value, which the program then carries (``LOAD_ERR``).
An ``int`` that would only be known at run time (an int-valued ``?:`` with a
run-time condition) is refused with a message. Constant double and bool
sub-expressions are folded with the evaluators' own scalar semantics, and
``&&``/``||``/``?:`` with a constant operand are simplified by CEL's rules
(``false && x`` is ``false`` for any ``x``, errors included).

Stateful functions (``mean(x, 10m)``, ``duration_true(c)``, ...) become
*derived rows*: the :class:`PlanBuilder` gives each distinct one a row after
the channels and risk scores, computed per reading before the conditions run
(``agent.policy.evaluator``).
"""

from __future__ import annotations

import difflib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agent.errors import PolicySyntaxError
from agent.policy.parser import (
    INT_MAX,
    INT_MIN,
    Binary,
    Bool,
    Call,
    Conditional,
    ConditionError,
    DurationLit,
    Expr,
    Ident,
    Int,
    ListLit,
    Number,
    Str,
    Unary,
    parse,
    parse_duration,
)
from native import policy_format as fmt
from native.policy import Program

__all__ = [
    "AggNode",
    "DurationNode",
    "PlanBuilder",
    "compile_condition",
    "compile_expr",
    "offset_to_line_col",
]

DOUBLE, BOOL, INT, STRING, DURATION = "double", "bool", "int", "string", "duration"
NUMERIC = (DOUBLE, INT)

_BINARY = {
    "+": fmt.ADD,
    "-": fmt.SUB,
    "*": fmt.MUL,
    "/": fmt.DIV,
    "<": fmt.LT,
    "<=": fmt.LE,
    ">": fmt.GT,
    ">=": fmt.GE,
    "==": fmt.EQ,
    "!=": fmt.NE,
    "&&": fmt.AND,
    "||": fmt.OR,
}
_ARITHMETIC = {"+", "-", "*", "/"}
_ORDERING = {"<", "<=", ">", ">="}
_EQUALITY = {"==", "!="}
_LOGICAL = {"&&", "||"}
#: functions over a channel and a duration (first argument a channel name)
WINDOW_FUNCTIONS = ("mean", "min", "max", "stddev", "count", "rate", "delta", "completeness")
FUNCTIONS = (*WINDOW_FUNCTIONS, "abs", "duration", "duration_true", "risk")


class _Error:
    """CEL's error value as a folded constant."""

    def __repr__(self) -> str:
        return "<error>"


ERROR = _Error()


@dataclass
class _Code:
    """Instructions for one sub-expression; ``const`` is set when it folded to a value."""

    type: str
    instrs: list[tuple[int, float]]
    const: Any = None  # float | bool | int | str | ERROR | None (not constant)


@dataclass(frozen=True)
class AggNode:
    """A window aggregate row: ``kind`` over row ``source`` in the last ``ms``."""

    kind: int
    source: int
    ms: int
    row: int
    text: str


@dataclass(frozen=True)
class DurationNode:
    """A ``duration_true`` row: seconds ``program`` has held, per reading."""

    instrs: tuple[tuple[int, float], ...]
    row: int
    text: str


def _const(type_: str, value: Any) -> _Code:
    if value is ERROR:
        return _Code(type_, [(fmt.LOAD_ERR, 1 if type_ == BOOL else 0)], ERROR)
    if type_ == BOOL:
        return _Code(BOOL, [(fmt.LOAD_BOOL, 1.0 if value else 0.0)], bool(value))
    if type_ == DOUBLE:
        return _Code(DOUBLE, [(fmt.LOAD_CONST, float(value))], float(value))
    return _Code(type_, [], value)  # int / string / duration: compile time only


def _int_result(v: int) -> Any:
    return v if INT_MIN <= v <= INT_MAX else ERROR


def _fold_int(op: str, a: int, b: int) -> Any:
    """CEL int arithmetic: 64-bit, overflow and division by zero are errors."""
    if op == "+":
        return _int_result(a + b)
    if op == "-":
        return _int_result(a - b)
    if op == "*":
        return _int_result(a * b)
    if b == 0:
        return ERROR
    q = abs(a) // abs(b)
    return _int_result(q if (a < 0) == (b < 0) else -q)  # truncates toward zero


def _compare(op: str, a: Any, b: Any) -> bool:
    # Python compares int with float exactly, as CEL's cross-type comparison does.
    return bool(
        {
            "<": a < b,
            "<=": a <= b,
            ">": a > b,
            ">=": a >= b,
            "==": a == b,
            "!=": a != b,
        }[op]
    )


class PlanBuilder:
    """Type-checks and compiles the expressions of one bundle onto shared rows.

    Rows: the channels (in order), then one per risk model (its score for the
    current window), then derived rows in order of first use.
    """

    def __init__(
        self,
        channels: Sequence[str],
        *,
        bool_channels: Sequence[str] = (),
        models: Sequence[str] = (),
        stateful: bool = True,
    ) -> None:
        if len(set(channels)) != len(channels):
            raise ValueError("channel names must be unique")
        self.channels = list(channels)
        self.bool_channels = set(bool_channels)
        self.models = list(models)
        self.index = {name: i for i, name in enumerate(self.channels)}
        self.stateful = stateful
        self.derived: list[AggNode | DurationNode] = []
        self._derived_key: dict[Any, int] = {}
        self.used_channels: set[str] = set()
        self.used_models: set[str] = set()
        self.text = ""

    @property
    def n_rows(self) -> int:
        return len(self.channels) + len(self.models) + len(self.derived)

    # -- public ----------------------------------------------------------------
    def check(self, text: str, want: str = BOOL) -> list[tuple[int, float]]:
        """Parse and type-check ``text`` (a ``want``-typed expression); its instructions.

        Raises:
            ConditionError: with the offset of the problem in ``text``.
        """
        expr = parse(text)
        self.text = text
        code = self.gen(expr)
        if code.type != want:
            raise ConditionError(
                f"{'a condition' if want == BOOL else 'a measure'} must be {want}, "
                f"but this expression is {code.type}",
                0,
            )
        return code.instrs

    def program(self, instrs: Sequence[tuple[int, float]], source: str = "") -> Program:
        """A verified Program over all rows (call once every expression is checked)."""
        consts: list[float] = []
        slot: dict[bytes, int] = {}
        opcodes, operands = [], []
        for op, arg in instrs:
            if op == fmt.LOAD_CONST:
                key = struct.pack("<d", arg)  # by bits: keeps 0.0 and -0.0 apart
                if key not in slot:
                    slot[key] = len(consts)
                    consts.append(arg)
                arg = slot[key]
            opcodes.append(op)
            operands.append(int(arg))
        return Program(opcodes, operands, consts, n_channels=self.n_rows, source=source.strip())

    # -- code generation --------------------------------------------------------
    def gen(self, e: Expr) -> _Code:
        if isinstance(e, Number):
            return _const(DOUBLE, e.value)
        if isinstance(e, Int):
            if e.value > INT_MAX:
                raise ConditionError("integer literal out of range for an int", e.start)
            return _const(INT, e.value)
        if isinstance(e, Str):
            return _const(STRING, e.value)
        if isinstance(e, DurationLit):
            return _const(DURATION, e.ms)
        if isinstance(e, Bool):
            return _const(BOOL, e.value)
        if isinstance(e, Ident):
            return self.ident(e)
        if isinstance(e, ListLit):
            raise ConditionError("a list is only allowed on the right of 'in'", e.start)
        if isinstance(e, Call):
            return self.call(e)
        if isinstance(e, Unary):
            return self.unary(e)
        if isinstance(e, Binary):
            return self.binary(e)
        return self.conditional(e)

    def ident(self, e: Ident) -> _Code:
        if e.name not in self.index:
            if e.name in FUNCTIONS:
                raise ConditionError(f"'{e.name}' is a function; call it: {e.name}(...)", e.start)
            raise ConditionError(self.unknown_channel(e.name), e.start)
        self.used_channels.add(e.name)
        if e.name in self.bool_channels:
            return _Code(BOOL, [(fmt.LOAD_BCHAN, self.index[e.name])])
        return _Code(DOUBLE, [(fmt.LOAD_CHAN, self.index[e.name])])

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
        if e.op == "-":
            if operand.type == INT:
                return _const(INT, ERROR if operand.const is ERROR else _int_result(-operand.const))
            if operand.type != DOUBLE:
                raise ConditionError(
                    f"operator '-' needs a double operand, but got {operand.type}", e.operand.start
                )
            return self.apply(DOUBLE, fmt.NEG, [operand])
        if operand.type != BOOL:
            raise ConditionError(
                f"operator '!' needs a bool operand, but got {operand.type}", e.operand.start
            )
        return self.apply(BOOL, fmt.NOT, [operand])

    def binary(self, e: Binary) -> _Code:
        if e.op == "in":
            return self.membership(e)
        left, right = self.gen(e.left), self.gen(e.right)
        lt, rt = left.type, right.type
        if e.op in _LOGICAL:
            for side, code, node in (("left", left, e.left), ("right", right, e.right)):
                if code.type != BOOL:
                    raise ConditionError(
                        f"operator '{e.op}' needs bool operands, "
                        f"but its {side} operand is {code.type}",
                        node.start,
                    )
            simplified = _simplify_logical(e.op, left, right)
            if simplified is not None:
                return simplified
            return self.apply(BOOL, _BINARY[e.op], [left, right])
        if e.op in _ARITHMETIC:
            if lt == rt == STRING and e.op == "+":
                return _const(STRING, left.const + right.const)
            self.operands_must_be_numbers(e, left, right)
            if lt != rt:
                hint = ""
                if {lt, rt} == {INT, DOUBLE}:
                    hint = " (CEL does not convert between int and double: write 2.0, not 2)"
                raise ConditionError(
                    f"operator '{e.op}' needs two numbers of one type, got {lt} and {rt}{hint}",
                    e.op_pos,
                )
            if lt == INT:
                if ERROR in (left.const, right.const):
                    return _const(INT, ERROR)
                return _const(INT, _fold_int(e.op, left.const, right.const))
            return self.apply(DOUBLE, _BINARY[e.op], [left, right])
        # ordering / equality
        numeric = lt in NUMERIC and rt in NUMERIC
        if e.op in _ORDERING and not (numeric or lt == rt == STRING):
            self.operands_must_be_numbers(e, left, right)
        if e.op in _EQUALITY and not (numeric or lt == rt):
            raise ConditionError(
                f"operator '{e.op}' compares {lt} with {rt}; both sides must have the same type",
                e.op_pos,
            )
        return self.binary_codes(e, left, right)

    @staticmethod
    def operands_must_be_numbers(e: Binary, left: _Code, right: _Code) -> None:
        for side, code, node in (("left", left, e.left), ("right", right, e.right)):
            if code.type not in NUMERIC:
                raise ConditionError(
                    f"operator '{e.op}' needs double operands, "
                    f"but its {side} operand is {code.type}",
                    node.start,
                )

    def as_double(self, code: _Code) -> _Code:
        """An int constant used beside a double: as that double (exact up to 2**53)."""
        if code.type != INT:
            return code
        return _const(DOUBLE, ERROR if code.const is ERROR else float(code.const))

    def membership(self, e: Binary) -> _Code:
        if not isinstance(e.right, ListLit):
            raise ConditionError("'in' needs a list literal on its right: x in [a, b]", e.op_pos)
        left = self.gen(e.left)
        items = [self.gen(i) for i in e.right.items]
        for node, item in zip(e.right.items, items):
            ok = item.type == left.type or (item.type in NUMERIC and left.type in NUMERIC)
            if not ok:
                raise ConditionError(
                    f"list element is {item.type}, but the left of 'in' is {left.type}", node.start
                )
        # x in [a, b] == x == a || x == b; an empty list gives false.
        result = _const(BOOL, False)
        for node, item in zip(e.right.items, items):
            eq = Binary("==", e.left, node, start=e.start, op_pos=e.op_pos)
            code = self.binary_codes(eq, left, item)
            result = _simplify_logical("||", result, code) or self.apply(
                BOOL, fmt.OR, [result, code]
            )
        # CEL evaluates the operands first: an error on the left, or in any list
        # element, makes the whole expression an error (even `x in []`).
        for code in [left, *items]:
            if code.const is ERROR:
                return _const(BOOL, ERROR)
            if code.const is None:
                is_error = self.apply(BOOL, fmt.NE, [code, code])  # error, else false
                result = self.apply(BOOL, fmt.SELECT, [is_error, _const(BOOL, ERROR), result])
        return result

    def binary_codes(self, e: Binary, left: _Code, right: _Code) -> _Code:
        """An ordering or equality of two checked operands."""
        if left.const is not None and right.const is not None and left.type != DOUBLE != right.type:
            # int/string/bool constants (and int with int): exact, at compile time
            if ERROR in (left.const, right.const):
                return _const(BOOL, ERROR)
            return _const(BOOL, _compare(e.op, left.const, right.const))
        return self.apply(BOOL, _BINARY[e.op], [self.as_double(left), self.as_double(right)])

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
        if cond.const is ERROR:
            return _const(then.type, ERROR)
        if cond.const is not None:
            return then if cond.const else otherwise
        if then.type not in (DOUBLE, BOOL):
            raise ConditionError(
                f"a '?:' choosing between {then.type} values by a run-time condition is not "
                "supported (only double and bool values exist at run time; write 1.0, not 1)",
                e.start,
            )
        return self.apply(then.type, fmt.SELECT, [cond, then, otherwise])

    # -- functions ----------------------------------------------------------------
    def call(self, e: Call) -> _Code:
        name, args = e.name, e.args
        if name not in FUNCTIONS:
            close = difflib.get_close_matches(name, FUNCTIONS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConditionError(
                f"unknown function '{name}'{hint}; known: {', '.join(sorted(FUNCTIONS))}", e.start
            )
        if name in WINDOW_FUNCTIONS and len(args) == 2 and self._is_duration(args[1]):
            return self.window(e)
        if name in ("min", "max", "abs"):
            return self.scalar_function(e)
        if name == "duration":
            raise ConditionError(
                "a duration is only allowed as a window function argument", e.start
            )
        if name == "duration_true":
            return self.duration_true(e)
        if name == "risk":
            return self.risk(e)
        raise ConditionError(
            f"{name}(channel, duration) takes a channel name and a duration such as 10m", e.start
        )

    def _is_duration(self, e: Expr) -> bool:
        return isinstance(e, DurationLit) or (isinstance(e, Call) and e.name == "duration")

    def _duration_ms(self, e: Expr) -> int:
        if isinstance(e, DurationLit):
            ms = e.ms
        else:
            assert isinstance(e, Call)
            if len(e.args) != 1 or not isinstance(e.args[0], Str):
                raise ConditionError('duration() takes one string such as "10m"', e.start)
            inner = e.args[0].value
            parsed = parse_duration(inner)
            if parsed is None:
                raise ConditionError(f"{inner!r} is not a duration such as 10m", e.args[0].start)
            ms = parsed
        if ms <= 0:
            raise ConditionError("a window must be longer than 0", e.start)
        return ms

    def _need_stateful(self, e: Call) -> None:
        if not self.stateful:
            raise ConditionError(
                f"{e.name}() needs the stateful evaluator of a policy bundle "
                "(agent.policy.load_policy), not a single stateless condition",
                e.start,
            )

    def _derive(self, key: Any, make: Any) -> int:
        if key not in self._derived_key:
            row = self.n_rows
            self.derived.append(make(row))
            self._derived_key[key] = row
        return self._derived_key[key]

    def window(self, e: Call) -> _Code:
        target = e.args[0]
        if not isinstance(target, Ident):
            raise ConditionError(
                f"the first argument of {e.name}() must be a channel name", target.start
            )
        self.ident(target)  # checks that it exists
        if e.name != "completeness" and target.name in self.bool_channels:
            raise ConditionError(
                f"{e.name}() needs a double channel; '{target.name}' is bool", target.start
            )
        ms = self._duration_ms(e.args[1])
        self._need_stateful(e)
        kind = fmt.AGG_KINDS[e.name]
        source = self.index[target.name]
        text = f"{e.name}({target.name}, {ms}ms)"
        row = self._derive(("agg", kind, source, ms), lambda r: AggNode(kind, source, ms, r, text))
        return _Code(DOUBLE, [(fmt.LOAD_CHAN, row)])

    def scalar_function(self, e: Call) -> _Code:
        codes = [self.gen(a) for a in e.args]
        if e.name == "abs":
            if len(codes) != 1:
                raise ConditionError("abs() takes one number", e.start)
            c = codes[0]
            if c.type == INT:
                return _const(INT, ERROR if c.const is ERROR else _int_result(abs(c.const)))
            if c.type != DOUBLE:
                raise ConditionError(f"abs() needs a number, got {c.type}", e.args[0].start)
            return self.apply(DOUBLE, fmt.ABS, [c])
        if len(codes) < 2:
            raise ConditionError(
                f"{e.name}() takes two or more numbers, or a channel and a duration "
                f"({e.name}(x, 10m))",
                e.start,
            )
        types = {c.type for c in codes}
        if len(types) != 1 or types.pop() not in NUMERIC:
            raise ConditionError(
                f"{e.name}() needs numbers of one type, got {', '.join(c.type for c in codes)}",
                e.start,
            )
        if codes[0].type == INT:
            if any(c.const is ERROR for c in codes):
                return _const(INT, ERROR)
            pick = min if e.name == "min" else max
            return _const(INT, pick(c.const for c in codes))
        op = fmt.MIN if e.name == "min" else fmt.MAX
        acc = codes[0]
        for c in codes[1:]:
            acc = self.apply(DOUBLE, op, [acc, c])
        return acc

    def duration_true(self, e: Call) -> _Code:
        if len(e.args) != 1:
            raise ConditionError("duration_true() takes one bool condition", e.start)
        c = self.gen(e.args[0])
        if c.type != BOOL:
            raise ConditionError(f"duration_true() needs a bool, got {c.type}", e.args[0].start)
        self._need_stateful(e)
        instrs = tuple(c.instrs)
        text = _call_text(self.text, e.start) or "duration_true(...)"
        row = self._derive(("dur", instrs), lambda r: DurationNode(instrs, r, text))
        return _Code(DOUBLE, [(fmt.LOAD_CHAN, row)])

    def risk(self, e: Call) -> _Code:
        if len(e.args) != 1 or not isinstance(e.args[0], Str):
            raise ConditionError('risk() takes a model id string: risk("model-id")', e.start)
        mid = e.args[0].value
        if mid not in self.models:
            known = ", ".join(self.models) if self.models else "none declared"
            raise ConditionError(f"unknown risk model {mid!r}; models: {known}", e.args[0].start)
        self.used_models.add(mid)
        return _Code(DOUBLE, [(fmt.LOAD_CHAN, len(self.channels) + self.models.index(mid))])

    @staticmethod
    def apply(result: str, op: int, args: list[_Code]) -> _Code:
        if all(a.const is not None for a in args):
            if any(a.const is ERROR for a in args) and op not in (fmt.AND, fmt.OR):
                return _const(result, ERROR)
            value = fmt.apply_op(op, [fmt.ERROR if a.const is ERROR else a.const for a in args])
            if value == value:  # fold unless it is an error: keep errors visible as code
                return _const(result, bool(value) if result == BOOL else value)
        instrs = [i for a in args for i in a.instrs]
        instrs.append((op, 0))
        return _Code(result, instrs)


def _call_text(text: str, start: int) -> str:
    """The source of the call starting at ``start`` (up to its closing parenthesis)."""
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return " ".join(text[start : i + 1].split())
    return ""


def _simplify_logical(op: str, left: _Code, right: _Code) -> _Code | None:
    # CEL commutative logic: the absorbing constant wins whatever the other
    # side is (error included); the neutral constant leaves the other side.
    absorbing = op == "||"
    for this, other in ((left, right), (right, left)):
        if this.const is None or this.const is ERROR:
            continue
        if this.const == absorbing:
            return _const(BOOL, absorbing)
        if other.const is None:
            return other
    return None


def compile_expr(text: str, channels: Sequence[str]) -> Program:
    """Parse, check and compile a stateless condition over double channels.

    Raises:
        ConditionError: with the offset of the problem in ``text``.
        ValueError: ``channels`` has duplicates (API misuse).
    """
    builder = PlanBuilder(channels, stateful=False)
    return builder.program(builder.check(text), text)


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
    """Compile one stateless condition against the channel list (in column order).

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
