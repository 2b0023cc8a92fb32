"""The real parts a fault scenario runs: a site (key, policy, config), a Mosquitto with
persistence, emulated devices on ptys, the agent as a subprocess, and a subscriber of our
own that keeps every delivery.

Nothing here is a stand-in: the agent is ``python -m agent run``, the device writes the
framed protocol to a pseudo-terminal the agent opens with pyserial, and the broker is
``mosquitto``, stopped and started again on its port for an outage.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from agent.identity.keys import generate_key, public_key_path
from agent.tools.broker import MosquittoBroker, free_port
from agent.transport.mqtt import BrokerURL, Message, MqttClient, ReasonCode, Session
from firmware_bridge.emulator import UNPLUG_ONLINE_S, Emulator, SentFrame

__all__ = ["AgentProc", "Broker", "Delivery", "Device", "Site", "Subscriber", "wait_until"]

DEVICE_ID = "gw-faults"
FLEET = "faults"
WINDOW_S = 1.0  # short windows: every fault crosses several


def wait_until(pred: Any, timeout: float, step: float = 0.05) -> bool:
    """Poll ``pred()`` until it is true or ``timeout`` s have passed; its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return bool(pred())


class Site:
    """A gateway's files in ``root``: device key, the cold-chain policy with 1 s windows and
    its models, and ``agent.yaml`` (written by :meth:`configure`)."""

    def __init__(self, root: Path, device_id: str = DEVICE_ID, fleet: str = FLEET) -> None:
        self.root = root
        self.device_id = device_id
        self.fleet = fleet
        root.mkdir(parents=True, exist_ok=True)
        configs = Path(str(resources.files("configs")))
        (root / "models").mkdir(exist_ok=True)
        for model in (configs / "models").glob("*.onnx"):
            shutil.copy(model, root / "models" / model.name)
        (root / "policies").mkdir(exist_ok=True)
        text = (configs / "policies" / "cold-chain.yaml").read_text()
        text = re.sub(r"(?m)^(\s*seconds:\s*)[\d.]+", rf"\g<1>{WINDOW_S:g}", text)
        self.policy = root / "policies" / "cold-chain.yaml"
        self.policy.write_text(text)
        self.key = root / "keys" / "device.key"
        if not self.key.exists():
            generate_key(self.key)
        self.public_key = public_key_path(self.key)
        self.config = root / "agent.yaml"
        self.state = root / "state"

    @property
    def store(self) -> Path:
        return self.state / "evidence.sqlite"

    def configure(self, sources: list[dict[str, Any]], broker_url: str) -> Path:
        """Write ``agent.yaml``: these sources, attestations to ``broker_url``."""
        self.config.write_text(
            yaml.safe_dump(
                {
                    "device": {"id": self.device_id, "key": "keys/device.key"},
                    "fleet": self.fleet,
                    "policy": "policies/cold-chain.yaml",
                    "state_dir": "state",
                    "sources": sources,
                    "output": {"mqtt": {"url": broker_url}},
                },
                sort_keys=False,
            )
        )
        return self.config


