"""firmware_bridge: the edgegov serial protocol (bytes from a device -> typed frames).

The lowest layer of edgegov: it imports nothing from ``agent``. The wire
format is specified for firmware authors in ``firmware_bridge/PROTOCOL.md``,
with cross-language test vectors in ``firmware_bridge/vectors/frames.hex``.

* :func:`encode_frame` / :class:`FrameDecoder` -- the codec. Corrupt line data
  never raises; it is counted in :class:`DecoderStats` and skipped.
* :class:`Emulator` -- an emulated sensor device; :func:`open_pty` gives it a
  raw pseudo-terminal that the agent opens like any serial port.
  ``firmware_bridge.line.replay`` sends a capture file's bytes as fast as the line
  takes them, and ``firmware_bridge.emulate_cli.emulate_main`` is ``edgegov emulate``.
"""

from __future__ import annotations

from .emulator import SCENARIOS, Emulator
from .frames import (
    MAX_FRAME_LEN,
    PROTOCOL_VERSION,
    Ack,
    Body,
    ChannelKind,
    ChannelSpec,
    Command,
    CommandCode,
    Data,
    DecoderStats,
    DeviceError,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    MsgType,
    encode_frame,
)
from .pty_pair import PtyPair, open_pty

__all__ = [
    "MAX_FRAME_LEN",
    "PROTOCOL_VERSION",
    "SCENARIOS",
    "Ack",
    "Body",
    "ChannelKind",
    "ChannelSpec",
    "Command",
    "CommandCode",
    "Data",
    "DecoderStats",
    "DeviceError",
    "Emulator",
    "Frame",
    "FrameDecoder",
    "Heartbeat",
    "Hello",
    "MsgType",
    "PtyPair",
    "encode_frame",
    "open_pty",
]
