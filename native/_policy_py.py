"""Policy programs and their pure-Python evaluator (the readable reference).

A *program* is a compiled rule condition: a stack-machine instruction list
built by ``agent.policy.compiler``. This module defines the program format
(shared by both evaluators), verifies programs, and interprets them one
reading at a time in plain Python. ``native/_policy.pyx`` interprets the same
programs block-wise in C; both must return identical results on every input
(tests/test_policy_eval.py checks that differentially).

Input
    ``columns`` is a float64 array of shape ``(n_channels, n_readings)``, rows
    in the bundle's channel order. NaN means the value is missing or invalid.

Values
    Conditions follow CEL semantics (cel-spec ``langdef.md``) over two types,
    ``double`` and ``bool``, plus CEL's *error* value. Internally a value is a
    float: a double is itself, ``false``/``true`` are ``0.0``/``1.0``, and an
    error is NaN. So:

    * reading a missing channel (NaN) yields an error;
    * arithmetic and comparisons propagate errors (``error + 1`` and
      ``error < 1`` are errors; so are ``error == error`` and ``error != 1``);
    * ``&&`` and ``||`` are commutative as in CEL §"Logical operators":
      ``false && error == false``, ``true || error == true``; any other mix
      with an error is an error;
    * ``!error`` is an error;
    * ``c ? a : b`` is an error when ``c`` is, otherwise the selected branch;
      an error in the branch not selected is ignored;
    * ``+ - * /`` follow IEEE 754 binary64 (``x / 0.0`` is ``±inf``).

Result
    One uint8 per reading per program: ``1`` the condition holds
    (compliant), ``0`` it is violated, ``2`` it cannot be evaluated (error).

CEL ``int`` and ``string`` values are all constants (channels are doubles),
so the compiler folds them with CEL's exact semantics (64-bit overflow and
division by zero are errors) and programs only ever see doubles and bools;
an int beside a double in a comparison is compared as a double (exact up to
2**53). Known deviations from CEL in this version:

* an int-valued ``?:`` whose condition is known only at run time is refused
  by the compiler (write double literals);
* a NaN *produced* by arithmetic (``0.0 / 0.0``, ``inf - inf``,
  ``0.0 * inf``) is treated as an error, where CEL would carry the double
  NaN (and e.g. ``NaN == NaN`` would be ``false`` rather than an error).

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
    "AGG_KINDS",
    "OPCODES",
    "Program",
    "agg_update",
    "duration_update",
    "evaluate",
    "evaluate_many",
    "rule_update",
]

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


# -- programs ----------------------------------------------------------------

_ARITY = {NEG: 1, ADD: 2, SUB: 2, MUL: 2, DIV: 2, NOT: 1, AND: 2, OR: 2, SELECT: 3}
_ARITY.update({ABS: 1, MIN: 2, MAX: 2})
_ARITY.update(dict.fromkeys((LT, LE, GT, GE, EQ, NE), 2))


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
        if op not in _ARITY:
            raise ValueError(f"{where}: unknown opcode")
        if arg != 0:
            raise ValueError(f"{where}: operand must be 0")
        n = _ARITY[op]
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


# -- evaluation --------------------------------------------------------------


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


def _run(program: Program, rows: list[list[float]], n: int) -> list[int]:
    code = list(zip(program.opcodes.tolist(), program.operands.tolist(), strict=True))
    consts = program.consts.tolist()
    out = []
    for j in range(n):
        stack: list[float] = []
        for op, arg in code:
            if op in (LOAD_CHAN, LOAD_BCHAN):
                stack.append(rows[arg][j])  # NaN (missing) is already the error value
            elif op == LOAD_ERR:
                stack.append(ERROR)
            elif op == LOAD_CONST:
                stack.append(consts[arg])
            elif op == LOAD_BOOL:
                stack.append(TRUE if arg else FALSE)
            else:
                k = _ARITY[op]
                operands = stack[-k:]
                del stack[-k:]
                stack.append(apply_op(op, operands))
        out.append(result_code(stack[0]))
    return out


def evaluate_many(programs: Sequence[Program], columns: object) -> npt.NDArray[np.uint8]:
    """Evaluate each program on every reading: uint8 array (n_programs, n_readings)."""
    programs = list(programs)
    cols = prepare(programs, columns)
    n = cols.shape[1]
    out = np.empty((len(programs), n), dtype=np.uint8)
    rows = cols.tolist()
    for k, p in enumerate(programs):
        out[k, :] = _run(p, rows, n)
    return out


def evaluate(program: Program, columns: object) -> npt.NDArray[np.uint8]:
    """Evaluate one program on every reading: uint8 array (n_readings,)."""
    return evaluate_many([program], columns).reshape(-1)


# -- stateful kernels: window aggregates, durations, rule state machines ---------
#
# Each kernel processes one batch and carries its state in small numpy arrays
# owned by the caller (agent.policy.evaluator), so that the state survives
# between batches and can be saved and restored across restarts. The compiled
# module implements the same kernels with the same floating-point operations
# in the same order, so both give bit-identical results.
#
# Timestamps are int64 ms and must not go backwards; one that does is taken
# as the previous one (``last_t`` in the state). A window of duration ``D``
# at reading time ``t`` holds the readings with ``t - D < time <= t``.

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
RULE_PHASE, RULE_T0, RULE_T1, RULE_EP_START, RULE_LAST_T = range(5)
NO_TIME = -(2**62)


def agg_update(
    kind: int,
    dur_ms: int,
    ts: npt.NDArray[np.int64],
    x: npt.NDArray[np.float64],
    out: npt.NDArray[np.float64],
    rt: npt.NDArray[np.int64],
    rx: npt.NDArray[np.float64],
    dq: npt.NDArray[np.int64],
    ist: npt.NDArray[np.int64],
    fst: npt.NDArray[np.float64],
) -> None:
    """Sliding-window aggregate of ``x`` over the last ``dur_ms``, one output per reading.

    The ring (``rt`` times, ``rx`` values; power-of-two capacity, at least the
    readings in the window plus this batch) holds the valid readings in the
    window (all readings, as 0/1 validity, for completeness); ``dq`` is the
    monotonic deque for min/max; ``fst`` = Welford mean and M2. Missing
    (NaN) readings are left out; an aggregate over no valid readings is an
    error (NaN), ``count`` is then 0. ``stddev`` is the population standard
    deviation; ``rate`` is per second between the first and last reading in
    the window.

    Mean and M2 are updated incrementally (Welford, with removal), and
    recomputed exactly (two passes over the ring) each time as many readings
    have left the window as are in it, which costs O(1) amortised and keeps
    rounding from accumulating: the error stays within ~1e-7 of the largest
    magnitude seen in the last two windows.
    """
    head, tail, dqh, dqt, isum, last_t, evicted = (int(v) for v in ist)
    mean, m2 = float(fst[0]), float(fst[1])
    mask = rt.shape[0] - 1
    for j in range(ts.shape[0]):
        t = int(ts[j])
        if t < last_t:
            t = last_t
        last_t = t
        v = float(x[j])
        lim = t - dur_ms
        while head < tail and int(rt[head & mask]) <= lim:
            old = float(rx[head & mask])
            if kind in (AGG_MEAN, AGG_STDDEV):
                k = tail - head - 1
                if k == 0:
                    mean = 0.0
                    m2 = 0.0
                else:
                    d = old - mean
                    mean -= d / k
                    m2 -= d * (old - mean)
            elif kind == AGG_COMPLETENESS:
                isum -= int(old)
            head += 1
            evicted += 1
        if kind in (AGG_MEAN, AGG_STDDEV) and evicted > 0 and evicted >= tail - head:
            evicted = 0
            mean = 0.0
            m2 = 0.0
            k = tail - head
            if k > 0:
                s = 0.0
                for q in range(head, tail):
                    s += float(rx[q & mask])
                mean = s / k
                for q in range(head, tail):
                    d = float(rx[q & mask]) - mean
                    m2 += d * d
        while dqh < dqt and int(dq[dqh & mask]) < head:
            dqh += 1
        if kind == AGG_COMPLETENESS:
            ok = 1 if v == v else 0
            rt[tail & mask] = t
            rx[tail & mask] = float(ok)
            tail += 1
            isum += ok
        elif v == v:
            rt[tail & mask] = t
            rx[tail & mask] = v
            tail += 1
            if kind in (AGG_MEAN, AGG_STDDEV):
                k = tail - head
                d = v - mean
                mean += d / k
                m2 += d * (v - mean)
            elif kind == AGG_MIN:
                while dqh < dqt and float(rx[int(dq[(dqt - 1) & mask]) & mask]) >= v:
                    dqt -= 1
                dq[dqt & mask] = tail - 1
                dqt += 1
            elif kind == AGG_MAX:
                while dqh < dqt and float(rx[int(dq[(dqt - 1) & mask]) & mask]) <= v:
                    dqt -= 1
                dq[dqt & mask] = tail - 1
                dqt += 1
        n = tail - head
        r = ERROR
        if kind == AGG_COUNT:
            r = float(n)
        elif kind == AGG_COMPLETENESS:
            r = isum / n
        elif n > 0:
            if kind == AGG_MEAN:
                r = mean
            elif kind == AGG_STDDEV:
                r = math.sqrt(m2 / n) if m2 > 0.0 else 0.0
            elif kind in (AGG_MIN, AGG_MAX):
                r = float(rx[int(dq[dqh & mask]) & mask])
            elif kind == AGG_DELTA:
                r = float(rx[(tail - 1) & mask]) - float(rx[head & mask])
            elif kind == AGG_RATE:
                span = int(rt[(tail - 1) & mask]) - int(rt[head & mask])
                if span > 0:
                    r = (float(rx[(tail - 1) & mask]) - float(rx[head & mask])) / (span / 1000.0)
        out[j] = r
    ist[:] = (head, tail, dqh, dqt, isum, last_t, evicted)
    fst[0] = mean
    fst[1] = m2


def duration_update(
    ts: npt.NDArray[np.int64],
    cond: npt.NDArray[np.uint8],
    out: npt.NDArray[np.float64],
    ist: npt.NDArray[np.int64],
) -> None:
    """``duration_true``: seconds the condition has held without a break, per reading.

    ``cond`` are result codes (1 true, 0 false, 2 error). A false reading ends
    the run (0.0); an error reading is an error and leaves the run as it was.
    ``ist`` = [running, run start, last timestamp].
    """
    running, start, last_t = (int(v) for v in ist)
    for j in range(ts.shape[0]):
        t = int(ts[j])
        if t < last_t:
            t = last_t
        last_t = t
        c = int(cond[j])
        if c == 2:
            out[j] = ERROR
        elif c == 1:
            if not running:
                running = 1
                start = t
            out[j] = (t - start) / 1000.0
        else:
            running = 0
            out[j] = 0.0
    ist[:] = (running, start, last_t)


def rule_update(
    ts: npt.NDArray[np.int64],
    cond: npt.NDArray[np.uint8],
    clear: npt.NDArray[np.uint8],
    measure: npt.NDArray[np.float64],
    for_ms: int,
    clear_ms: int,
    peak_max: int,
    out: npt.NDArray[np.uint8],
    ist: npt.NDArray[np.int64],
    fst: npt.NDArray[np.float64],
    ep_start: npt.NDArray[np.int64],
    ep_end: npt.NDArray[np.int64],
    ep_peak: npt.NDArray[np.float64],
) -> int:
    """A rule's state machine over one batch; returns the number of episodes closed.

    ``cond``/``clear`` are result codes of the condition and of the clear
    condition (the same array when the rule has none). A rule is *violated*
    once its condition has been false (0) for ``for_ms`` without a true (1)
    reading in between; it stays violated until the clear condition has held
    for ``clear_ms`` without a false reading in between. Error readings (2)
    change no state. ``out`` per reading: 0 violated, else 1 (2 for an error
    reading while not violated). An episode starts when the condition first
    went false and ends at the reading that clears it; its peak is the
    largest (``peak_max``) or smallest ``measure`` over the readings where
    the condition was false. ``ist``/``fst`` carry the phase, timers, the
    open episode's start and peak.
    """
    phase, t0, t1, start, last_t = (int(v) for v in ist)
    peak = float(fst[0])
    closed = 0
    for j in range(ts.shape[0]):
        t = int(ts[j])
        if t < last_t:
            t = last_t
        last_t = t
        c = int(cond[j])
        cc = int(clear[j])
        m = float(measure[j])
        if phase == PHASE_OK and c == 0:
            phase = PHASE_PENDING
            t0 = t
            peak = ERROR
        elif phase == PHASE_PENDING and c == 1:
            phase = PHASE_OK
        better = peak != peak or (m > peak if peak_max else m < peak)
        if c == 0 and phase != PHASE_OK and m == m and better:
            peak = m
        if phase == PHASE_PENDING and c == 0 and t - t0 >= for_ms:
            phase = PHASE_VIOLATED
            start = t0
        elif phase in (PHASE_VIOLATED, PHASE_CLEARING):
            if cc == 1:
                if phase == PHASE_VIOLATED:
                    phase = PHASE_CLEARING
                    t1 = t
                if t - t1 >= clear_ms:
                    ep_start[closed] = start
                    ep_end[closed] = t
                    ep_peak[closed] = peak
                    closed += 1
                    phase = PHASE_OK
            elif cc == 0:
                phase = PHASE_VIOLATED
        if phase in (PHASE_VIOLATED, PHASE_CLEARING):
            out[j] = 0
        else:
            out[j] = 2 if c == 2 else 1
    ist[:] = (phase, t0, t1, start, last_t)
    fst[0] = peak
    return closed
