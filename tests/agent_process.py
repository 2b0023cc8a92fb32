"""`edgegov run` as a real subprocess, with its stderr in a file the test can read while
it runs, and a datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agent.evidence.claims import Evidence, parse_claims
from agent.evidence.cose import decode_sign1
from tests.conftest import ROOT


class AgentProcess:
    """``python -m agent run --config CFG ARGS...``; stderr goes to ``log``."""

    def __init__(
        self,
        cfg: Path,
        *args: str,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], Any] | None = None,
    ) -> None:
        self.log = cfg.parent / f"agent-{time.monotonic_ns()}.log"
        self._err = open(self.log, "w")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg), *args],
            stderr=self._err,
            stdout=subprocess.DEVNULL,
            cwd=ROOT,
            env=env,
            preexec_fn=preexec_fn,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def text(self) -> str:
        return self.log.read_text()

    def json_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.text().splitlines() if line.strip()]

    def wait_log(self, needle: str, timeout: float = 20.0, after: int = 0) -> str:
        """Wait until ``needle`` is in the log past character ``after``; return the log."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if needle in text[after:]:
                return text
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"{needle!r} not in the agent's log (exit {self.proc.poll()}):\n{text[-3000:]}"
                )
            time.sleep(0.05)

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._err.close()


class NotifySocket:
    """What systemd listens on: an AF_UNIX datagram socket, its path short enough for
    sun_path (108 bytes), which pytest's tmp_path may not be."""

    def __init__(self) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="eg-notify-")
        self.path = str(Path(self._dir.name) / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[tuple[float, dict[str, str]]] = []  # (monotonic time, fields)

    def receive(self, timeout: float) -> dict[str, str] | None:
        """The next datagram as KEY=VALUE fields, or None after ``timeout`` seconds."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(4096)
        except TimeoutError:
            return None
        fields = dict(line.split("=", 1) for line in data.decode().split("\n"))
        self.messages.append((time.monotonic(), fields))
        return fields

    def wait_for(self, key: str, value: str = "1", timeout: float = 20.0) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            fields = self.receive(left)
            if fields is not None and fields.get(key) == value:
                return fields
        raise AssertionError(f"no {key}={value} within {timeout} s; got {self.messages}")

    def collect(self, seconds: float) -> list[tuple[float, dict[str, str]]]:
        """Everything that arrives in the next ``seconds``."""
        start = len(self.messages)
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.receive(left)
        return self.messages[start:]

    def close(self) -> None:
        self.sock.close()
        self._dir.cleanup()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def spool_evidence(spool: Path) -> list[Evidence]:
    """Every attestation in a spool directory, parsed, in seq order."""
    return [
        parse_claims(decode_sign1(f.read_bytes()).claims()) for f in sorted(spool.rglob("*.cose"))
    ]


def agent_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    return {**env, **extra}
