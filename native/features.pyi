import numpy as np
import numpy.typing as npt

__all__ = [
    "F_COMPLETENESS",
    "F_COUNT",
    "F_DELTA",
    "F_LAG",
    "F_MAX",
    "F_MEAN",
    "F_MIN",
    "F_RATE",
    "F_STDDEV",
    "IMPLEMENTATION",
    "window_features",
]

IMPLEMENTATION: str  # "cython" or "python"

F_MEAN: int
F_MIN: int
F_MAX: int
F_STDDEV: int
F_COUNT: int
F_RATE: int
F_DELTA: int
F_COMPLETENESS: int
F_LAG: int

def window_features(
    ts: npt.NDArray[np.int64],
    cols: npt.NDArray[np.float64],
    lo: npt.NDArray[np.int64],
    hi: npt.NDArray[np.int64],
    chan: npt.NDArray[np.int32],
    op: npt.NDArray[np.int32],
    dur_ms: npt.NDArray[np.int64],
    arg: npt.NDArray[np.int32],
    out: npt.NDArray[np.float32],
) -> None:
    """Fill ``out[w, f]`` with feature ``f`` of window ``w`` (see native._features_py)."""
