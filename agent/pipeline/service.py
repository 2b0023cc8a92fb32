"""The systemd notification protocol (sd_notify(3)), spoken without libsystemd.

A service started with ``Type=notify`` finds a datagram socket's address in
``NOTIFY_SOCKET`` (a file system path, or ``@name`` for Linux's abstract namespace)
and sends it newline-separated ``KEY=VALUE`` assignments: ``READY=1`` once it serves,
``STATUS=...`` (shown by ``systemctl status``), ``WATCHDOG=1`` at least once per
``WATCHDOG_USEC`` microseconds when ``WatchdogSec=`` is set, ``RELOADING=1`` and
``STOPPING=1``. Outside systemd (no ``NOTIFY_SOCKET``) every call does nothing.

The agent pings the watchdog from its main loop only, so a hung loop stops the pings
and systemd restarts the service; a thread pinging on its own would hide the hang.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger("edgegov.service")


def _watchdog_period(environ: Mapping[str, str], pid: int) -> float | None:
    """``WATCHDOG_USEC`` in seconds, if it applies to this process (sd_watchdog_enabled(3))."""
    usec = environ.get("WATCHDOG_USEC")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner != str(pid):
        return None  # meant for another process (e.g. our parent)
    try:
        value = int(usec)
    except ValueError:
        log.warning("WATCHDOG_USEC=%r is not a number of microseconds; not pinging", usec)
        return None
    return value / 1e6 if value > 0 else None


class Notifier:
    """Sends service notifications to ``address``; a no-op when ``address`` is None.

    ``watchdog_s`` is the watchdog period; :meth:`watchdog` pings every half period, as
    sd_watchdog_enabled(3) recommends.
    """

    def __init__(self, address: str | None, watchdog_s: float | None = None) -> None:
        self.address: str | None = None
        self.watchdog_interval = watchdog_s / 2 if watchdog_s else None
        self._sock: socket.socket | None = None
        self._last_ping = float("-inf")
        self._failed = False
        if not address:
            return
        if address.startswith("@"):
            self.address = "\0" + address[1:]  # abstract namespace: no file behind it
        elif address.startswith("/"):
            self.address = address
        else:  # vsock: and others are for VMs; not for a gateway service
            log.warning("NOTIFY_SOCKET=%r is not a socket path; not notifying systemd", address)
            return
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, pid: int | None = None) -> Notifier:
        """The notifier systemd asked for in the environment (a no-op without one)."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET")
        period = _watchdog_period(env, os.getpid() if pid is None else pid) if address else None
        return cls(address, period)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; False if not sent (never raises)."""
        if self._sock is None or self.address is None:
            return False
        try:
            self._sock.sendto("\n".join(assignments).encode(), self.address)
        except OSError as e:
            if not self._failed:  # once: systemd restarting must not flood the log
                log.warning("cannot notify systemd at %s: %s", self.address.lstrip("\0"), e)
                self._failed = True
            return False
        self._failed = False
        return True

    @staticmethod
    def _status(text: str) -> str:
        return "STATUS=" + " ".join(text.split())  # one line: a newline would end the value

    def ready(self, status: str) -> None:
        """The service is up (``READY=1``), with a status line."""
        self.send("READY=1", self._status(status))
        self._last_ping = time.monotonic()  # READY counts as a sign of life

    def status(self, text: str) -> None:
        self.send(self._status(text))

    def reloading(self) -> None:
        """A reload starts; :meth:`ready` ends it (systemd.service(5), Type=notify-reload)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def watchdog(self) -> None:
        """Ping the watchdog if half its period has passed. Call from the main loop only."""
        if self.watchdog_interval is None or self._sock is None:
            return
        now = time.monotonic()
        if now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.send("STOPPING=1", self._status(status))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
