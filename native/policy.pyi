from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = [
    "IMPLEMENTATION",
    "Program",
    "agg_update",
    "duration_update",
    "evaluate",
    "evaluate_many",
    "rule_update",
]

IMPLEMENTATION: str  # "cython" or "python"

class Program:
    """A verified, immutable stack program for one condition (see native.policy_format)."""

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
    ) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __len__(self) -> int: ...
    def disassemble(self) -> str: ...

def evaluate(program: Program, columns: npt.ArrayLike) -> npt.NDArray[np.uint8]: ...
def evaluate_many(programs: Sequence[Program], columns: npt.ArrayLike) -> npt.NDArray[np.uint8]: ...
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
) -> None: ...
def duration_update(
    ts: npt.NDArray[np.int64],
    cond: npt.NDArray[np.uint8],
    out: npt.NDArray[np.float64],
    ist: npt.NDArray[np.int64],
) -> None: ...
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
) -> int: ...
