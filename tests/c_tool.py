"""Build and drive the C reference implementation (firmware_bridge/c) from the tests.

The tool is compiled once per session with the system C compiler (``cc``,
strict C99, warnings as errors) and kept running; each request is one line on
its stdin, each answer one line on its stdout (see ``eg_tool.c``).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import firmware_bridge
from firmware_bridge import (
    Ack,
    ChannelKind,
    ChannelSpec,
    Command,
    Data,
    DeviceError,
    Frame,
    Heartbeat,
    Hello,
)

C_DIR = Path(firmware_bridge.__file__).parent / "c"
CFLAGS = ["-std=c99", "-Wall", "-Wextra", "-pedantic", "-Werror", "-O2"]


def build(out_dir: Path) -> Path:
    cc = shutil.which("cc")
    assert cc, "the tests need a C compiler on PATH as `cc` (Debian: apt-get install gcc)"
    exe = out_dir / "eg_tool"
    sources = [str(C_DIR / "eg_tool.c"), str(C_DIR / "edgegov_frame.c")]
    subprocess.run([cc, *CFLAGS, "-o", str(exe), *sources], check=True)
    return exe


class CTool:
    """A running eg_tool process."""

    def __init__(self, exe: Path) -> None:
        self.proc = subprocess.Popen(
            [str(exe)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1
        )

    def ask(self, line: str) -> str:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().rstrip("\n")

    def stream(self, wire: bytes) -> list[str]:
        """Feed *wire* byte by byte through eg_stream; every non-MORE result."""
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(f"str {wire.hex()}\n")
        self.proc.stdin.flush()
        out = []
        while (line := self.proc.stdout.readline().rstrip("\n")) != "END":
            out.append(line)
        return out

    def close(self) -> None:
        assert self.proc.stdin
        self.proc.stdin.close()
        self.proc.wait(timeout=5)
        assert self.proc.stdout
        self.proc.stdout.close()


def _x(b: bytes | str) -> str:
    return "x" + (b.encode() if isinstance(b, str) else b).hex()


def _bits(v: float) -> str:
    return struct.pack("<f", v)[::-1].hex()


def to_text(frame: Frame) -> str:
    """A frame in eg_tool's text form."""
    b = frame.body
    head = f"{frame.seq} {frame.timestamp_ms} {int(frame.type)}"
    if isinstance(b, Hello):
        chans = " ".join(
            f"{_x(c.name)} {_x(c.unit)} {int(c.kind)} {_bits(c.min)} {_bits(c.max)}"
            for c in b.channels
        )
        return f"{head} {_x(b.serial)} {_x(b.firmware)} {b.max_version} {len(b.channels)} {chans}"
    if isinstance(b, Data):
        vals = " ".join(_bits(v) for v in b.values)
        return f"{head} {b.n_channels} {b.n_samples} {b.interval_ms} {vals}"
    if isinstance(b, (Heartbeat, Ack)):
        return f"{head} {b.uptime_s if isinstance(b, Heartbeat) else b.acked_seq}"
    if isinstance(b, DeviceError):
        return f"{head} {b.code} {_x(b.message)}"
    assert isinstance(b, Command)
    return f"{head} {b.code} {_x(b.arg)}"


def _float(bits: str) -> float:
    return struct.unpack(">f", bytes.fromhex(bits))[0]


def from_text(line: str) -> Frame:
    """Parse eg_tool's text form back into a Frame."""
    t = line.split(" ")
    seq, ts, typ, rest = int(t[0]), int(t[1]), int(t[2]), t[3:]
    body: object
    if typ == 1:
        n = int(rest[3])
        chans = tuple(
            ChannelSpec(
                bytes.fromhex(rest[4 + 5 * i][1:]).decode(),
                bytes.fromhex(rest[5 + 5 * i][1:]).decode(),
                ChannelKind(int(rest[6 + 5 * i])),
                _float(rest[7 + 5 * i]),
                _float(rest[8 + 5 * i]),
            )
            for i in range(n)
        )
        body = Hello(
            bytes.fromhex(rest[0][1:]).decode(),
            bytes.fromhex(rest[1][1:]).decode(),
            chans,
            int(rest[2]),
        )
    elif typ == 2:
        vals = tuple(_float(v) for v in rest[3:] if v)
        body = Data(vals, int(rest[1]), int(rest[2]))
    elif typ == 3:
        body = Heartbeat(int(rest[0]))
    elif typ == 4:
        body = DeviceError(int(rest[0]), bytes.fromhex(rest[1][1:]).decode())
    elif typ == 0x81:
        body = Ack(int(rest[0]))
    else:
        body = Command(int(rest[0]), bytes.fromhex(rest[1][1:]))
    return Frame(seq, ts, body)  # type: ignore[arg-type]
