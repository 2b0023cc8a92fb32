# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled, block-wise evaluator for policy programs.

Same programs, same semantics and same results as the pure-Python twin
``native._policy_py`` (read its docstring for the value model, and
``native.policy_format`` for the opcode table); this module only changes
*how* a program is run.

Instead of running the whole program once per reading, it runs each
instruction over a block of up to ``BLOCK`` readings with a tight C loop, so
the interpretive overhead (the opcode dispatch) is paid once per block and the
working set stays in L1:

* the value stack is an array of pointers to blocks of doubles or of bool
  lanes (one byte per reading; see the kernels below);
* ``LOAD_CHAN`` pushes a pointer straight into the caller's column (no copy);
* ``LOAD_CONST``/``LOAD_BOOL`` push a pointer to a block pre-filled with that
  constant when the programs were lowered;
* an operator whose result lands at stack depth ``d`` writes it into scratch
  block ``d``. A value at depth ``d`` only ever points at scratch block ``d``
  or at read-only data, so no live value is overwritten (an invariant that
  stack-shuffling opcodes such as DUP/SWAP would have to respect).

Programs are verified by ``Program.__init__`` (operands in range, no
underflow, types), which is what makes the unchecked indexing here safe.
Errors in doubles are NaN, as in the twin. A list of programs is lowered to
the internal instruction set once and kept for the next call with the same
program objects (an evaluator's every batch), so a call pays only for the
readings.
"""

cimport cython
from libc.math cimport NAN, sqrt
from libc.stdlib cimport free, malloc
from libc.stdint cimport int64_t

import numpy as np

from native.policy_format import AGG_KINDS as _FORMAT_AGG_KINDS
from native.policy_format import OPCODES as _FORMAT_OPCODES
from native.policy_format import PHASES as _FORMAT_PHASES
from native.policy_format import Program, prepare

__all__ = [
    "AGG_KINDS",
    "BLOCK",
    "OPCODES",
    "PHASES",
    "Program",
    "agg_update",
    "duration_update",
    "evaluate",
    "evaluate_many",
    "rule_update",
]

# The program format (native.policy_format) as C constants, so that the dispatch
# compiles to a switch; checked against that module on import (below) and by
# tests/test_policy_eval.py.
cdef enum:
    BLOCK_ = 256

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

BLOCK = BLOCK_

OPCODES = {
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

# the stateful kernels' constants (native.policy_format: aggregate kinds, rule phases)
cdef enum:
    AGG_MEAN = 1
    AGG_MIN = 2
    AGG_MAX = 3
    AGG_STDDEV = 4
    AGG_COUNT = 5
    AGG_RATE = 6
    AGG_DELTA = 7
    AGG_COMPLETENESS = 8

    PHASE_OK = 0
    PHASE_PENDING = 1
    PHASE_VIOLATED = 2
    PHASE_CLEARING = 3

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

PHASES = {
    "PHASE_OK": PHASE_OK,
    "PHASE_PENDING": PHASE_PENDING,
    "PHASE_VIOLATED": PHASE_VIOLATED,
    "PHASE_CLEARING": PHASE_CLEARING,
}

# a build out of step with the program format must not run
if OPCODES != _FORMAT_OPCODES:
    raise ImportError("native._policy opcode table differs from native.policy_format")
if AGG_KINDS != _FORMAT_AGG_KINDS:
    raise ImportError("native._policy aggregate kinds differ from native.policy_format")
if PHASES != _FORMAT_PHASES:
    raise ImportError("native._policy rule phases differ from native.policy_format")


# -- kernels -------------------------------------------------------------------------
# Plain C loops without branches (selects that compile to blends), written so that
# GCC vectorises them; on x86-64 each is built for AVX-512, AVX2 and baseline and
# picked at load time (function multiversioning), which is how NumPy reaches the
# same instructions.
# Doubles carry the double values (NaN = error). Bools travel as one byte per reading
# ("bool lanes", an eighth of the traffic) in Kleene's order: 0 false, 1 error,
# 2 true. CEL's commutative && and || are strong Kleene logic, so in that order they
# are min and max, and ! is 2 - x; a program's final lane becomes result bytes
# (1 holds, 0 violated, 2 error) once, as the block is written out.

cdef extern from *:
    """
    #include <stdint.h>
    #include <math.h>
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
    #define EG_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
    #else
    #define EG_CLONES
    #endif
    #define EG_NEG 0x10
    #define EG_ADD 0x11
    #define EG_SUB 0x12
    #define EG_MUL 0x13
    #define EG_DIV 0x14
    #define EG_MIN 0x16
    #define EG_LT 0x20
    #define EG_LE 0x21
    #define EG_GT 0x22
    #define EG_GE 0x23
    #define EG_EQ 0x24
    #define EG_NE 0x25
    /* A comparison's lane byte is picked among doubles (2.0 true, 0.0 false, 1.0 error:
       either operand NaN, which also covers x != y) and narrowed once: GCC vectorises
       that as two compares and blends, where narrowing each predicate to bytes apart
       takes a quarter (AVX2) to a half (AVX-512) longer. */
    #define EG_CMP_LOOP(EXPR) \
        for (Py_ssize_t i = 0; i < n; i++) { \
            double x = a[i], y = b[i], v = (EXPR) ? 2.0 : 0.0; \
            r[i] = (uint8_t)(((x == x) & (y == y)) ? v : 1.0); }
    #define EG_CMPK_LOOP(EXPR) \
        for (Py_ssize_t i = 0; i < n; i++) { \
            double x = a[i], v = (EXPR) ? 2.0 : 0.0; \
            r[i] = (uint8_t)(x == x ? v : 1.0); }
    /* r = a OP b for doubles, as a lane */
    EG_CLONES static void eg_cmp(int op, uint8_t *restrict r, const double *restrict a,
                                 const double *restrict b, Py_ssize_t n) {
        switch (op) {
        case EG_LT: EG_CMP_LOOP(x < y) break;
        case EG_LE: EG_CMP_LOOP(x <= y) break;
        case EG_GT: EG_CMP_LOOP(x > y) break;
        case EG_GE: EG_CMP_LOOP(x >= y) break;
        case EG_EQ: EG_CMP_LOOP(x == y) break;
        default: EG_CMP_LOOP(x != y) break;
        }
    }
    /* r = a OP y for a constant y that is not NaN (the lowering fuses no other), as a
       lane; a bool channel (0.0, 1.0, NaN) is a == 1.0 */
    EG_CLONES static void eg_cmpk(int op, uint8_t *restrict r, const double *restrict a,
                                  double y, Py_ssize_t n) {
        switch (op) {
        case EG_LT: EG_CMPK_LOOP(x < y) break;
        case EG_LE: EG_CMPK_LOOP(x <= y) break;
        case EG_GT: EG_CMPK_LOOP(x > y) break;
        case EG_GE: EG_CMPK_LOOP(x >= y) break;
        case EG_EQ: EG_CMPK_LOOP(x == y) break;
        default: EG_CMPK_LOOP(x != y) break;
        }
    }
    /* (x > lo or x >= lo) && / || (x < hi or x <= hi) for one column x and constants
       that are not NaN, as a lane: both comparisons are errors exactly when x is NaN,
       so the pair costs three compares and one narrowing instead of four and two.
       variant: bit 0 lo strict, bit 1 hi strict, bit 2 || rather than && */
    #define EG_BAND_LOOP(LO, COMB, HI) \
        for (Py_ssize_t i = 0; i < n; i++) { \
            double x = a[i], v = ((LO) COMB (HI)) ? 2.0 : 0.0; \
            r[i] = (uint8_t)(x == x ? v : 1.0); }
    EG_CLONES static void eg_band(int variant, uint8_t *restrict r, const double *restrict a,
                                  double lo, double hi, Py_ssize_t n) {
        switch (variant) {
        case 0: EG_BAND_LOOP(x >= lo, &, x <= hi) break;
        case 1: EG_BAND_LOOP(x > lo, &, x <= hi) break;
        case 2: EG_BAND_LOOP(x >= lo, &, x < hi) break;
        case 3: EG_BAND_LOOP(x > lo, &, x < hi) break;
        case 4: EG_BAND_LOOP(x >= lo, |, x <= hi) break;
        case 5: EG_BAND_LOOP(x > lo, |, x <= hi) break;
        case 6: EG_BAND_LOOP(x >= lo, |, x < hi) break;
        default: EG_BAND_LOOP(x > lo, |, x < hi) break;
        }
    }
    /* CEL's &&, || and ! on lanes: min, max and 2 - x in Kleene's order */
    EG_CLONES static void eg_and(uint8_t *r, const uint8_t *a, const uint8_t *b, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint8_t x = a[i], y = b[i];
            r[i] = x < y ? x : y;
        }
    }
    EG_CLONES static void eg_or(uint8_t *r, const uint8_t *a, const uint8_t *b, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint8_t x = a[i], y = b[i];
            r[i] = x > y ? x : y;
        }
    }
    EG_CLONES static void eg_not(uint8_t *r, const uint8_t *a, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++)
            r[i] = (uint8_t)(2 - a[i]);
    }
    /* lane == lane (ne = 0) or != (ne = 1): an error if either is */
    EG_CLONES static void eg_beq(int ne, uint8_t *r, const uint8_t *a, const uint8_t *b,
                                 Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint8_t x = a[i], y = b[i];
            uint8_t v = (uint8_t)(((x == y) ^ ne) << 1);
            r[i] = ((x == 1) | (y == 1)) ? 1 : v;
        }
    }
    EG_CLONES static void eg_selb(uint8_t *r, const uint8_t *c, const uint8_t *a,
                                  const uint8_t *b, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint8_t x = c[i], v = x == 2 ? a[i] : b[i];
            r[i] = x == 1 ? 1 : v;
        }
    }
    EG_CLONES static void eg_seld(double *r, const uint8_t *c, const double *a,
                                  const double *b, Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint8_t x = c[i];
            double v = x == 2 ? a[i] : b[i];
            r[i] = x == 1 ? NAN : v;
        }
    }
    /* a lane as result bytes: false 0 -> 0, error 1 -> 2, true 2 -> 1 */
    EG_CLONES static void eg_codes(uint8_t *restrict r, const uint8_t *restrict a,
                                   Py_ssize_t n) {
        for (Py_ssize_t i = 0; i < n; i++) {
            uint8_t k = a[i];
            r[i] = (uint8_t)(((k << 1) | (k >> 1)) & 3);
        }
    }
    EG_CLONES static void eg_arith(int op, double *r, const double *a, const double *b,
                                   Py_ssize_t n) {
        Py_ssize_t i;
        switch (op) {
        case EG_ADD: for (i = 0; i < n; i++) r[i] = a[i] + b[i]; break;
        case EG_SUB: for (i = 0; i < n; i++) r[i] = a[i] - b[i]; break;
        case EG_MUL: for (i = 0; i < n; i++) r[i] = a[i] * b[i]; break;
        case EG_DIV: for (i = 0; i < n; i++) r[i] = a[i] / b[i]; break;
        case EG_MIN:
            for (i = 0; i < n; i++) {
                double x = a[i], y = b[i], v = x <= y ? x : y;
                r[i] = ((x == x) & (y == y)) ? v : NAN;
            }
            break;
        default:
            for (i = 0; i < n; i++) {
                double x = a[i], y = b[i], v = x >= y ? x : y;
                r[i] = ((x == x) & (y == y)) ? v : NAN;
            }
        }
    }
    EG_CLONES static void eg_neg(int op, double *r, const double *a, Py_ssize_t n) {
        Py_ssize_t i;
        if (op == EG_NEG) { for (i = 0; i < n; i++) r[i] = -a[i]; }
        else { for (i = 0; i < n; i++) r[i] = fabs(a[i]); }
    }
    """
    void eg_cmp(int op, unsigned char* r, const double* a, const double* b,
                Py_ssize_t n) noexcept nogil
    void eg_cmpk(int op, unsigned char* r, const double* a, double y,
                 Py_ssize_t n) noexcept nogil
    void eg_band(int variant, unsigned char* r, const double* a, double lo, double hi,
                 Py_ssize_t n) noexcept nogil
    void eg_and(unsigned char* r, const unsigned char* a, const unsigned char* b,
                Py_ssize_t n) noexcept nogil
    void eg_or(unsigned char* r, const unsigned char* a, const unsigned char* b,
               Py_ssize_t n) noexcept nogil
    void eg_not(unsigned char* r, const unsigned char* a, Py_ssize_t n) noexcept nogil
    void eg_beq(int ne, unsigned char* r, const unsigned char* a, const unsigned char* b,
                Py_ssize_t n) noexcept nogil
    void eg_selb(unsigned char* r, const unsigned char* c, const unsigned char* a,
                 const unsigned char* b, Py_ssize_t n) noexcept nogil
    void eg_seld(double* r, const unsigned char* c, const double* a, const double* b,
                 Py_ssize_t n) noexcept nogil
    void eg_codes(unsigned char* r, const unsigned char* a, Py_ssize_t n) noexcept nogil
    void eg_arith(int op, double* r, const double* a, const double* b,
                  Py_ssize_t n) noexcept nogil
    void eg_neg(int op, double* r, const double* a, Py_ssize_t n) noexcept nogil
    enum:
        EG_NEG
        EG_ADD
        EG_SUB
        EG_MUL
        EG_DIV
        EG_MIN
        EG_LT
        EG_LE
        EG_GT
        EG_GE
        EG_EQ
        EG_NE

if (EG_NEG, EG_ADD, EG_SUB, EG_MUL, EG_DIV, EG_MIN, EG_LT, EG_LE, EG_GT, EG_GE, EG_EQ,
        EG_NE) != (NEG, ADD, SUB, MUL, DIV, MIN, LT, LE, GT, GE, EQ, NE):
    raise ImportError("native._policy C kernels' opcodes differ from its opcode table")


# Internal instruction set: the verified program rewritten with its static types
# (which values are bool lanes) and with "x OP constant" fused into one step.
cdef enum:
    I_DCHAN = 1     # push a column (double, no copy)
    I_DCONST = 2    # push a constant block (double)
    I_BCONST = 3    # push a constant lane (arg = its byte: 0 false, 1 error, 2 true)
    I_DERR = 4      # push an error (double)
    I_BCHAN = 5     # push a bool channel, converted to a lane
    I_UNARY = 6     # NEG / ABS (sub = opcode)
    I_ARITH = 7     # ADD SUB MUL DIV MIN MAX (sub = opcode)
    I_CMP = 8       # double OP double -> lane (sub = opcode)
    I_CMPK = 9      # double OP constant -> lane (sub = opcode, arg = constant index)
    I_AND = 10
    I_OR = 11
    I_NOT = 12
    I_BEQ = 13      # lane == / != lane (sub = opcode)
    I_SELB = 14     # lane ? lane : lane
    I_SELD = 15     # lane ? double : double
    I_BAND = 16     # a column's bounds -> lane (sub = eg_band variant, arg = index of lo, hi)

# values each internal op pops (every op pushes one)
cdef dict _POPS = {
    I_DCHAN: 0, I_DCONST: 0, I_BCONST: 0, I_DERR: 0, I_BCHAN: 0, I_UNARY: 1, I_ARITH: 2,
    I_CMP: 2, I_CMPK: 1, I_AND: 2, I_OR: 2, I_NOT: 1, I_BEQ: 2, I_SELB: 3, I_SELD: 3,
    I_BAND: 1,
}


@cython.boundscheck(True)
@cython.wraparound(True)
def _lower(program):
    """(internal op, sub-op, arg) triples for one verified Program, whether it ends
    with a lane, and the constants its I_BAND steps add after the program's own."""
    ops = program.opcodes.tolist()
    args = program.operands.tolist()
    consts = program.consts
    out = []
    types = []  # static type of each stack slot: True = bool lane
    for pc, (op, arg) in enumerate(zip(ops, args)):
        nxt = ops[pc + 1] if pc + 1 < len(ops) else 0
        if op == LOAD_CONST and LT <= nxt <= NE and not types[-1] and consts[arg] == consts[arg]:
            out.append((-1, 0, arg))  # fused into the comparison that follows
            continue
        if out and out[-1][0] == -1:
            out[-1] = (I_CMPK, op, out[-1][2])
            types[-1] = True
            continue
        if op == LOAD_CHAN:
            out.append((I_DCHAN, 0, arg))
            types.append(False)
        elif op == LOAD_CONST:
            out.append((I_DCONST, 0, arg))
            types.append(False)
        elif op == LOAD_BOOL:
            out.append((I_BCONST, 0, 2 if arg else 0))
            types.append(True)
        elif op == LOAD_ERR:
            out.append((I_BCONST, 0, 1) if arg == 1 else (I_DERR, 0, 0))
            types.append(arg == 1)
        elif op == LOAD_BCHAN:
            out.append((I_BCHAN, 0, arg))
            types.append(True)
        elif op in (NEG, ABS):
            out.append((I_UNARY, op, 0))
        elif ADD <= op <= MAX:
            out.append((I_ARITH, op, 0))
            types.pop()
        elif LT <= op <= NE:
            is_bool = types[-1]
            out.append((I_BEQ if is_bool else I_CMP, op, 0))
            types.pop()
            types[-1] = True
        elif op == NOT:
            out.append((I_NOT, 0, 0))
        elif op == AND or op == OR:
            out.append((I_AND if op == AND else I_OR, 0, 0))
            types.pop()
        else:  # SELECT
            is_bool = types[-1]
            out.append((I_SELB if is_bool else I_SELD, 0, 0))
            types.pop()
            types.pop()
            types[-1] = is_bool
    extra = []
    return _regroup(out, consts, extra), types[0], extra


