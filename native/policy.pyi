from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["IMPLEMENTATION", "Program", "evaluate", "evaluate_many"]

IMPLEMENTATION: str  # "cython" or "python"

class Program:
    """A verified, immutable stack program for one condition (see native._policy_py)."""

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
