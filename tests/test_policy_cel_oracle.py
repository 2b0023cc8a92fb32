"""The stateless subset against cel-python, an independent CEL implementation.

Random typed expressions over double channels, int/double/bool/string
literals, arithmetic, comparisons, ``&&``/``||``/``!``/``?:`` and ``in``;
random readings, some missing. A missing reading is an unbound variable for
cel-python (an error, as it is for us), so CEL's commutative error handling
(``false && error == false``) is checked, and so are int overflow and
division by zero.

Differences from cel-python 0.5 that the generator avoids, with the reason:
mixed int/double comparisons (CEL allows them, cel-python 0.5 only in some
operand orders), double division by zero and other NaN-producing double
arithmetic (cel-python 0.5 gives ``inf`` for ``0.0 / 0.0``; CEL gives NaN;
we make a produced NaN an error, documented in native/_policy_py.py), and
our functions abs/min/max (not in CEL's standard library).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any

import celpy
import numpy as np
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st

from agent.policy.compiler import compile_condition
from native import _policy_py
from native import policy as compiled

CHANNELS = ("a", "b")
ENV = celpy.Environment()


def cel_code(text: str, reading: dict[str, float]) -> int:
    activation = {k: celpy.celtypes.DoubleType(v) for k, v in reading.items() if not math.isnan(v)}
    try:
        result: Any = ENV.program(ENV.compile(text)).evaluate(activation)
    except celpy.CELEvalError:
        return 2
    except (IndexError, TypeError):
        # cel-python 0.5 itself crashes (not a CEL error) on e.g. `a in []` with `a`
        # unbound inside && / ||: the oracle cannot judge this input. Our two
        # implementations are still compared with each other on it (test_policy_eval).
        reject()
    if isinstance(result, celpy.CELEvalError):
        return 2
    assert isinstance(result, celpy.celtypes.BoolType), (text, result)
    return 1 if bool(result) else 0


DOUBLES = ["0.5", "2.5", "-1.0", "80.0", "1e10"]
INTS = ["0", "1", "-3", "7", "9223372036854775807", "-9223372036854775807"]


@cache
def exprs(kind: str, depth: int) -> st.SearchStrategy[str]:
    leaves = {
        "double": st.sampled_from([*CHANNELS, *DOUBLES]),
        "int": st.sampled_from(INTS),
        "bool": st.sampled_from(["true", "false"]),
        "string": st.sampled_from(["'x'", "'y'", '"xy"']),
    }[kind]
    if depth == 0:
        return leaves
    sub = {k: exprs(k, depth - 1) for k in ("double", "int", "bool", "string")}

    def bin_(ops: list[str], t: str) -> st.SearchStrategy[str]:
        return st.builds(lambda a, op, b: f"({a} {op} {b})", sub[t], st.sampled_from(ops), sub[t])

    if kind == "double":
        return st.one_of(
            leaves,
            bin_(["+", "-", "*"], "double"),
            st.builds(lambda a, d: f"({a} / {d})", sub["double"], st.sampled_from(DOUBLES)),
            st.builds(lambda a: f"-({a})", sub["double"]),
            st.builds(
                lambda c, a, b: f"({c} ? {a} : {b})", sub["bool"], sub["double"], sub["double"]
            ),
        )
    if kind == "int":
        return st.one_of(
            leaves, bin_(["+", "-", "*", "/"], "int"), st.builds(lambda a: f"-({a})", sub["int"])
        )
    if kind == "string":
        return st.one_of(leaves, bin_(["+"], "string"))
    cmp = ["<", "<=", ">", ">=", "==", "!="]
    return st.one_of(
        leaves,
        bin_(cmp, "double"),
        bin_(cmp, "int"),
        bin_(["==", "!=", "<"], "string"),
        bin_(["==", "!="], "bool"),
        bin_(["&&", "||"], "bool"),
        st.builds(lambda a: f"!({a})", sub["bool"]),
        st.builds(lambda c, a, b: f"({c} ? {a} : {b})", sub["bool"], sub["bool"], sub["bool"]),
        st.builds(
            lambda x, items: f"({x} in [{', '.join(items)}])",
            sub["double"],
            st.lists(st.sampled_from([*DOUBLES, "a"]), max_size=3),
        ),
        st.builds(
            lambda x, items: f"({x} in [{', '.join(items)}])",
            sub["int"],
            st.lists(st.sampled_from(INTS), max_size=3),
        ),
    )


readings = st.lists(
    st.tuples(
        st.sampled_from([math.nan, 0.5, 2.5, -1.0, 3.0, 80.0]),
        st.sampled_from([math.nan, 0.5, 1.0, 7.0, -2.5]),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=exprs("bool", 3), rows=readings)
def test_evaluators_agree_with_cel_python(text: str, rows: list[tuple[float, float]]) -> None:
    program = compile_condition(text, CHANNELS)
    columns = np.array(rows, dtype=np.float64).T.copy()
    expected = [cel_code(text, dict(zip(CHANNELS, r))) for r in rows]
    for mod in (compiled, _policy_py):
        got = mod.evaluate(program, columns).tolist()
        assert got == expected, (mod.__name__, text, rows)


KNOWN_ERRORS = [
    ("9223372036854775807 + 1 > 0", 2),  # int overflow
    ("1 / 0 == 0", 2),  # int division by zero
    ("1 / 0 == 0 || true", 1),  # absorbed by ||, in either order
    ("false && 1 / 0 == 0", 0),
    ("a > 1.0", 2),  # a is missing: unbound
    ("a > 1.0 && b < 0.0", 0),  # b = 1.0: false wins over the error
    ("b < 0.0 && a > 1.0", 0),
    ("a > 1.0 || b > 0.0", 1),
    ("a in [1.0, 2.0]", 2),
    ("-9223372036854775807 - 2 < 0", 2),
]


def test_known_error_cases_match_cel_python() -> None:
    columns = np.array([[math.nan], [1.0]])
    for text, code in KNOWN_ERRORS:
        assert cel_code(text, {"a": math.nan, "b": 1.0}) == code, text
        for mod in (compiled, _policy_py):
            assert mod.evaluate(compile_condition(text, CHANNELS), columns).tolist() == [code], text
