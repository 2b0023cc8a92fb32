"""Policy program evaluation: compiled module vs pure twin vs an independent oracle.

Every behavioural test runs on both implementations (``native._policy`` and
``native._policy_py``). The oracle below evaluates an AST directly with its own
reading of the semantics in ``native._policy_py``'s docstring (CEL errors as a
sentinel object, Python bools, NumPy IEEE arithmetic), independent of the
program format and of both evaluators.
"""

from __future__ import annotations

import importlib
import math
import os
import pickle
import subprocess
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.policy.compiler import compile_condition
from agent.policy.parser import (
    Binary,
    Bool,
    Call,
    Conditional,
    Expr,
    Ident,
    Int,
    ListLit,
    Number,
    Str,
    Unary,
    parse,
)
from native import _policy_py, policy_format
from native.policy_format import Program

REPO = Path(__file__).resolve().parents[1]
CHANNELS = ("a", "b", "c")
BUILD_HINT = "native._policy is not built: run `make test` (it builds the Cython extensions)"


def _compiled() -> ModuleType | None:
    try:
        return importlib.import_module("native._policy")
    except ImportError:
        return None


@pytest.fixture(
    params=[
        pytest.param("cython", id="cython"),
        pytest.param("python", id="python"),
    ]
)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "python":
        return _policy_py
    mod = _compiled()
    if mod is None:
        pytest.fail(BUILD_HINT)
    return mod


def both() -> list[ModuleType]:
    mod = _compiled()
    if mod is None:
        pytest.fail(BUILD_HINT)
    return [mod, _policy_py]


def cols(*rows: list[float]) -> np.ndarray:
    return np.array(rows, dtype=np.float64).reshape(len(rows), -1)


# -- the oracle ------------------------------------------------------------------

ERR = object()  # the CEL error value


def _int(v: int) -> Any:
    return v if -(2**63) <= v < 2**63 else ERR


def oracle(e: Expr, env: dict[str, float]) -> Any:
    if isinstance(e, Number):
        return e.value
    if isinstance(e, (Int, Str)):
        return e.value
    if isinstance(e, Call):
        args = [oracle(a, env) for a in e.args]
        if ERR in args:
            return ERR
        if e.name == "abs":
            return _int(abs(args[0])) if type(args[0]) is int else abs(args[0])
        return (min if e.name == "min" else max)(args)
    if isinstance(e, Binary) and e.op == "in":
        assert isinstance(e.right, ListLit)
        left = oracle(e.left, env)
        items = [oracle(i, env) for i in e.right.items]
        if not items:
            return False
        if left is ERR or ERR in items:
            return True if left is not ERR and left in [i for i in items if i is not ERR] else ERR
        return left in items
    if isinstance(e, Bool):
        return e.value
    if isinstance(e, Ident):
        v = env[e.name]
        return ERR if math.isnan(v) else v
    if isinstance(e, Unary):
        v = oracle(e.operand, env)
        if v is ERR:
            return ERR
        if type(v) is int:
            return _int(-v)
        return -v if e.op == "-" else not v
    if isinstance(e, Conditional):
        c = oracle(e.cond, env)
        if c is ERR:
            return ERR
        return oracle(e.then if c else e.otherwise, env)
    left, right = oracle(e.left, env), oracle(e.right, env)
    if e.op == "&&":
        if left is False or right is False:
            return False
        return ERR if ERR in (left, right) else True
    if e.op == "||":
        if left is True or right is True:
            return True
        return ERR if ERR in (left, right) else False
    if left is ERR or right is ERR:
        return ERR
    if e.op in ("+", "-", "*", "/") and type(left) is int:
        if e.op == "/":
            if right == 0:
                return ERR
            q = abs(left) // abs(right)
            return _int(q if (left < 0) == (right < 0) else -q)
        return _int({"+": left + right, "-": left - right, "*": left * right}[e.op])
    if e.op == "+" and isinstance(left, str):
        return left + right
    if e.op in ("+", "-", "*", "/"):
        with np.errstate(all="ignore"):
            x, y = np.float64(left), np.float64(right)
            r = {"+": x + y, "-": x - y, "*": x * y, "/": x / y}[e.op]
        return ERR if np.isnan(r) else float(r)  # arithmetic NaN is an error (documented)
    return {
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
        "==": left == right,
        "!=": left != right,
    }[e.op]


