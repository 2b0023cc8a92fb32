"""A pseudo-terminal that behaves like a raw serial line, for the emulator and tests.

The emulated device writes to ``master_fd``; the agent opens ``slave_path``
with pyserial exactly as it would open ``/dev/ttyUSB0``.

Two things make a bare ``os.openpty()`` unfit for a binary protocol, and this
module fixes both:

* A new pty starts in cooked mode: the slave's line discipline turns 0x0D into
  0x0A (ICRNL), swallows 0x11/0x13 (IXON) and 0x03 (ISIG), echoes input back
  (ECHO) and holds bytes until a newline (ICANON). Input processing happens
  when the master *writes*, so bytes written before the agent opens the slave
  (and pyserial switches to raw) are already mangled. We set raw mode on the
  slave at creation. (On Linux, termios calls on the master act on the slave.)
* Termios settings and queued input belong to the open tty, so when the last
  slave descriptor closes they are reset/lost, and writes to the master start
  failing with EIO. We keep one slave descriptor open for the pair's lifetime,
  so the agent may open, close and reopen ``slave_path`` freely.
"""

from __future__ import annotations

import os
import termios
from types import TracebackType

__all__ = ["PtyPair", "open_pty"]


def _make_raw(fd: int) -> None:
    """cfmakeraw(3), plus no software flow control, applied immediately."""
    iflag, oflag, cflag, lflag, ispeed, ospeed, cc = termios.tcgetattr(fd)
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
        | termios.IXOFF
        | termios.IXANY
        | termios.INPCK
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag = (cflag & ~(termios.CSIZE | termios.PARENB)) | termios.CS8 | termios.CREAD
    cc = list(cc)
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, [iflag, oflag, cflag, lflag, ispeed, ospeed, cc])


class PtyPair:
    """A raw pty: write device bytes to :attr:`master_fd`, open :attr:`slave_path`.

    Use as a context manager or call :meth:`close`. Closing makes
    ``slave_path`` disappear; a reader then gets EIO (pyserial: SerialException),
    just as when a USB adapter is unplugged.
    """

    __slots__ = ("_slave_fd", "master_fd", "slave_path")

    def __init__(self) -> None:
        master_fd, slave_fd = os.openpty()
        try:
            _make_raw(slave_fd)
            self.slave_path: str = os.ttyname(slave_fd)
        except BaseException:
            os.close(master_fd)
            os.close(slave_fd)
            raise
        self.master_fd: int = master_fd
        self._slave_fd: int | None = slave_fd

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._slave_fd is None

    def close(self) -> None:
        """Close both sides (idempotent)."""
        if self._slave_fd is None:
            return
        slave_fd, self._slave_fd = self._slave_fd, None
        os.close(self.master_fd)
        os.close(slave_fd)

    def __enter__(self) -> PtyPair:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"master_fd={self.master_fd}"
        return f"<PtyPair {self.slave_path} {state}>"


def open_pty() -> PtyPair:
    """Create a raw pty pair (see :class:`PtyPair`)."""
    return PtyPair()