@cython.boundscheck(True)
@cython.wraparound(True)
def _regroup(code, consts, extra):
    """Flatten chains of && (and of ||) and fuse two bounds on one column into I_BAND.

    A chain's operands are re-emitted left to right in one chain: in Kleene's order
    && and || are min and max, associative and commutative, so the lanes are the
    same. Within a chain, ``x > lo`` or ``x >= lo`` meets ``x < hi`` or ``x <= hi``
    on the same column (as in ``t < 80.0 && h >= 20.0 && h <= 60.0``, whose
    comparisons of ``h`` are not siblings) and the pair becomes one I_BAND step;
    its two constants are appended to ``extra`` (indexed after ``consts``).
    The tree is built and emitted without recursion, so no program is too deep.
    """
    nodes = []  # subtrees on the stack: (triple, operand subtrees); a chain holds them flat
    for t in code:
        k = _POPS[t[0]]
        kids = nodes[len(nodes) - k:] if k else []
        del nodes[len(nodes) - k:]
        if t[0] == I_AND or t[0] == I_OR:
            flat = []
            for kid in kids:
                flat.extend(kid[1] if kid[0][0] == t[0] else [kid])
            kids = _fuse_bounds(t[0] == I_OR, flat, consts, extra)
        nodes.append((t, kids))
    out = []
    work = [nodes[0]]
    while work:
        item = work.pop()
        if len(item) == 3:  # a triple
            out.append(item)
            continue
        t, kids = item
        if t[0] == I_AND or t[0] == I_OR:
            seq = [kids[0]]
            for kid in kids[1:]:
                seq += [kid, t]
        else:
            seq = kids + [t]
        work.extend(reversed(seq))
    return out