def oracle_codes(e: Expr, columns: np.ndarray) -> np.ndarray:
    out = []
    for j in range(columns.shape[1]):
        v = oracle(e, dict(zip(CHANNELS, columns[:, j].tolist(), strict=True)))
        out.append(2 if v is ERR else int(v))
    return np.array(out, dtype=np.uint8)


# -- random typed expression trees -----------------------------------------------

CONSTS = [0.0, 1.0, 0.5, 2.5, 3.0, 80.0, 1e308, 1e-300]
ARITH, ORDER = ["+", "-", "*", "/"], ["<", "<=", ">", ">=", "==", "!="]


@cache
def exprs(kind: str, depth: int) -> st.SearchStrategy[Expr]:
    if kind == "double":
        leaves = st.sampled_from([Ident(c) for c in CHANNELS] + [Number(v) for v in CONSTS])
    else:
        leaves = st.sampled_from([Bool(True), Bool(False)])
    if depth == 0:
        return leaves
    num, boolean = exprs("double", depth - 1), exprs("bool", depth - 1)
    if kind == "double":
        return st.one_of(
            leaves,
            st.builds(Unary, st.just("-"), num),
            st.builds(Binary, st.sampled_from(ARITH), num, num),
            st.builds(Conditional, boolean, num, num),
        )
    return st.one_of(
        leaves,
        st.builds(Binary, st.sampled_from(ORDER), num, num),
        st.builds(Binary, st.sampled_from(["==", "!="]), boolean, boolean),
        st.builds(Binary, st.sampled_from(["&&", "||"]), boolean, boolean),
        st.builds(Unary, st.just("!"), boolean),
        st.builds(Conditional, boolean, boolean, boolean),
    )


_PREC = {"||": 1, "&&": 2, "+": 4, "-": 4, "*": 5, "/": 5}
_PREC.update(dict.fromkeys(ORDER, 3))


def prec(e: Expr) -> int:
    if isinstance(e, Conditional):
        return 0
    if isinstance(e, Binary):
        return _PREC[e.op]
    if isinstance(e, Unary):
        return 6
    return 7


def render(e: Expr, full: bool) -> str:
    """CEL source for a tree: minimal parentheses by CEL precedence, or all of them."""

    def sub(child: Expr, needed: bool) -> str:
        s = render(child, full)
        leaf = isinstance(child, (Number, Bool, Ident))
        return f"({s})" if needed or (full and not leaf) else s

    if isinstance(e, Number):
        return repr(e.value)
    if isinstance(e, Bool):
        return "true" if e.value else "false"
    if isinstance(e, Ident):
        return e.name
    if isinstance(e, Unary):
        # CEL: "!" {"!"} Member | "-" {"-"} Member -- no mixing without parentheses.
        mixed = isinstance(e.operand, Unary) and e.operand.op != e.op
        return e.op + sub(e.operand, prec(e.operand) < 6 or mixed)
    if isinstance(e, Binary):
        p = _PREC[e.op]
        return f"{sub(e.left, prec(e.left) < p)} {e.op} {sub(e.right, prec(e.right) <= p)}"
    return (
        f"{sub(e.cond, prec(e.cond) == 0)} ? {sub(e.then, prec(e.then) == 0)} "
        f": {sub(e.otherwise, False)}"
    )


SPECIAL = [
    math.nan,
    math.inf,
    -math.inf,
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.5,
    2.5,
    80.0,
    1e308,
    -1e308,
    5e-324,
]
values = st.one_of(st.sampled_from(SPECIAL), st.floats(allow_nan=True, allow_infinity=True))


@st.composite
def column_data(draw: st.DrawFn, max_readings: int = 12) -> np.ndarray:
    n = draw(st.integers(0, max_readings))
    rows = [draw(st.lists(values, min_size=n, max_size=n)) for _ in CHANNELS]
    return np.array(rows, dtype=np.float64).reshape(len(CHANNELS), n)


