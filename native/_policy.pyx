# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False
"""Compiled, block-wise evaluator for policy programs.

Same programs, same semantics and same results as the pure-Python twin
``native._policy_py`` (read its docstring for the value model and opcode
table); this module only changes *how* a program is run.

Instead of running the whole program once per reading, it runs each
instruction over a block of up to ``BLOCK`` readings with a tight C loop, so
the interpretive overhead (the opcode dispatch) is paid once per block and the
working set stays in L1:

* the value stack is an array of pointers to blocks of doubles;
* ``LOAD_CHAN`` pushes a pointer straight into the caller's column (no copy);
* ``LOAD_CONST``/``LOAD_BOOL`` push a pointer to a block pre-filled once per
  call with that constant;
* an operator whose result lands at stack depth ``d`` writes it into scratch
  block ``d``. A value at depth ``d`` only ever points at scratch block ``d``
  or at read-only data, so no live value is overwritten (an invariant that
  stack-shuffling opcodes such as DUP/SWAP would have to respect).

Programs are verified by ``Program.__init__`` (operands in range, no
underflow, types), which is what makes the unchecked indexing here safe.
Errors are NaN and bools 0.0/1.0 throughout, as in the twin.
"""

from libc.math cimport NAN

import numpy as np

from native._policy_py import OPCODES as _PY_OPCODES
from native._policy_py import Program, prepare

__all__ = ["BLOCK", "OPCODES", "Program", "evaluate", "evaluate_many"]

cdef enum:
    BLOCK_ = 256

    LOAD_CHAN = 0x01
    LOAD_CONST = 0x02
    LOAD_BOOL = 0x03
    NEG = 0x10
    ADD = 0x11
    SUB = 0x12
    MUL = 0x13
    DIV = 0x14
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
    "NEG": NEG,
    "ADD": ADD,
    "SUB": SUB,
    "MUL": MUL,
    "DIV": DIV,
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

if OPCODES != _PY_OPCODES:  # a build out of step with the twin must not run
    raise ImportError("native._policy opcode table differs from native._policy_py")


# -- kernels: r[i] = f(a[i], b[i]) for i < n; r may equal a (same index only) --