@cython.boundscheck(True)
@cython.wraparound(True)
def _fuse_bounds(is_or, flat, consts, extra):
    """The operands of one chain, a lower and an upper bound on a column made one."""
    out = list(flat)
    waiting = {}  # (column, is upper bound) -> positions in out of unpaired bounds
    for i, (t, kids) in enumerate(flat):
        if t[0] != I_CMPK or kids[0][0][0] != I_DCHAN or t[1] in (EQ, NE):
            continue
        col = kids[0][0][2]
        upper = t[1] in (LT, LE)
        partners = waiting.get((col, not upper))
        if not partners:
            waiting.setdefault((col, upper), []).append(i)
            continue
        j = partners.pop(0)
        lo, hi = (out[j][0], t) if upper else (t, out[j][0])
        variant = (lo[1] == GT) | (hi[1] == LT) << 1 | is_or << 2
        extra += [float(consts[lo[2]]), float(consts[hi[2]])]
        out[j] = ((I_BAND, variant, len(consts) + len(extra) - 2), kids)
        out[i] = None
    return [x for x in out if x is not None]


@cython.final
cdef class _Lowered:
    """Programs lowered for ``_run``, with the constant blocks they read.

    Built once per list of programs and kept (``_lowered``): lowering and filling
    the constant blocks is Python work that would otherwise be paid on every
    batch, as much as running a rule over 10,000 readings. Read-only once built,
    so concurrent calls can share it (the scratch blocks are per call).
    """

    cdef tuple programs  # held so that their ids, the cache key, stay theirs
    cdef Py_ssize_t n_prog, max_stack
    cdef int[::1] code  # (op, sub, arg) triples of every program, one after another
    cdef Py_ssize_t[::1] starts  # program k is code triples starts[k] .. starts[k + 1]
    cdef double[::1] consts  # every program's constants, rebased onto one table
    cdef double[::1] constbuf  # a NaN block, then a block filled with each constant
    cdef unsigned char[::1] lanes  # blocks of lane bytes 0, 1, 2 (false, error, true)

    def __cinit__(self, tuple programs):
        triples = []
        starts = [0]
        consts = []
        n_consts = 0
        depth = max_stack = 0
        for p in programs:
            lowered, is_lane, extra = _lower(p)
            if not is_lane:  # a verified program ends with a bool; guard the invariant anyway
                raise ValueError("program does not end with a bool")
            for op, sub, arg in lowered:
                if op in (I_DCONST, I_CMPK, I_BAND):
                    arg += n_consts
                triples.append((op, sub, arg))
                # regrouped chains may nest differently from the program: count again
                depth += 1 - _POPS[op]
                max_stack = max(max_stack, depth)
            depth = 0
            starts.append(len(triples))
            consts += [p.consts, np.array(extra, dtype=np.float64)]
            n_consts += p.consts.size + len(extra)
        const_arr = np.concatenate(consts + [np.zeros(1)])
        self.programs = programs
        self.n_prog = len(programs)
        self.max_stack = max_stack
        self.code = np.array(triples, dtype=np.intc).reshape(-1)
        self.starts = np.array(starts, dtype=np.intp)
        self.consts = const_arr
        self.constbuf = np.concatenate([np.full(BLOCK_, np.nan), np.repeat(const_arr, BLOCK_)])
        self.lanes = np.repeat(np.arange(3, dtype=np.uint8), BLOCK_)