def random_columns(seed: int, n: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    data = rng.choice([-2.0, 0.0, 0.5, 1.0, 2.5, 3.0, 80.0], size=(len(CHANNELS), n))
    data += rng.normal(size=data.shape) * (rng.random(data.shape) < 0.5)
    special = np.array(SPECIAL)
    mask = rng.random(data.shape) < 0.15
    data[mask] = rng.choice(special, size=int(mask.sum()))
    return data


# -- differential tests ----------------------------------------------------------


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=exprs("bool", 4), full=st.booleans(), columns=column_data())
def test_compiled_twin_and_oracle_agree_on_random_expressions(
    tree: Expr, full: bool, columns: np.ndarray
) -> None:
    text = render(tree, full)
    assert parse(text) == tree, text  # the parser honours CEL precedence
    program = compile_condition(text, CHANNELS)
    expected = oracle_codes(tree, columns)
    for mod in both():
        got = mod.evaluate(program, columns)
        assert got.dtype == np.uint8
        assert got.shape == (columns.shape[1],)
        np.testing.assert_array_equal(got, expected, err_msg=f"{mod.__name__}: {text}")


@settings(max_examples=25, deadline=None)
@given(tree=exprs("bool", 3), seed=st.integers(0, 2**32 - 1))
def test_compiled_and_twin_agree_across_block_boundaries(tree: Expr, seed: int) -> None:
    program = compile_condition(render(tree, False), CHANNELS)
    columns = random_columns(seed, 600)
    compiled, pure = both()
    np.testing.assert_array_equal(
        compiled.evaluate(program, columns), pure.evaluate(program, columns)
    )


@pytest.mark.parametrize("n", [0, 1, 255, 256, 257, 10_000])
def test_block_lengths_agree(n: int) -> None:
    conditions = [
        "a >= 2.0 && a <= 8.0",
        "b <= 65.0",
        "c < 0.5 || a <= 6.0",
        "(a > 1.0 ? b / a : -c) * 2.0 != a - b && !(c == 0.5)",
    ]
    programs = [compile_condition(t, CHANNELS) for t in conditions]
    columns = random_columns(n, n)
    compiled, pure = both()
    many = compiled.evaluate_many(programs, columns)
    assert many.shape == (len(programs), n)
    assert many.dtype == np.uint8
    np.testing.assert_array_equal(many, pure.evaluate_many(programs, columns))
    for k, p in enumerate(programs):
        np.testing.assert_array_equal(compiled.evaluate(p, columns), many[k])
    if n >= 255:
        # not a vacuous agreement: all three outcomes occur
        assert set(np.unique(many).tolist()) == {0, 1, 2}


# -- raw programs: every opcode, as the program format allows ------------------------
#
# The compiler emits only part of what a Program may hold (no LOAD_BCHAN from a bool
# channel here, no LOAD_ERR, no NaN or infinite constants after folding), and the
# compiled module rewrites what it is given (comparisons with a constant fused, &&
# and || chains regrouped, two bounds on one column fused into one step). These
# programs are drawn straight in the format, with chains of bounds on purpose.

RAW_CHANNELS = 5  # rows 0-2 doubles, rows 3-4 bool channels
BOOL_ROWS = (3, 4)
RAW_CONSTS = [0.0, -0.0, 1.0, 2.5, 80.0, -3.0, math.inf, -math.inf, math.nan, 1e308, 5e-324]
BOUNDS = ["LT", "LE", "GT", "GE", "EQ", "NE"]


