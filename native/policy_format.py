"""The policy program format: what the compiler emits and both evaluators run.

``agent.policy.compiler`` builds programs in this format; ``native._policy_py``
(pure Python) and ``native/_policy.pyx`` (Cython, which repeats the constants
as C enums for speed, checked against this module when it is imported and by
tests/test_policy_eval.py) interpret them. This module is the one place that
defines:

* the opcodes (``OPCODES``) and each operator's arity, operand types and
  scalar effect (``apply_op``, also the compiler's constant folding);
* the value encoding: a double is itself, ``false``/``true`` are
  ``0.0``/``1.0``, CEL's error is NaN (``ERROR``); a result byte is ``1``
  holds, ``0`` violated, ``2`` error (``result_code``). The CEL semantics
  these encode are documented in ``native._policy_py``;
* ``Program``, the verified instruction list, and ``prepare``, the argument
  check both evaluators apply to their input;
* the layout of the stateful kernels' state: aggregate kinds
  (``AGG_KINDS``), the indices of their int64 state, the rule phases and
  ``NO_TIME``.

Program format (``Program``)
    ``opcodes`` (uint8) and ``operands`` (int32) are parallel arrays, one entry
    per instruction; ``consts`` (float64) holds numeric literals. Opcodes are
    grouped by kind so that the set can grow (functions, ``in``, window
    aggregates read as derived columns) without renumbering:

    ======  ==========  =======================================  ============
    code    name        effect (``a``, ``b``: popped, ``b`` top)  types
    ======  ==========  =======================================  ============
    0x01    LOAD_CHAN   push ``columns[operand, j]``             -> double
    0x02    LOAD_CONST  push ``consts[operand]``                 -> double
    0x03    LOAD_BOOL   push ``operand`` (0 or 1)                -> bool
    0x04    LOAD_ERR    push an error; operand 0 double, 1 bool  -> T
    0x05    LOAD_BCHAN  push ``columns[operand, j]`` (0, 1, NaN) -> bool
    0x10    NEG         ``-a``                                   double
    0x11    ADD         ``a + b``                                double
    0x12    SUB         ``a - b``                                double
    0x13    MUL         ``a * b``                                double
    0x14    DIV         ``a / b``                                double
    0x15    ABS         ``abs(a)``                               double
    0x16    MIN         ``min(a, b)`` (``a`` if ``a <= b``)        double
    0x17    MAX         ``max(a, b)`` (``a`` if ``a >= b``)        double
    0x20    LT          ``a < b``                                double->bool
    0x21    LE          ``a <= b``                               double->bool
    0x22    GT          ``a > b``                                double->bool
    0x23    GE          ``a >= b``                               double->bool
    0x24    EQ          ``a == b``                               T,T->bool
    0x25    NE          ``a != b``                               T,T->bool
    0x30    NOT         ``!a``                                   bool
    0x31    AND         ``a && b``                               bool
    0x32    OR          ``a || b``                               bool
    0x40    SELECT      pop ``c, a, b``; push ``c ? a : b``      bool,T,T->T
    ======  ==========  =======================================  ============

    Every ``Program`` is verified when constructed (known opcodes, operands in
    range, stack never underflows, operand types as in the table, exactly one
    bool left at the end), so the compiled evaluator can trust it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "ABS", "ADD", "AGG_COMPLETENESS", "AGG_COUNT", "AGG_DELTA", "AGG_DQH", "AGG_DQT",
    "AGG_EVICTED", "AGG_HEAD", "AGG_ISUM", "AGG_KINDS", "AGG_LAST_T", "AGG_MAX", "AGG_MEAN",
    "AGG_MIN", "AGG_RATE", "AGG_STDDEV", "AGG_TAIL", "AND", "ARITY", "DIV", "EQ", "ERROR",
    "FALSE", "GE", "GT", "LE", "LOAD_BCHAN", "LOAD_BOOL", "LOAD_CHAN", "LOAD_CONST",
    "LOAD_ERR", "LT", "MAX", "MIN", "MUL", "NE", "NEG", "NOT", "NO_TIME", "OPCODES", "OR",
    "PHASES", "PHASE_CLEARING", "PHASE_OK", "PHASE_PENDING", "PHASE_VIOLATED", "RULE_EP_START",
    "RULE_LAST_T", "RULE_PHASE", "RULE_T0", "RULE_T1", "SELECT", "SUB", "TRUE", "Program",
    "apply_op", "prepare", "result_code",
]  # fmt: skip

LOAD_CHAN = 0x01
LOAD_CONST = 0x02
LOAD_BOOL = 0x03
LOAD_ERR = 0x04
LOAD_BCHAN = 0x05
NEG = 0x10
ADD = 0x11
SUB = 0x12
MUL = 0x13
DIV = 0x14
ABS = 0x15
MIN = 0x16
MAX = 0x17
LT = 0x20
LE = 0x21
GT = 0x22
GE = 0x23
EQ = 0x24
NE = 0x25
NOT = 0x30
AND = 0x31
OR = 0x32
SELECT = 0x40

#: name -> opcode; the compiled module exposes the same table (checked at import).
OPCODES: dict[str, int] = {
    "LOAD_CHAN": LOAD_CHAN,
    "LOAD_CONST": LOAD_CONST,
    "LOAD_BOOL": LOAD_BOOL,
    "LOAD_ERR": LOAD_ERR,
    "LOAD_BCHAN": LOAD_BCHAN,
    "NEG": NEG,
    "ADD": ADD,
    "SUB": SUB,
    "MUL": MUL,
    "DIV": DIV,
    "ABS": ABS,
    "MIN": MIN,
    "MAX": MAX,
    "LT": LT,
    "LE": LE,
    "GT": GT,
    "GE": GE,
    "EQ": EQ,
    "NE": NE,
    "NOT": NOT,
    "AND": AND,
    "OR": OR,
    "SELECT": SELECT,
}
_NAMES = {code: name for name, code in OPCODES.items()}

ERROR = math.nan
TRUE = 1.0
FALSE = 0.0

_DOUBLE, _BOOL = "double", "bool"


# -- scalar semantics (also used by the compiler for constant folding) ------


def _is_error(v: float) -> bool:
    return v != v  # NaN


def _div(a: float, b: float) -> float:
    # IEEE 754 division; Python raises ZeroDivisionError where IEEE gives ±inf/NaN.
    if b == 0.0:
        if a == 0.0 or _is_error(a):
            return ERROR
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _cmp(op: int, a: float, b: float) -> float:
    if _is_error(a) or _is_error(b):
        return ERROR
    if op == LT:
        r = a < b
    elif op == LE:
        r = a <= b
    elif op == GT:
        r = a > b
    elif op == GE:
        r = a >= b
    elif op == EQ:
        r = a == b
    else:
        r = a != b
    return TRUE if r else FALSE


def _and(a: float, b: float) -> float:
    # CEL: false && x == false for any x, error included (commutative).
    if a == FALSE or b == FALSE:
        return FALSE
    if _is_error(a) or _is_error(b):
        return ERROR
    return TRUE


def _or(a: float, b: float) -> float:
    # CEL: true || x == true for any x, error included (commutative).
    if a == TRUE or b == TRUE:
        return TRUE
    if _is_error(a) or _is_error(b):
        return ERROR
    return FALSE


def _not(a: float) -> float:
    return ERROR if _is_error(a) else TRUE - a


def _select(c: float, a: float, b: float) -> float:
    if _is_error(c):
        return ERROR
    return a if c == TRUE else b


def apply_op(op: int, args: Sequence[float]) -> float:
    """Apply one non-load opcode to scalar operands (``args`` bottom to top)."""
    if op == NEG:
        return -args[0]
    if op == ADD:
        return args[0] + args[1]
    if op == SUB:
        return args[0] - args[1]
    if op == MUL:
        return args[0] * args[1]
    if op == DIV:
        return _div(args[0], args[1])
    if op == ABS:
        return ERROR if _is_error(args[0]) else abs(args[0])
    if op in (MIN, MAX):
        a, b = args[0], args[1]
        if _is_error(a) or _is_error(b):
            return ERROR
        if op == MIN:
            return a if a <= b else b
        return a if a >= b else b
    if LT <= op <= NE:
        return _cmp(op, args[0], args[1])
    if op == NOT:
        return _not(args[0])
    if op == AND:
        return _and(args[0], args[1])
    if op == OR:
        return _or(args[0], args[1])
    if op == SELECT:
        return _select(args[0], args[1], args[2])
    raise ValueError(f"not an operator opcode: {op:#04x}")


def result_code(v: float) -> int:
    """Map a final bool value to the result byte: 1 holds, 0 violated, 2 error."""
    if _is_error(v):
        return 2
    return 1 if v == TRUE else 0


# -- programs and their input ---------------------------------------------------------------

#: operator opcode -> number of operands it pops
ARITY = {NEG: 1, ADD: 2, SUB: 2, MUL: 2, DIV: 2, NOT: 1, AND: 2, OR: 2, SELECT: 3}
ARITY.update({ABS: 1, MIN: 2, MAX: 2})
ARITY.update(dict.fromkeys((LT, LE, GT, GE, EQ, NE), 2))


def _readonly(a: npt.NDArray[Any]) -> npt.NDArray[Any]:
    a = np.array(a, copy=True)
    a.flags.writeable = False
    return a


class Program:
    """A verified, immutable stack program for one condition.

    Args:
        opcodes: one opcode per instruction (see the module table).
        operands: one int per instruction (channel row, constant index or
            bool value for loads; 0 otherwise).
        consts: numeric constants referenced by ``LOAD_CONST``.
        n_channels: number of rows the ``columns`` input must have.
        source: the condition text, for diagnostics only.

    Raises:
        ValueError: the program is malformed (it was not built by our
            compiler, or the compiler has a bug).
    """

    __slots__ = (
        "channels_used",
        "consts",
        "max_stack",
        "n_channels",
        "opcodes",
        "operands",
        "source",
    )

    opcodes: npt.NDArray[np.uint8]
    operands: npt.NDArray[np.int32]
    consts: npt.NDArray[np.float64]
    n_channels: int
    max_stack: int
    channels_used: tuple[int, ...]
    source: str

    def __init__(
        self,
        opcodes: Iterable[int] | bytes,
        operands: Iterable[int],
        consts: Iterable[float],
        n_channels: int,
        source: str = "",
    ) -> None:
        ops = np.asarray(bytearray(opcodes) if isinstance(opcodes, bytes) else list(opcodes))
        args = np.asarray(list(operands))
        cst = np.asarray(list(consts), dtype=np.float64)
        if ops.ndim != 1 or args.ndim != 1 or ops.shape != args.shape:
            raise ValueError("opcodes and operands must be 1-D sequences of equal length")
        if ops.size and (ops.dtype.kind not in "iu" or args.dtype.kind not in "iu"):
            raise ValueError("opcodes and operands must be integers")
        if ops.size and (ops.min() < 0 or ops.max() > 0xFF):
            raise ValueError("opcode out of range")
        if args.size and (args.min() < -(2**31) or args.max() >= 2**31):
            raise ValueError("operand out of int32 range")
        if not isinstance(n_channels, int) or n_channels < 0:
            raise ValueError("n_channels must be a non-negative int")
        ops = ops.astype(np.uint8)
        args = args.astype(np.int32)
        max_stack, used = _verify(ops.tolist(), args.tolist(), len(cst), n_channels)
        set_ = object.__setattr__
        set_(self, "opcodes", _readonly(ops))
        set_(self, "operands", _readonly(args))
        set_(self, "consts", _readonly(cst))
        set_(self, "n_channels", n_channels)
        set_(self, "max_stack", max_stack)
        set_(self, "channels_used", used)
        set_(self, "source", str(source))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Program is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("Program is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            Program,
            (
                self.opcodes.tobytes(),
                self.operands.tolist(),
                self.consts.tolist(),
                self.n_channels,
                self.source,
            ),
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Program):
            return NotImplemented
        return (
            self.n_channels == other.n_channels
            and np.array_equal(self.opcodes, other.opcodes)
            and np.array_equal(self.operands, other.operands)
            and self.consts.tobytes() == other.consts.tobytes()
        )

    __hash__ = None  # type: ignore[assignment]

    def __len__(self) -> int:
        return int(self.opcodes.size)

    def __repr__(self) -> str:
        return f"<Program {self.source!r}: {len(self)} instructions, stack {self.max_stack}>"

    def disassemble(self) -> str:
        """Human-readable listing, one instruction per line."""
        lines = []
        for pc, (op, arg) in enumerate(
            zip(self.opcodes.tolist(), self.operands.tolist(), strict=True)
        ):
            name = _NAMES[op]
            if op in (LOAD_CHAN, LOAD_BCHAN, LOAD_ERR):
                lines.append(f"{pc:4d}  {name:<10} {arg}")
            elif op == LOAD_CONST:
                lines.append(f"{pc:4d}  {name:<10} {arg}  ({float(self.consts[arg])!r})")
            elif op == LOAD_BOOL:
                lines.append(f"{pc:4d}  {name:<10} {arg}")
            else:
                lines.append(f"{pc:4d}  {name}")
        return "\n".join(lines)


_LOADS = (LOAD_CHAN, LOAD_CONST, LOAD_BOOL, LOAD_ERR, LOAD_BCHAN)


def _verify(
    ops: list[int], args: list[int], n_consts: int, n_channels: int
) -> tuple[int, tuple[int, ...]]:
    """Check a program's well-formedness; return (max stack depth, channels used)."""
    if not ops:
        raise ValueError("empty program")
    types: list[str] = []
    max_stack = 0
    used: set[int] = set()
    for pc, (op, arg) in enumerate(zip(ops, args, strict=True)):
        where = f"instruction {pc} ({_NAMES.get(op, hex(op))})"
        if op in _LOADS:
            limit = {
                LOAD_CHAN: n_channels,
                LOAD_BCHAN: n_channels,
                LOAD_CONST: n_consts,
                LOAD_BOOL: 2,
                LOAD_ERR: 2,
            }[op]
            if not 0 <= arg < limit:
                raise ValueError(f"{where}: operand {arg} out of range [0, {limit})")
            if op in (LOAD_CHAN, LOAD_BCHAN):
                used.add(arg)
            is_bool = op in (LOAD_BOOL, LOAD_BCHAN) or (op == LOAD_ERR and arg == 1)
            types.append(_BOOL if is_bool else _DOUBLE)
            max_stack = max(max_stack, len(types))
            continue
        if op not in ARITY:
            raise ValueError(f"{where}: unknown opcode")
        if arg != 0:
            raise ValueError(f"{where}: operand must be 0")
        n = ARITY[op]
        if len(types) < n:
            raise ValueError(f"{where}: stack underflow")
        operand_types = types[-n:]
        del types[-n:]
        types.append(_result_type(op, operand_types, where))
    if len(types) != 1 or types[0] != _BOOL:
        raise ValueError(f"program must leave exactly one bool on the stack, leaves {types}")
    return max_stack, tuple(sorted(used))