class Broker:
    """Mosquitto with persistence on a fixed port: :meth:`outage` stops it (it saves its
    sessions and queued messages) and starts it again where clients expect it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        data = workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        self._config = (
            f"persistence true\npersistence_location {data}/\nautosave_interval 1\n"
            "allow_anonymous true\n"
        )
        self._broker: MosquittoBroker | None = None
        self._started = False

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Broker:
        first = self._broker is None and not self._started
        # the first start may move to another port (MosquittoBroker.start); an outage's
        # restart keeps the one the agent and the subscriber dial
        broker = MosquittoBroker(self.workdir, self._config, port=None if first else self.port)
        if first:
            broker.port = self.port
        self._broker = broker.start()
        self.port = broker.port
        self._started = True
        return self

    def stop(self) -> None:
        if self._broker is not None:
            self._broker.stop()
            self._broker = None

    def outage(self, seconds: float) -> None:
        self.stop()
        time.sleep(seconds)
        self.start()


class Device:
    """An emulated device on a pty reached through a symlink (stable across unplugs).

    It keeps a ledger of every frame it numbers. Its frames start at :meth:`go`, once the
    agent has the port open: what a device sent before any agent ran is nobody's loss.
    :meth:`quiet` ends its frames and keeps the pty open, so the agent reads every byte
    already written before it stops; :meth:`close` then closes it.
    """

    def __init__(
        self, workdir: Path, scenario: str = "normal", serial: str = "EMU-0001", seed: int = 1
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.link = str(workdir / f"tty-{serial}")
        self.scenario = scenario
        self.emulator = Emulator(scenario, rate_hz=20.0, seed=seed, serial=serial, ledger=True)
        self.counts: dict[str, int] = {}
        self._ready = threading.Event()
        self._go = threading.Event()
        self._stop = threading.Event()
        self._hold = threading.Barrier(2, timeout=120)
        self._thread = threading.Thread(target=self._run, name=f"device-{serial}", daemon=True)

    def _run(self) -> None:
        def ready(_link: str) -> None:
            self._ready.set()
            while not self._go.wait(0.1) and not self._stop.is_set():
                pass

        self.counts.update(
            self.emulator.serve_pty(self.link, self._stop, None, ready, hold=self._hold)
        )

    def start(self) -> Device:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"the emulated device did not create {self.link}")
        return self

    def go(self) -> None:
        self._go.set()

    def quiet(self) -> None:
        """No more frames; the pty stays. An unpluggable device is quieted well inside a
        plugged-in period: frames a pty held when it vanished are lost on the line, and
        only a frame the agent reads after it reopened the port reveals them (its retries
        after a 1 s unplug reach the port within 0.75 s)."""
        if self.scenario == "unplug" and self._thread.is_alive() and self._go.is_set():
            lo, hi = UNPLUG_ONLINE_S - 1.4, UNPLUG_ONLINE_S - 0.6
            wait_until(lambda: lo <= (self._plugged_for() or 0.0) <= hi, 10)
        self._stop.set()
        self._go.set()
        wait_until(lambda: self._hold.n_waiting == 1 or not self._thread.is_alive(), 10)

    def _plugged_for(self) -> float | None:
        try:
            return time.time() - os.lstat(self.link).st_mtime
        except FileNotFoundError:
            return None

    def close(self) -> dict[str, int]:
        """Close the pty; what the emulator counted."""
        self.quiet()
        if self._thread.is_alive() and self._hold.n_waiting == 1:
            self._hold.wait()
        self._thread.join(10)
        return self.counts

    @property
    def ledger(self) -> list[SentFrame]:
        """Frames numbered, up to the last one put on the line (what a receiver can know)."""
        sent = list(self.emulator.sent or ())
        last = max((i for i, f in enumerate(sent) if f.on_line), default=-1)
        return sent[: last + 1]


class AgentProc:
    """``python -m agent run --config CFG --log-format json``; its log in a file."""

    def __init__(self, site: Site, env: dict[str, str] | None = None) -> None:
        self.site = site
        self.log = site.root / f"agent-{time.monotonic_ns()}.log"
        self._err = open(self.log, "w")  # noqa: SIM115 (closed in stop())
        base = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(site.config)]
            + ["--log-format", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._err,
            cwd=site.root,
            env={**base, **(env or {})},
        )

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except ValueError:
                    continue  # a line being written
        return out

    def signed(self) -> list[int]:
        """Seqs this process logged as signed, in order."""
        lines = self.lines()
        return [x["seq"] for x in lines if str(x.get("message", "")).startswith("attestation seq")]

    def wait_log(self, needle: str, timeout: float = 30.0, after: int = 0) -> int:
        """Wait for ``needle`` in the log past character ``after``; the log's length then.

        Raises:
            RuntimeError: the process exited or ``timeout`` passed first (with the log tail).
        """
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            if needle in text[after:]:
                return len(text)
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"{needle!r} not in the agent's log (exit {self.proc.poll()}): {text[-1500:]}"
                )
            time.sleep(0.05)

    def wait_signed(self, count: int, timeout: float = 30.0) -> None:
        """Wait until this process has signed ``count`` attestations."""
        if not wait_until(lambda: len(self.signed()) >= count or self.exited, timeout):
            raise RuntimeError(f"agent signed {len(self.signed())} of {count} in {timeout} s")
        if len(self.signed()) < count:
            raise RuntimeError(f"agent exited ({self.proc.poll()}): {self.text()[-1500:]}")

    @property
    def exited(self) -> bool:
        return self.proc.poll() is not None

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._err.close()

    def wait_exit(self, timeout: float) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM; the exit status (the process is killed after ``timeout``)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
        finally:
            self._err.close()


@dataclass(frozen=True)
class Delivery:
    topic: str
    payload: bytes
    dup: bool  # the broker flagged it as a redelivery


class Subscriber:
    """An auditor's subscriber: a persistent MQTT v5 session (the broker keeps its
    subscription and queued messages across an outage), every delivery kept."""

    def __init__(self, url: str, topic: str, client_id: str) -> None:
        self.topic = topic
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        c = MqttClient(
            BrokerURL.parse(url, "subscriber"),
            client_id,
            session=Session(clean_start=False, expiry_s=3600),
            reconnect_delay=(0.2, 1.0),
        )
        c.on_connect = self._on_connect
        c.on_subscribe = lambda *_: self._subscribed.set()
        c.on_message = self._on_message
        self._client = c
        c.connect(10)
        if not self._subscribed.wait(10):
            self.close()
            raise RuntimeError(f"the subscriber got no SUBACK from {url}")

    def _on_connect(self, rc: ReasonCode) -> None:
        if rc.is_failure:
            return
        if not self._client.session_present:  # a new session: subscribe (a kept one still is)
            self._client.subscribe(self.topic, qos=1)
        else:
            self._subscribed.set()

    def _on_message(self, m: Message) -> None:
        with self._lock:
            self.deliveries.append(Delivery(m.topic, m.payload, m.dup))

    def snapshot(self) -> list[Delivery]:
        with self._lock:
            return list(self.deliveries)

    def close(self) -> None:
        self._client.close()
