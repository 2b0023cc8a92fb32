"""What every source yields: one :class:`Reading` per sample, as the agent received it.

Sources (framed, text, Modbus) decode their line into readings and hand them to the
pipeline; nothing here knows the claims profile or the verifier.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Reading"]


@dataclass(frozen=True, slots=True)
class Reading:
    """One sample as the agent received it. ``values`` follow the policy's channel order."""

    received_ms: int  # agent clock, Unix ms: decides the window
    device_ms: int  # device clock from the frame
    source: int  # index of the serial source in the config
    frame_seq: int
    values: tuple[float, ...]