def _raw(
    draw: st.DrawFn, kind: str, depth: int, code: list[tuple[str, int]], consts: list[float]
) -> None:
    """Append a random subexpression of ``kind`` ("double" or "bool") to ``code``."""

    def const(v: float) -> None:
        code.append(("LOAD_CONST", len(consts)))
        consts.append(v)

    leaf = depth == 0 or draw(st.integers(0, 3)) == 0
    if kind == "double":
        form = draw(
            st.sampled_from(["chan", "const", "err"] if leaf else ["unary", "arith", "sel"])
        )
        if form == "chan":
            code.append(("LOAD_CHAN", draw(st.integers(0, 2))))
        elif form == "const":
            const(draw(st.sampled_from(RAW_CONSTS)))
        elif form == "err":
            code.append(("LOAD_ERR", 0))
        elif form == "unary":
            _raw(draw, "double", depth - 1, code, consts)
            code.append((draw(st.sampled_from(["NEG", "ABS"])), 0))
        elif form == "arith":
            _raw(draw, "double", depth - 1, code, consts)
            _raw(draw, "double", depth - 1, code, consts)
            code.append((draw(st.sampled_from(["ADD", "SUB", "MUL", "DIV", "MIN", "MAX"])), 0))
        else:
            _raw(draw, "bool", depth - 1, code, consts)
            _raw(draw, "double", depth - 1, code, consts)
            _raw(draw, "double", depth - 1, code, consts)
            code.append(("SELECT", 0))
        return
    forms = ["bool", "bchan", "err"] if leaf else ["cmp", "beq", "not", "logic", "sel"]
    forms += [] if leaf else ["bounds"] * 3
    form = draw(st.sampled_from(forms))
    if form == "bool":
        code.append(("LOAD_BOOL", draw(st.integers(0, 1))))
    elif form == "bchan":
        code.append(("LOAD_BCHAN", draw(st.sampled_from(BOOL_ROWS))))
    elif form == "err":
        code.append(("LOAD_ERR", 1))
    elif form == "cmp":
        _raw(draw, "double", depth - 1, code, consts)
        _raw(draw, "double", depth - 1, code, consts)
        code.append((draw(st.sampled_from(BOUNDS)), 0))
    elif form == "beq":
        _raw(draw, "bool", depth - 1, code, consts)
        _raw(draw, "bool", depth - 1, code, consts)
        code.append((draw(st.sampled_from(["EQ", "NE"])), 0))
    elif form == "not":
        _raw(draw, "bool", depth - 1, code, consts)
        code.append(("NOT", 0))
    elif form == "logic":
        _raw(draw, "bool", depth - 1, code, consts)
        _raw(draw, "bool", depth - 1, code, consts)
        code.append((draw(st.sampled_from(["AND", "OR"])), 0))
    elif form == "sel":
        _raw(draw, "bool", depth - 1, code, consts)
        _raw(draw, "bool", depth - 1, code, consts)
        _raw(draw, "bool", depth - 1, code, consts)
        code.append(("SELECT", 0))
    else:  # a chain of comparisons of columns with constants, nested either way
        op = draw(st.sampled_from(["AND", "OR"]))
        pending = 0  # operands of the chain on the stack
        for _ in range(draw(st.integers(2, 5))):
            if draw(st.integers(0, 4)) == 0:
                _raw(draw, "bool", depth - 1, code, consts)
            else:
                code.append(("LOAD_CHAN", draw(st.integers(0, 1))))
                const(draw(st.sampled_from(RAW_CONSTS)))
                code.append((draw(st.sampled_from(BOUNDS[:4] * 3 + BOUNDS)), 0))
            pending += 1
            while pending > 1 and draw(st.booleans()):  # combine now (left-deep) or later
                code.append((op, 0))
                pending -= 1
        code += [(op, 0)] * (pending - 1)  # the rest right-deep


@st.composite
def raw_programs(draw: st.DrawFn) -> Program:
    code: list[tuple[str, int]] = []
    consts: list[float] = []
    _raw(draw, "bool", draw(st.integers(0, 4)), code, consts)
    ops = [policy_format.OPCODES[o] for o, _ in code]
    return Program(ops, [a for _, a in code], consts, RAW_CHANNELS)


def raw_columns(seed: int, n: int) -> np.ndarray:
    """Doubles with the special values, and bool rows of 0.0, 1.0 and NaN (as masked)."""
    rng = np.random.default_rng(seed)
    data = rng.choice(np.array(SPECIAL + [2.5, 80.0, -3.0, 20.0, 60.0]), size=(RAW_CHANNELS, n))
    data[:3] += rng.normal(size=(3, n)) * (rng.random((3, n)) < 0.3)
    data[list(BOOL_ROWS)] = rng.choice([0.0, 1.0, math.nan], size=(len(BOOL_ROWS), n))
    return data


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(programs=st.lists(raw_programs(), min_size=1, max_size=3), seed=st.integers(0, 2**32 - 1))
def test_compiled_and_twin_agree_on_raw_programs(programs: list[Program], seed: int) -> None:
    compiled, pure = both()
    n = seed % 700  # across block boundaries (BLOCK = 256) and within one block
    for k in range(2):  # the second call reuses the first's lowering
        columns = raw_columns(seed + k, n)
        expected = pure.evaluate_many(programs, columns)
        got = compiled.evaluate_many(programs, columns)
        np.testing.assert_array_equal(
            got, expected, err_msg="\n\n".join(p.disassemble() for p in programs)
        )