# Lowered program lists by the ids of their programs, oldest first. An entry holds its
# programs, so no id in a key can be reused while the entry is here: a hit is the very
# same (immutable, verified) programs. An evaluator passes the same list every batch.
_LOWERED = {}
_LOWERED_MAX = 64


cdef _Lowered _lowered(list programs):
    key = tuple([id(p) for p in programs])
    low = _LOWERED.get(key)
    if low is None:
        low = _Lowered(tuple(programs))
        if len(_LOWERED) >= _LOWERED_MAX:
            _LOWERED.pop(next(iter(_LOWERED)), None)
        _LOWERED[key] = low
    return <_Lowered> low


cdef void _run(
    const int* code,
    const Py_ssize_t* prog_start,
    Py_ssize_t n_prog,
    const double* cols,
    Py_ssize_t n,
    const double* consts,
    const double* constbuf,
    const unsigned char* lanebuf,
    double* dscratch,
    unsigned char* bscratch,
    const void** stack,
    unsigned char* out,
) noexcept nogil:
    """Run every program over readings [0, n), block by block.

    Block-outer, program-inner: the column block read by one rule is still in
    cache for the next. A value at stack depth ``d`` lives in scratch block
    ``d`` (its double or its lane block) or in read-only data, so no live
    value is overwritten. ``code`` holds (op, sub, arg) triples.
    """
    cdef Py_ssize_t start = 0, m, k, pc, sp
    cdef int op, sub, arg
    cdef double* dr
    cdef unsigned char* br
    while start < n:
        m = n - start
        if m > BLOCK_:
            m = BLOCK_
        for k in range(n_prog):
            sp = -1
            for pc in range(prog_start[k], prog_start[k + 1]):
                op = code[3 * pc]
                sub = code[3 * pc + 1]
                arg = code[3 * pc + 2]
                dr = dscratch + sp * BLOCK_
                br = bscratch + sp * BLOCK_
                if op == I_DCHAN:
                    sp += 1
                    stack[sp] = cols + arg * n + start
                elif op == I_CMPK:
                    eg_cmpk(sub, br, <const double*> stack[sp], consts[arg], m)
                    stack[sp] = br
                elif op == I_BAND:
                    eg_band(sub, br, <const double*> stack[sp], consts[arg], consts[arg + 1], m)
                    stack[sp] = br
                elif op == I_AND:
                    sp -= 1
                    br = bscratch + sp * BLOCK_
                    eg_and(br, <const unsigned char*> stack[sp],
                           <const unsigned char*> stack[sp + 1], m)
                    stack[sp] = br
                elif op == I_OR:
                    sp -= 1
                    br = bscratch + sp * BLOCK_
                    eg_or(br, <const unsigned char*> stack[sp],
                          <const unsigned char*> stack[sp + 1], m)
                    stack[sp] = br
                elif op == I_DCONST:
                    sp += 1
                    stack[sp] = constbuf + arg * BLOCK_
                elif op == I_BCONST:
                    sp += 1
                    stack[sp] = lanebuf + arg * BLOCK_
                elif op == I_DERR:
                    sp += 1
                    stack[sp] = constbuf - BLOCK_  # the NaN block before the constants
                elif op == I_BCHAN:
                    sp += 1
                    br = bscratch + sp * BLOCK_
                    eg_cmpk(EQ, br, cols + arg * n + start, 1.0, m)
                    stack[sp] = br
                elif op == I_UNARY:
                    eg_neg(sub, dr, <const double*> stack[sp], m)
                    stack[sp] = dr
                elif op == I_ARITH:
                    sp -= 1
                    dr = dscratch + sp * BLOCK_
                    eg_arith(sub, dr, <const double*> stack[sp],
                             <const double*> stack[sp + 1], m)
                    stack[sp] = dr
                elif op == I_CMP:
                    sp -= 1
                    br = bscratch + sp * BLOCK_
                    eg_cmp(sub, br, <const double*> stack[sp],
                           <const double*> stack[sp + 1], m)
                    stack[sp] = br
                elif op == I_NOT:
                    eg_not(br, <const unsigned char*> stack[sp], m)
                    stack[sp] = br
                elif op == I_BEQ:
                    sp -= 1
                    br = bscratch + sp * BLOCK_
                    eg_beq(1 if sub == NE else 0, br, <const unsigned char*> stack[sp],
                           <const unsigned char*> stack[sp + 1], m)
                    stack[sp] = br
                elif op == I_SELB:
                    sp -= 2
                    br = bscratch + sp * BLOCK_
                    eg_selb(br, <const unsigned char*> stack[sp],
                            <const unsigned char*> stack[sp + 1],
                            <const unsigned char*> stack[sp + 2], m)
                    stack[sp] = br
                else:  # I_SELD
                    sp -= 2
                    dr = dscratch + sp * BLOCK_
                    eg_seld(dr, <const unsigned char*> stack[sp],
                            <const double*> stack[sp + 1], <const double*> stack[sp + 2], m)
                    stack[sp] = dr
            eg_codes(out + k * n + start, <const unsigned char*> stack[0], m)
        start += m