def _result_type(op: int, t: list[str], where: str) -> str:
    if op in (NEG, ADD, SUB, MUL, DIV, ABS, MIN, MAX) and all(x == _DOUBLE for x in t):
        return _DOUBLE
    if LT <= op <= GE and t == [_DOUBLE, _DOUBLE]:
        return _BOOL
    if op in (EQ, NE) and t[0] == t[1]:
        return _BOOL
    if op in (NOT, AND, OR) and all(x == _BOOL for x in t):
        return _BOOL
    if op == SELECT and t[0] == _BOOL and t[1] == t[2]:
        return t[1]
    raise ValueError(f"{where}: operand types {t} not accepted")


def prepare(programs: Sequence[Program], columns: object) -> npt.NDArray[np.float64]:
    """Validate the arguments of evaluate/evaluate_many; return C-contiguous float64 columns.

    Shared by both implementations so that they reject the same misuse.

    Raises:
        TypeError: an element of ``programs`` is not a ``Program``.
        ValueError: ``columns`` is not 2-D or its row count differs from a
            program's ``n_channels``.
    """
    for p in programs:
        if not isinstance(p, Program):
            raise TypeError(f"expected a Program, got {type(p).__name__}")
    cols = np.ascontiguousarray(columns, dtype=np.float64)
    if cols.ndim != 2:
        raise ValueError(f"columns must be 2-D (n_channels, n_readings), got shape {cols.shape}")
    for p in programs:
        if cols.shape[0] != p.n_channels:
            raise ValueError(
                f"columns has {cols.shape[0]} channel rows, program {p.source!r} "
                f"was compiled for {p.n_channels}"
            )
    return cols