@pytest.mark.parametrize(
    "text",
    [
        "a < 80.0 && b >= 20.0 && b <= 60.0",  # bounds that are not siblings
        "b > 20.0 && (a < 80.0 && b < 60.0)",
        "a < -1.0 || a > 1.0 || b <= 0.5",
        "(a >= 0.0 || b < 1.0) && (a < 2.0 || b > 3.0) && !(a > 2.5 && a <= 2.5)",
        "a > 1.0 && a > 2.0 && a < 3.0 && a <= 80.0 && a >= 0.5",  # two pairs, one left over
        "a >= 0.0 == (a <= 1.0) && (c > 0.5 ? a : b) < 3.0",
    ],
)
def test_fused_bounds_agree_with_the_twin(text: str) -> None:
    compiled, pure = both()
    program = compile_condition(text, CHANNELS)
    columns = random_columns(len(text), 1000)
    columns[0, ::7] = [-math.inf, math.inf, 0.0, -0.0, 1.0, 2.5, 80.0] * 20 + [math.nan] * 3
    np.testing.assert_array_equal(
        compiled.evaluate(program, columns), pure.evaluate(program, columns)
    )


def test_lowering_is_kept_per_program_list_and_bounded() -> None:
    compiled, pure = both()
    programs = [compile_condition(t, CHANNELS) for t in ("a > 0.5 && a < 3.0", "b <= 1.0")]
    columns = random_columns(1, 300)
    first = compiled.evaluate_many(programs, columns)
    size = len(compiled._LOWERED)
    for seed in range(3):  # an evaluator's next batches: same programs, new readings
        columns = random_columns(seed, 300)
        np.testing.assert_array_equal(
            compiled.evaluate_many(programs, columns), pure.evaluate_many(programs, columns)
        )
    assert len(compiled._LOWERED) == size
    # equal but distinct programs are lowered on their own, and the cache stays bounded
    for _ in range(2 * compiled._LOWERED_MAX):
        again = [compile_condition(t, CHANNELS) for t in ("a > 0.5 && a < 3.0", "b <= 1.0")]
        compiled.evaluate_many(again, columns)
    assert len(compiled._LOWERED) <= compiled._LOWERED_MAX
    np.testing.assert_array_equal(compiled.evaluate_many(programs, random_columns(1, 300)), first)


# -- known answers: CEL error semantics ------------------------------------------

# a is missing (NaN: reading it is an error), b = 1.0, c = 0.0
KNOWN = [
    ("a > 0.0 && false", 0),
    ("false && a > 0.0", 0),
    ("a > 0.0 && true", 2),
    ("b > 0.0 && a > 0.0", 2),
    ("a > 0.0 || true", 1),
    ("true || a > 0.0", 1),
    ("a > 0.0 || false", 2),
    ("b < 0.0 || a > 0.0", 2),
    ("!(a > 0.0)", 2),
    ("!(b > 0.0)", 0),
    ("a > 0.0 ? true : false", 2),
    ("b > 0.0 ? true : a > 0.0", 1),
    ("b < 0.0 ? a > 0.0 : true", 1),
    ("b > 0.0 ? a > 0.0 : true", 2),
    ("(b > 0.0 ? a : b) > 0.0", 2),
    ("(b < 0.0 ? a : b) > 0.0", 1),
    ("a == a", 2),
    ("a != 1.0", 2),
    ("a + 1.0 > 0.0", 2),
    ("(a > 0.0) == (a > 0.0)", 2),
    ("(a > 0.0 && false) || b == 1.0", 1),
    # IEEE double arithmetic
    ("b / c > 1e308", 1),
    ("-b / c < -1e308", 1),
    ("b / -c < 0.0", 1),  # 1 / -0.0 == -inf
    ("b / -0.0 < 0.0", 1),
    ("1e308 * 10.0 > 1e308", 1),
    # known deviation: arithmetic NaN is an error
    ("c / c == 0.0", 2),
    ("b / c - b / c == 0.0", 2),
    ("c * (b / c) == 0.0", 2),
    # ints are doubles in this version (documented deviation)
    ("7 / 2 == 3", 1),  # CEL int division truncates
    ("-7 / 2 == -3", 1),
    ("7.0 / 2.0 == 3.5", 1),
    ("9223372036854775807 + 1 == 0 || b > 0.0", 1),  # overflow is an error, absorbed by ||
    ("9223372036854775807 + 1 == 0 && b > 0.0", 2),
    ("1 / 0 == 0 || b < 0.0", 2),
    ("-9223372036854775808 - 1 < 0", 2),
    ("abs(-9223372036854775808) > 0", 2),
    ("abs(-b) == 1.0 && min(b, c) == 0.0 && max(b, c, -b) == 1.0", 1),
    ("min(a, b) > 0.0", 2),
    ("b in [0.0, 1.0] && !(c in [1.0, 2.0]) && !(b in [])", 1),
    ("a in [1.0, 2.0]", 2),
    ("b in [1, 2] && 2 in [1, 2] && 'x' in ['x', 'y']", 1),
    ("'abc' < 'abd' && 'a' + 'b' == 'ab' && b > 0", 1),
    ("b == 1 && 1 == b && b < 2 && 0 < b", 1),
    ("0x10 == 16.0", 1),
    # precedence and associativity (CEL)
    ("b + 2.0 * 3.0 == 7.0", 1),
    ("b - b - b == -1.0", 1),
    ("8.0 / b / 2.0 == 4.0", 1),
    ("true || false && false", 1),
    ("false ? false : true ? true : false", 1),
    ("-2.0 * -b == 2.0", 1),
    ("!true == false", 1),
    ("--b == b", 1),
    ("!!(b > 0.0)", 1),
]