def evaluate_many(programs, columns):
    """Evaluate each program on every reading: uint8 array (n_programs, n_readings).

    Raises:
        TypeError: an element of ``programs`` is not a ``Program``.
        ValueError: ``columns`` is not 2-D or does not match a program's channels.
    """
    programs = list(programs)
    cols_arr = prepare(programs, columns)
    cdef Py_ssize_t n = cols_arr.shape[1]
    out_arr = np.empty((len(programs), n), dtype=np.uint8)
    if not programs or n == 0:
        return out_arr
    cdef _Lowered low = _lowered(programs)
    cdef const double[:, ::1] cols_v = cols_arr
    cdef unsigned char[:, ::1] out_v = out_arr
    # A program using no channel may see a (0, n) array: no valid row pointer.
    cdef const double* cols_p = &cols_v[0, 0] if cols_v.shape[0] > 0 else NULL
    # Scratch per call, so that threads may share a lowering: per stack depth a
    # block of doubles and a block of lanes, and the pointer stack.
    cdef Py_ssize_t depth = low.max_stack
    cdef char* scratch = <char*> malloc(depth * (BLOCK_ * sizeof(double) + BLOCK_
                                                 + sizeof(void*)))
    if scratch == NULL:
        raise MemoryError()
    try:
        with nogil:
            _run(&low.code[0], &low.starts[0], low.n_prog, cols_p, n, &low.consts[0],
                 &low.constbuf[BLOCK_], &low.lanes[0], <double*> scratch,
                 <unsigned char*> (scratch + depth * (BLOCK_ * sizeof(double)
                                                      + sizeof(void*))),
                 <const void**> (scratch + depth * BLOCK_ * sizeof(double)), &out_v[0, 0])
    finally:
        free(scratch)
    return out_arr