cdef inline void _neg(double* r, const double* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        r[i] = -a[i]


cdef inline void _arith(int op, double* r, const double* a, const double* b,
                        Py_ssize_t n) noexcept nogil:
    # IEEE arithmetic; NaN (error) propagates by itself.
    cdef Py_ssize_t i
    if op == ADD:
        for i in range(n):
            r[i] = a[i] + b[i]
    elif op == SUB:
        for i in range(n):
            r[i] = a[i] - b[i]
    elif op == MUL:
        for i in range(n):
            r[i] = a[i] * b[i]
    else:
        for i in range(n):
            r[i] = a[i] / b[i]


cdef inline void _cmp(int op, double* r, const double* a, const double* b,
                      Py_ssize_t n) noexcept nogil:
    # Ordered result 1.0/0.0, then NaN if either side is an error. Written as
    # selects rather than branches so the compiler can vectorise them.
    cdef Py_ssize_t i
    cdef double x, y, v
    if op == LT:
        for i in range(n):
            x = a[i]
            y = b[i]
            v = 1.0 if x < y else 0.0
            r[i] = v if (x == x) & (y == y) else NAN
    elif op == LE:
        for i in range(n):
            x = a[i]
            y = b[i]
            v = 1.0 if x <= y else 0.0
            r[i] = v if (x == x) & (y == y) else NAN
    elif op == GT:
        for i in range(n):
            x = a[i]
            y = b[i]
            v = 1.0 if x > y else 0.0
            r[i] = v if (x == x) & (y == y) else NAN
    elif op == GE:
        for i in range(n):
            x = a[i]
            y = b[i]
            v = 1.0 if x >= y else 0.0
            r[i] = v if (x == x) & (y == y) else NAN
    elif op == EQ:
        for i in range(n):
            x = a[i]
            y = b[i]
            v = 1.0 if x == y else 0.0
            r[i] = v if (x == x) & (y == y) else NAN
    else:
        for i in range(n):
            x = a[i]
            y = b[i]
            v = 1.0 if x != y else 0.0
            r[i] = v if (x == x) & (y == y) else NAN


cdef inline void _logic(int op, double* r, const double* a, const double* b,
                        Py_ssize_t n) noexcept nogil:
    # Operands are 0.0, 1.0 or NaN. CEL: false && x == false, true || x == true
    # even for x = error; otherwise an error operand makes an error.
    cdef Py_ssize_t i
    cdef double x, y, v
    if op == AND:
        for i in range(n):
            x = a[i]
            y = b[i]
            v = 1.0 if (x == x) & (y == y) else NAN
            r[i] = 0.0 if (x == 0.0) | (y == 0.0) else v
    else:
        for i in range(n):
            x = a[i]
            y = b[i]
            v = 0.0 if (x == x) & (y == y) else NAN
            r[i] = 1.0 if (x == 1.0) | (y == 1.0) else v


cdef inline void _not(double* r, const double* a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        r[i] = 1.0 - a[i]  # NaN stays NaN


cdef inline void _select(double* r, const double* c, const double* a, const double* b,
                         Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    cdef double x, y, z, v
    for i in range(n):
        x = c[i]
        y = a[i]  # both branches loaded unconditionally so that the select vectorises
        z = b[i]
        v = y if x == 1.0 else z
        r[i] = v if x == x else NAN


cdef inline void _store(unsigned char* out, const double* v, Py_ssize_t n) noexcept nogil:
    # Final bool -> result byte: 1 holds, 0 violated, 2 error.
    cdef Py_ssize_t i
    cdef double x
    for i in range(n):
        x = v[i]
        # x is 0.0, 1.0 or NaN; written as a select + conversion so it vectorises
        out[i] = <unsigned char><int>(x if x == x else 2.0)


cdef void _run(
    const unsigned char* ops,
    const int* args,
    const Py_ssize_t* prog_start,
    Py_ssize_t n_prog,
    const double* cols,
    Py_ssize_t n,
    const double* constbuf,
    const double* boolbuf,
    double* scratch,
    const double** stack,
    unsigned char* out,
) noexcept nogil:
    """Run every program over readings [0, n), block by block.

    Block-outer, program-inner: the column block read by one rule is still
    in cache for the next.
    """
    cdef Py_ssize_t start = 0, m, k, pc, sp
    cdef int op
    cdef double* r
    while start < n:
        m = n - start
        if m > BLOCK_:
            m = BLOCK_
        for k in range(n_prog):
            sp = -1
            for pc in range(prog_start[k], prog_start[k + 1]):
                op = ops[pc]
                if op == LOAD_CHAN:
                    sp += 1
                    stack[sp] = cols + args[pc] * n + start
                elif op == LOAD_CONST:
                    sp += 1
                    stack[sp] = constbuf + args[pc] * BLOCK_
                elif op == LOAD_BOOL:
                    sp += 1
                    stack[sp] = boolbuf + args[pc] * BLOCK_
                elif op == NEG:
                    r = scratch + sp * BLOCK_
                    _neg(r, stack[sp], m)
                    stack[sp] = r
                elif op == NOT:
                    r = scratch + sp * BLOCK_
                    _not(r, stack[sp], m)
                    stack[sp] = r
                elif op == SELECT:
                    sp -= 2
                    r = scratch + sp * BLOCK_
                    _select(r, stack[sp], stack[sp + 1], stack[sp + 2], m)
                    stack[sp] = r
                else:
                    sp -= 1
                    r = scratch + sp * BLOCK_
                    if op <= DIV:
                        _arith(op, r, stack[sp], stack[sp + 1], m)
                    elif op <= NE:
                        _cmp(op, r, stack[sp], stack[sp + 1], m)
                    else:
                        _logic(op, r, stack[sp], stack[sp + 1], m)
                    stack[sp] = r
            _store(out + k * n + start, stack[0], m)
        start += m


def evaluate_many(programs, columns):
    """Evaluate each program on every reading: uint8 array (n_programs, n_readings).

    Raises:
        TypeError: an element of ``programs`` is not a ``Program``.
        ValueError: ``columns`` is not 2-D or does not match a program's channels.
    """
    programs = list(programs)
    cols_arr = prepare(programs, columns)
    cdef Py_ssize_t n_prog = len(programs)
    cdef Py_ssize_t n = cols_arr.shape[1]
    out_arr = np.empty((n_prog, n), dtype=np.uint8)
    if n_prog == 0 or n == 0:
        return out_arr

    # Concatenate the programs; rebase LOAD_CONST operands onto one constant table.
    ops_arr = np.concatenate([p.opcodes for p in programs])
    parts = []
    consts = []
    n_consts = 0
    for p in programs:
        a = p.operands.copy()
        a[p.opcodes == LOAD_CONST] += n_consts
        parts.append(a)
        consts.append(p.consts)
        n_consts += p.consts.size
    args_arr = np.ascontiguousarray(np.concatenate(parts), dtype=np.intc)
    starts_arr = np.zeros(n_prog + 1, dtype=np.intp)
    starts_arr[1:] = np.cumsum([p.opcodes.size for p in programs])
    const_arr = np.repeat(np.concatenate(consts + [np.zeros(1)]), BLOCK_)
    bool_arr = np.repeat(np.array([0.0, 1.0]), BLOCK_)
    max_stack = max(p.max_stack for p in programs)
    scratch_arr = np.empty(max_stack * BLOCK_, dtype=np.float64)
    stack_arr = np.zeros(max_stack, dtype=np.uintp)  # storage for the pointer stack

    cdef const unsigned char[::1] ops_v = ops_arr
    cdef const int[::1] args_v = args_arr
    cdef const Py_ssize_t[::1] starts_v = starts_arr
    cdef const double[:, ::1] cols_v = cols_arr
    cdef const double[::1] const_v = const_arr
    cdef const double[::1] bool_v = bool_arr
    cdef double[::1] scratch_v = scratch_arr
    cdef size_t[::1] stack_v = stack_arr
    cdef unsigned char[:, ::1] out_v = out_arr
    # A program using no channel may see a (0, n) array: no valid row pointer.
    cdef const double* cols_p = &cols_v[0, 0] if cols_v.shape[0] > 0 else NULL

    with nogil:
        _run(&ops_v[0], &args_v[0], &starts_v[0], n_prog, cols_p, n,
             &const_v[0], &bool_v[0], &scratch_v[0], <const double**> &stack_v[0],
             &out_v[0, 0])
    return out_arr


def evaluate(program, columns):
    """Evaluate one program on every reading: uint8 array (n_readings,)."""
    return evaluate_many([program], columns)[0]