# -- the stateful kernels' state ----------------------------------------------
#
# The kernels (``agg_update``, ``duration_update``, ``rule_update`` in both
# evaluators) carry their state in small numpy arrays owned by the caller
# (agent.policy.evaluator); these name the aggregate kinds and the slots.

AGG_MEAN, AGG_MIN, AGG_MAX, AGG_STDDEV, AGG_COUNT, AGG_RATE, AGG_DELTA, AGG_COMPLETENESS = range(
    1, 9
)
#: function name -> aggregate kind
AGG_KINDS = {
    "mean": AGG_MEAN,
    "min": AGG_MIN,
    "max": AGG_MAX,
    "stddev": AGG_STDDEV,
    "count": AGG_COUNT,
    "rate": AGG_RATE,
    "delta": AGG_DELTA,
    "completeness": AGG_COMPLETENESS,
}
#: indices into an aggregate's int64 state: ring head/tail (absolute sequence
#: numbers), deque head/tail, integer sum (completeness), last timestamp,
#: evictions since the running mean/M2 were last recomputed
AGG_HEAD, AGG_TAIL, AGG_DQH, AGG_DQT, AGG_ISUM, AGG_LAST_T, AGG_EVICTED = range(7)
#: rule phases: compliant, condition false but not for long enough yet,
#: violated, violated but the clear condition holds (hysteresis running)
PHASE_OK, PHASE_PENDING, PHASE_VIOLATED, PHASE_CLEARING = range(4)
#: phase name -> value (the compiled module exposes the same table)
PHASES = {
    "PHASE_OK": PHASE_OK,
    "PHASE_PENDING": PHASE_PENDING,
    "PHASE_VIOLATED": PHASE_VIOLATED,
    "PHASE_CLEARING": PHASE_CLEARING,
}
#: indices into a rule's int64 state: phase, timers, open episode's start, last timestamp
RULE_PHASE, RULE_T0, RULE_T1, RULE_EP_START, RULE_LAST_T = range(5)
#: "no timestamp yet" in the state's last-time slots
NO_TIME = -(2**62)