def evaluate(program, columns):
    """Evaluate one program on every reading: uint8 array (n_readings,)."""
    return evaluate_many([program], columns)[0]


# -- stateful kernels (same algorithms and arithmetic as native._policy_py) --------


def agg_update(int kind, int64_t dur_ms, const int64_t[::1] ts, const double[::1] x,
               double[::1] out, int64_t[::1] rt, double[::1] rx, int64_t[::1] dq,
               int64_t[::1] ist, double[::1] fst):
    """Sliding-window aggregate; see ``native._policy_py.agg_update``."""
    cdef Py_ssize_t j, n = ts.shape[0]
    cdef int64_t head = ist[0], tail = ist[1], dqh = ist[2], dqt = ist[3]
    cdef int64_t isum = ist[4], last_t = ist[5], evicted = ist[6]
    cdef int64_t mask = rt.shape[0] - 1
    cdef int64_t t, lim, k, cnt, span, q
    cdef int ok
    cdef double mean = fst[0], m2 = fst[1], v, old, d, r, s
    if ist.shape[0] != 7 or fst.shape[0] != 2:
        raise ValueError("aggregate state must be int64[7] and double[2]")
    if ts.shape[0] != x.shape[0] or out.shape[0] < n:
        raise ValueError("ts, x and out must have the same length")
    if rt.shape[0] == 0 or (rt.shape[0] & mask) or rx.shape[0] != rt.shape[0] \
            or dq.shape[0] != rt.shape[0] or tail - head + n > rt.shape[0]:
        raise ValueError("ring buffers too small or not a power of two")
    with nogil:
        for j in range(n):
            t = ts[j]
            if t < last_t:
                t = last_t
            last_t = t
            v = x[j]
            lim = t - dur_ms
            while head < tail and rt[head & mask] <= lim:
                old = rx[head & mask]
                if kind == AGG_MEAN or kind == AGG_STDDEV:
                    k = tail - head - 1
                    if k == 0:
                        mean = 0.0
                        m2 = 0.0
                    else:
                        d = old - mean
                        mean -= d / k
                        m2 -= d * (old - mean)
                elif kind == AGG_COMPLETENESS:
                    isum -= <int64_t>old
                head += 1
                evicted += 1
            if (kind == AGG_MEAN or kind == AGG_STDDEV) and evicted > 0 \
                    and evicted >= tail - head:
                evicted = 0
                mean = 0.0
                m2 = 0.0
                k = tail - head
                if k > 0:
                    s = 0.0
                    for q in range(head, tail):
                        s += rx[q & mask]
                    mean = s / k
                    for q in range(head, tail):
                        d = rx[q & mask] - mean
                        m2 += d * d
            while dqh < dqt and dq[dqh & mask] < head:
                dqh += 1
            if kind == AGG_COMPLETENESS:
                ok = 1 if v == v else 0
                rt[tail & mask] = t
                rx[tail & mask] = <double>ok
                tail += 1
                isum += ok
            elif v == v:
                rt[tail & mask] = t
                rx[tail & mask] = v
                tail += 1
                if kind == AGG_MEAN or kind == AGG_STDDEV:
                    k = tail - head
                    d = v - mean
                    mean += d / k
                    m2 += d * (v - mean)
                elif kind == AGG_MIN:
                    while dqh < dqt and rx[dq[(dqt - 1) & mask] & mask] >= v:
                        dqt -= 1
                    dq[dqt & mask] = tail - 1
                    dqt += 1
                elif kind == AGG_MAX:
                    while dqh < dqt and rx[dq[(dqt - 1) & mask] & mask] <= v:
                        dqt -= 1
                    dq[dqt & mask] = tail - 1
                    dqt += 1
            cnt = tail - head
            r = NAN
            if kind == AGG_COUNT:
                r = <double>cnt
            elif kind == AGG_COMPLETENESS:
                r = <double>isum / <double>cnt
            elif cnt > 0:
                if kind == AGG_MEAN:
                    r = mean
                elif kind == AGG_STDDEV:
                    r = sqrt(m2 / cnt) if m2 > 0.0 else 0.0
                elif kind == AGG_MIN or kind == AGG_MAX:
                    r = rx[dq[dqh & mask] & mask]
                elif kind == AGG_DELTA:
                    r = rx[(tail - 1) & mask] - rx[head & mask]
                elif kind == AGG_RATE:
                    span = rt[(tail - 1) & mask] - rt[head & mask]
                    if span > 0:
                        r = (rx[(tail - 1) & mask] - rx[head & mask]) / (span / 1000.0)
            out[j] = r
    ist[0] = head
    ist[1] = tail
    ist[2] = dqh
    ist[3] = dqt
    ist[4] = isum
    ist[5] = last_t
    ist[6] = evicted
    fst[0] = mean
    fst[1] = m2


