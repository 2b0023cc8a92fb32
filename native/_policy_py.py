"""Policy programs and their pure-Python evaluator (the readable reference).

A *program* is a compiled rule condition: a stack-machine instruction list
built by ``agent.policy.compiler`` in the format of ``native.policy_format``.
This module interprets programs one reading at a time in plain Python and
runs the stateful kernels (window aggregates, durations, rule state machines).
``native/_policy.pyx`` interprets the same programs block-wise in C; both
must return identical results on every input (tests/test_policy_eval.py
checks that differentially).

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

The program format (opcode table, ``Program``, the kernels' state layout)
is defined in ``native.policy_format``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from native.policy_format import (
    AGG_COMPLETENESS,
    AGG_COUNT,
    AGG_DELTA,
    AGG_KINDS,
    AGG_MAX,
    AGG_MEAN,
    AGG_MIN,
    AGG_RATE,
    AGG_STDDEV,
    ARITY,
    ERROR,
    FALSE,
    LOAD_BCHAN,
    LOAD_BOOL,
    LOAD_CHAN,
    LOAD_CONST,
    LOAD_ERR,
    OPCODES,
    PHASE_CLEARING,
    PHASE_OK,
    PHASE_PENDING,
    PHASE_VIOLATED,
    TRUE,
    Program,
    apply_op,
    prepare,
    result_code,
)

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

# -- evaluation --------------------------------------------------------------


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
                k = ARITY[op]
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
# between batches and can be saved and restored across restarts (the slots
# are named in native.policy_format). The compiled module implements the same
# kernels with the same floating-point operations in the same order, so both
# give bit-identical results.
#
# Timestamps are int64 ms and must not go backwards; one that does is taken
# as the previous one (``last_t`` in the state). A window of duration ``D``
# at reading time ``t`` holds the readings with ``t - D < time <= t``.


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