@pytest.mark.parametrize(("text", "expected"), KNOWN, ids=[t for t, _ in KNOWN])
def test_known_answers(impl: ModuleType, text: str, expected: int) -> None:
    program = compile_condition(text, CHANNELS)
    result = impl.evaluate(program, cols([math.nan], [1.0], [0.0]))
    assert result.tolist() == [expected]
    assert oracle_codes(parse(text), cols([math.nan], [1.0], [0.0])).tolist() == [expected]


def test_result_codes_per_reading(impl: ModuleType) -> None:
    program = compile_condition("a >= 2.0 && a <= 8.0", CHANNELS)
    data = cols([5.0, 9.0, math.nan, 2.0, -math.inf], [0] * 5, [0] * 5)
    assert impl.evaluate(program, data).tolist() == [1, 0, 2, 1, 0]


# -- API contract ----------------------------------------------------------------


def test_evaluate_many_shape_and_order(impl: ModuleType) -> None:
    p1 = compile_condition("a > 0.0", CHANNELS)
    p2 = compile_condition("b > 0.0", CHANNELS)
    data = cols([1.0, -1.0, math.nan], [-1.0, 1.0, 1.0], [0, 0, 0])
    assert impl.evaluate_many([p1, p2], data).tolist() == [[1, 0, 2], [0, 1, 1]]
    assert impl.evaluate_many((p for p in [p2]), data).tolist() == [[0, 1, 1]]
    empty = impl.evaluate_many([], data)
    assert empty.shape == (0, 3)
    assert empty.dtype == np.uint8


def test_accepts_any_float_layout(impl: ModuleType) -> None:
    program = compile_condition("a < b", CHANNELS)
    base = np.array([[1, 2, 3, 4], [4, 3, 2, 1], [0, 0, 0, 0]], dtype=np.float32)
    expected = [1, 1, 0, 0]
    assert impl.evaluate(program, base).tolist() == expected
    fortran = np.asfortranarray(base.astype(np.float64))
    assert impl.evaluate(program, fortran).tolist() == expected
    strided = np.repeat(base.astype(np.float64), 2, axis=1)[:, ::2]
    assert impl.evaluate(program, strided).tolist() == expected


def test_program_without_channels_on_empty_schema(impl: ModuleType) -> None:
    program = compile_condition("1.0 < 2.0", [])
    assert impl.evaluate(program, np.empty((0, 4))).tolist() == [1, 1, 1, 1]


@pytest.mark.parametrize(
    ("columns", "error"),
    [
        (np.zeros(3), ValueError),  # not 2-D
        (np.zeros((2, 3)), ValueError),  # wrong number of channel rows
        (np.zeros((3, 2, 1)), ValueError),
    ],
)
def test_rejects_misshapen_columns(impl: ModuleType, columns: np.ndarray, error: type) -> None:
    program = compile_condition("a > 0.0", CHANNELS)
    with pytest.raises(error):
        impl.evaluate(program, columns)


