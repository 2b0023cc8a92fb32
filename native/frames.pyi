import numpy as np
import numpy.typing as npt

from firmware_bridge.frames import Frame

__all__ = ["IMPLEMENTATION", "STAT_NAMES", "Batch", "BatchDecoder"]

IMPLEMENTATION: str  # "cython" or "python"
STAT_NAMES: tuple[str, ...]

class Batch:
    """Samples column-wise plus the other frames, in stream order (see native._frames_py)."""

    seq: npt.NDArray[np.uint32]
    device_ms: npt.NDArray[np.int64]
    values: npt.NDArray[np.float64]
    others: list[tuple[int, Frame]]
    frame_seq: npt.NDArray[np.uint32]
    frame_samples: npt.NDArray[np.uint16]
    def __init__(
        self,
        seq: npt.NDArray[np.uint32],
        device_ms: npt.NDArray[np.int64],
        values: npt.NDArray[np.float64],
        others: list[tuple[int, Frame]],
        frame_seq: npt.NDArray[np.uint32],
        frame_samples: npt.NDArray[np.uint16],
    ) -> None: ...
    @property
    def data_frames(self) -> int: ...
    def __len__(self) -> int: ...

class BatchDecoder:
    """Incremental columnar decoder for one serial line."""

    n_channels: int
    def __init__(self, n_channels: int = 0) -> None: ...
    def stats(self) -> dict[str, int]: ...
    def set_channels(self, n_channels: int) -> None: ...
    def feed(self, data: bytes | bytearray | memoryview) -> Batch: ...
