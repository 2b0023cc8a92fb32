"""Start a private Mosquitto broker on a free loopback port (demo and tests).

Production brokers are the operator's; this only exists so that the demo and
the tests talk to a real broker with a config of their own.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from agent.errors import TransportError

__all__ = ["MosquittoBroker", "find_mosquitto", "free_port"]


def find_mosquitto() -> str | None:
    """Path of the mosquitto binary (Debian puts it in /usr/sbin), or None."""
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class MosquittoBroker:
    """A mosquitto process with its own config; a context manager."""

    def __init__(self, workdir: Path, extra_config: str = "", port: int | None = None) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise TransportError("mosquitto is not installed (apt-get install mosquitto)")
        self.binary = binary
        self.workdir = workdir
        self.port = port or free_port()
        self._port_free_to_change = port is None  # until it first listens
        self.extra_config = extra_config
        self.log_path = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 5.0) -> MosquittoBroker:
        """Start and wait until it listens. A port we picked that another process took
        meanwhile (free_port's race: any connection may get it as its local port) is
        picked again, at most twice; a port the caller gave is not.
        """
        for attempt in range(3):
            try:
                self._start(timeout)
            except TransportError as e:
                if not self._port_free_to_change or "Address already in use" not in str(e):
                    raise
                if attempt == 2:
                    raise
                self.port = free_port()
                continue
            self._port_free_to_change = False
            return self
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        conf = self.workdir / "mosquitto.conf"
        conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "persistence false\n"
            # as configs/broker/mosquitto-tls.conf: mosquitto's default (1000) drops QoS 1
            # messages for a subscriber that falls behind, e.g. a collector on a busy machine
            "max_queued_messages 100000\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            # Run as root, mosquitto drops to user 'mosquitto', which cannot read our files.
            + ("user root\n" if os.geteuid() == 0 else "")
            + (self.extra_config or "allow_anonymous true\n")
        )
        self.proc = subprocess.Popen(
            [self.binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = ""
                if self.proc.stderr:
                    err = self.proc.stderr.read().decode(errors="replace")
                    self.proc.stderr.close()
                log = self.log_path.read_text() if self.log_path.exists() else ""
                raise TransportError(
                    f"mosquitto exited with {self.proc.returncode}: {(err + log).strip()[-500:]}"
                )
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TransportError(
            f"mosquitto did not listen on 127.0.0.1:{self.port} within {timeout} s"
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()

    def kill(self) -> None:
        """Simulate a broker crash (tests)."""
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, 9)
            self.proc.wait()

    def __enter__(self) -> MosquittoBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