def test_rejects_non_programs(impl: ModuleType) -> None:
    with pytest.raises(TypeError):
        impl.evaluate_many(["a > 0"], np.zeros((3, 1)))


# -- Program: verified and immutable ----------------------------------------------

OP = policy_format.OPCODES


@pytest.mark.parametrize(
    ("opcodes", "operands", "reason"),
    [
        ([], [], "empty program"),
        ([OP["LOAD_CHAN"]], [3], "operand 3 out of range"),
        ([OP["LOAD_CONST"]], [0], "operand 0 out of range"),
        ([OP["LOAD_BOOL"]], [2], "operand 2 out of range"),
        ([OP["LOAD_CHAN"]], [0], "exactly one bool"),
        ([OP["AND"]], [0], "stack underflow"),
        ([OP["LOAD_CHAN"], OP["NOT"]], [0, 0], "types"),
        ([OP["LOAD_BOOL"], OP["LOAD_BOOL"]], [1, 1], "exactly one bool"),
        ([OP["LOAD_BOOL"], OP["LOAD_CHAN"], OP["EQ"]], [1, 0, 0], "types"),
        ([0x7F], [0], "unknown opcode"),
        ([OP["LOAD_BOOL"], OP["NOT"]], [1, 5], "operand must be 0"),
        ([OP["LOAD_BOOL"]], [1, 1], "equal length"),
    ],
)
def test_program_verification_rejects_malformed_code(
    opcodes: list[int], operands: list[int], reason: str
) -> None:
    with pytest.raises(ValueError, match=reason):
        Program(opcodes, operands, [], n_channels=3)


def test_program_is_immutable_picklable_and_compares_by_code() -> None:
    program = compile_condition("a >= 2.0 && !(b < -0.0)", CHANNELS)
    with pytest.raises(AttributeError):
        program.n_channels = 4  # type: ignore[misc]
    with pytest.raises(ValueError, match="read-only"):
        program.consts[0] = 1.0
    clone = pickle.loads(pickle.dumps(program))
    assert clone == program
    assert clone is not program
    assert not clone.opcodes.flags.writeable
    assert program == compile_condition("a>=2.0&&!(b< -0.0)", CHANNELS)
    assert program != compile_condition("a >= 2.0 && !(b < 0.0)", CHANNELS)  # -0.0 kept
    assert program.channels_used == (0, 1)
    assert program.max_stack >= 2
    assert "LOAD_CHAN" in program.disassemble()


def test_constant_subexpressions_are_folded() -> None:
    program = compile_condition("a > 2.0 * 3.0 - 1.0 && (true || a > 0.0)", CHANNELS)
    assert len(program) == 3  # LOAD_CHAN, LOAD_CONST 5.0, GT
    assert program.consts.tolist() == [5.0]


# -- the implementation selector ----------------------------------------------------


def test_opcode_tables_match() -> None:
    compiled = _compiled()
    if compiled is None:
        pytest.fail(BUILD_HINT)
    assert compiled.OPCODES == policy_format.OPCODES


def test_compiled_kernel_constants_match_the_program_format() -> None:
    # the .pyx repeats the format's constants as C enums; they must not drift
    compiled = _compiled()
    if compiled is None:
        pytest.fail(BUILD_HINT)
    assert compiled.AGG_KINDS == policy_format.AGG_KINDS
    assert compiled.PHASES == policy_format.PHASES
    assert policy_format.PHASES == {
        "PHASE_OK": policy_format.PHASE_OK,
        "PHASE_PENDING": policy_format.PHASE_PENDING,
        "PHASE_VIOLATED": policy_format.PHASE_VIOLATED,
        "PHASE_CLEARING": policy_format.PHASE_CLEARING,
    }


def _implementation(env_pure: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "EDGEGOV_PURE"}
    if env_pure is not None:
        env["EDGEGOV_PURE"] = env_pure
    out = subprocess.run(
        [sys.executable, "-c", "import native.policy as p; print(p.IMPLEMENTATION)"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def test_env_var_forces_pure_python() -> None:
    assert _implementation("1") == "python"


def test_compiled_module_is_used_by_default() -> None:
    if _compiled() is None:
        pytest.fail(BUILD_HINT)
    assert _implementation(None) == "cython"
