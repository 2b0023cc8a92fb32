"""Putting bytes on a line as fast as it takes them: flood pumping and capture replay.

:func:`pump` writes a buffer to a non-blocking fd, waiting in ``select`` while the line
is full and ending only after a whole frame on a stop; :meth:`Emulator.flood
<firmware_bridge.emulator.Emulator.flood>` and :func:`replay` both write through it.
:func:`replay` sends a capture file's bytes (raw wire bytes, no header, as ``edgegov
emulate --capture`` or ``--record`` writes them) as fast as the line takes them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import threading
import time
from collections.abc import Callable

from .frames import Command, FrameDecoder

__all__ = ["REPLAY_CHUNK_BYTES", "add_rates", "pump", "replay"]

#: Replay: bytes read from the capture file per write.
REPLAY_CHUNK_BYTES = 1 << 20
#: On a stop mid-buffer, how long the line may take to accept the rest of the frame
#: being written (as the emulator's ``_write_frame`` waits for a partly written frame).
_FINISH_FRAME_S = 0.5


def pump(
    fd: int,
    buf: bytes,
    stop: threading.Event,
    deadline: float | None,
    on_input: Callable[[bytes], None] | None,
) -> tuple[int, bool]:
    """Write *buf* to the non-blocking *fd* as fast as it takes it: ``(bytes written, gone)``.

    Waits in ``select`` while the line is full, so a stalled reader costs no CPU and
    *stop* is seen within 0.1 s. On *stop* or at *deadline* it ends early, but only
    after the next 0x00: the line then carries whole frames only (unless the reader
    has stalled for :data:`_FINISH_FRAME_S`). *on_input* gets whatever the other
    side writes back (None: do not read, e.g. a file). ``gone``: the fd failed with
    EIO/EPIPE/EBADF/ENXIO, i.e. the reader went away.
    """
    view = memoryview(buf)
    done = 0
    end = len(buf)
    finish_by: float | None = None
    rlist = [fd] if on_input is not None else []
    wlist = [fd]
    try:
        while done < end:
            if finish_by is None and (
                stop.is_set() or (deadline is not None and time.monotonic() >= deadline)
            ):
                if done == 0 or buf[done - 1] == 0:
                    break
                end = buf.find(0, done) + 1 or end  # the end of the frame on the line
                finish_by = time.monotonic() + _FINISH_FRAME_S
                continue
            if finish_by is not None and time.monotonic() > finish_by:
                break
            readable, writable, _ = select.select(rlist, wlist, [], 0.1)
            if readable and on_input is not None:
                try:
                    chunk = os.read(fd, 65536)
                except BlockingIOError:
                    chunk = None
                if chunk == b"":  # EOF: the other side is gone
                    raise OSError(errno.EIO, "end of file on emulator fd")
                if chunk:
                    on_input(chunk)
            if writable:
                try:
                    done += os.write(fd, view[done:end])
                except BlockingIOError:
                    continue
    except OSError as exc:
        if exc.errno not in (errno.EIO, errno.EPIPE, errno.EBADF, errno.ENXIO):
            raise
        return done, True
    return done, False


def _count_frames(data: bytes, inside: bool) -> tuple[int, bool]:
    """Frames that end in *data* (non-empty runs before a 0x00), and whether it ends inside one.

    *inside*: the bytes before *data* ended inside a frame. This is how a receiver
    splits the line (PROTOCOL.md §2), so corrupt frames count too.
    """
    pieces = data.split(b"\x00")
    n = sum(1 for p in pieces[1:-1] if p)
    if len(pieces) > 1:
        n += bool(pieces[0]) or inside
        return n, bool(pieces[-1])
    return n, inside or bool(pieces[0])


def add_rates(counts: dict[str, int], seconds: float) -> None:
    """Add ``wall_ms``, ``frames_per_s``, ``readings_per_s`` and ``bytes_per_s`` to *counts*."""
    counts["wall_ms"] = round(seconds * 1000)
    for key in ("frames", "readings", "bytes"):
        if key in counts:
            counts[f"{key}_per_s"] = round(counts[key] / seconds) if seconds > 0 else 0


def replay(
    fd: int,
    capture: str | os.PathLike[str],
    stop: threading.Event,
    seconds: float | None = None,
) -> dict[str, int]:
    """Write the bytes of the capture file *capture* to *fd* as fast as it takes them.

    A capture is the raw wire bytes a device sent, exactly as on the line, with no
    header or framing of its own (what ``edgegov emulate --capture`` or ``--record``
    writes); any byte stream of the protocol will do. Replaying it loads a receiver
    through its real input path with a stream fixed in advance, so two runs see the
    same bytes. The device cannot answer: COMMANDs written back (e.g. an agent asking
    for HELLO) are read, so they do not fill the line, and counted, not obeyed. Ends
    at the end of the file, on *stop* or after *seconds* (after a whole frame).

    Returns counts: ``bytes`` and ``frames`` written (frames as a receiver splits
    the line: non-empty runs ending in 0x00, corrupt ones included), ``commands``
    read back, ``reader_gone``, and the rates (``wall_ms``, ``frames_per_s``,
    ``bytes_per_s``).
    """
    counts = {"frames": 0, "bytes": 0, "commands": 0, "reader_gone": 0}
    decoder = FrameDecoder()

    def on_input(chunk: bytes) -> None:
        counts["commands"] += sum(isinstance(f.body, Command) for f in decoder.feed(chunk))

    listen = on_input if os.isatty(fd) else None
    deadline = None if seconds is None else time.monotonic() + seconds
    inside = False
    old_flags = fcntl.fcntl(fd, fcntl.F_GETFL)
    fcntl.fcntl(fd, fcntl.F_SETFL, old_flags | os.O_NONBLOCK)
    t0 = time.monotonic()
    try:
        with open(capture, "rb") as f:
            carry = b""  # a frame cut by the read size: goes out with the next read
            while not stop.is_set():
                data = f.read(REPLAY_CHUNK_BYTES)
                buf, carry = carry + data, b""
                if data and (cut := buf.rfind(0) + 1):
                    # Buffers end after a 0x00, so a stop between them cuts no frame.
                    buf, carry = buf[:cut], buf[cut:]
                if not buf:
                    break
                done, gone = pump(fd, buf, stop, deadline, listen)
                n, inside = _count_frames(buf[:done], inside)
                counts["frames"] += n
                counts["bytes"] += done
                if gone:
                    counts["reader_gone"] = 1
                    break
                if done < len(buf):
                    break
    finally:
        with contextlib.suppress(OSError):
            fcntl.fcntl(fd, fcntl.F_SETFL, old_flags)
    add_rates(counts, time.monotonic() - t0)
    return counts