def duration_update(const int64_t[::1] ts, const unsigned char[::1] cond, double[::1] out,
                    int64_t[::1] ist):
    """``duration_true``; see ``native._policy_py.duration_update``."""
    cdef Py_ssize_t j, n = ts.shape[0]
    cdef int64_t running = ist[0], start = ist[1], last_t = ist[2], t
    cdef int c
    if cond.shape[0] != n or out.shape[0] < n:
        raise ValueError("ts, cond and out must have the same length")
    with nogil:
        for j in range(n):
            t = ts[j]
            if t < last_t:
                t = last_t
            last_t = t
            c = cond[j]
            if c == 2:
                out[j] = NAN
            elif c == 1:
                if not running:
                    running = 1
                    start = t
                out[j] = (t - start) / 1000.0
            else:
                running = 0
                out[j] = 0.0
    ist[0] = running
    ist[1] = start
    ist[2] = last_t


def rule_update(const int64_t[::1] ts, const unsigned char[::1] cond,
                const unsigned char[::1] clear, const double[::1] measure,
                int64_t for_ms, int64_t clear_ms, int peak_max, unsigned char[::1] out,
                int64_t[::1] ist, double[::1] fst, int64_t[::1] ep_start,
                int64_t[::1] ep_end, double[::1] ep_peak):
    """A rule's state machine; see ``native._policy_py.rule_update``."""
    cdef Py_ssize_t j, n = ts.shape[0], closed = 0
    cdef int64_t phase = ist[0], t0 = ist[1], t1 = ist[2], start = ist[3], last_t = ist[4], t
    cdef int c, cc
    cdef double peak = fst[0], m
    if (cond.shape[0] != n or clear.shape[0] != n or measure.shape[0] != n
            or out.shape[0] < n or ep_start.shape[0] < n or ep_end.shape[0] < n
            or ep_peak.shape[0] < n):
        raise ValueError("rule_update: array lengths differ")
    with nogil:
        for j in range(n):
            t = ts[j]
            if t < last_t:
                t = last_t
            last_t = t
            c = cond[j]
            cc = clear[j]
            m = measure[j]
            if phase == PHASE_OK and c == 0:
                phase = PHASE_PENDING
                t0 = t
                peak = NAN
            elif phase == PHASE_PENDING and c == 1:
                phase = PHASE_OK
            if c == 0 and phase != PHASE_OK and m == m:
                if peak != peak or ((m > peak) if peak_max else (m < peak)):
                    peak = m
            if phase == PHASE_PENDING and c == 0 and t - t0 >= for_ms:
                phase = PHASE_VIOLATED
                start = t0
            elif phase == PHASE_VIOLATED or phase == PHASE_CLEARING:
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
            if phase == PHASE_VIOLATED or phase == PHASE_CLEARING:
                out[j] = 0
            else:
                out[j] = 2 if c == 2 else 1
    ist[0] = phase
    ist[1] = t0
    ist[2] = t1
    ist[3] = start
    ist[4] = last_t
    fst[0] = peak
    return closed
