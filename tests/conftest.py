"""Shared fixtures: real brokers, real keys, real ptys — no mocks at the boundaries."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.identity.keys import Signer, generate_key
from agent.tools.broker import MosquittoBroker, find_mosquitto
from agent.transport.mqtt import BrokerURL

ROOT = Path(__file__).resolve().parent.parent
# `python -c EMULATE --pty ...`: the emulator's command line in a process of its own
EMULATE = (
    "import sys; from firmware_bridge.emulate_cli import emulate_main; "
    "sys.exit(emulate_main(sys.argv[1:]))"
)
ORACLE_PYTHON = Path(
    os.environ.get("EDGEGOV_COSE_ORACLE", ROOT / ".venv-oracle" / "bin" / "python")
)


@pytest.fixture
def broker(tmp_path: Path):
    """A private Mosquitto on a free loopback port. Missing mosquitto is a failure, not a skip."""
    if find_mosquitto() is None:
        pytest.fail(
            "mosquitto is not installed; run the README's test command (make test), "
            "which installs it with apt-get"
        )
    with MosquittoBroker(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def tls(tmp_path: Path):
    """A private Mosquitto with the production TLS listener, per-device ACLs and a test PKI."""
    from tests.test_transport_tls import TlsBroker

    b = TlsBroker(tmp_path)
    b.broker.start()
    yield b
    b.broker.stop()


@pytest.fixture
def signer(tmp_path: Path) -> Signer:
    return generate_key(tmp_path / "keys" / "device.key")


def cose_oracle(cose: bytes | list[bytes], public_pem: bytes) -> str:
    """Verify with pycose in its own venv (it needs cbor2 < 6). Returns its stdout."""
    msgs = [cose] if isinstance(cose, bytes) else cose
    if not ORACLE_PYTHON.exists():
        pytest.fail(f"the pycose oracle venv is missing ({ORACLE_PYTHON}); run 'make test'")
    script = ROOT / "tests" / "oracle_pycose.py"
    proc = subprocess.run(
        [str(ORACLE_PYTHON), str(script)],
        input=public_pem + b"\n--\n" + b"\n".join(m.hex().encode() for m in msgs),
        capture_output=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise AssertionError(f"pycose rejected the message: {proc.stderr.decode()[-2000:]}")
    return proc.stdout.decode()


@pytest.fixture
def run_cli():
    """Run the real `edgegov` entry point in a subprocess."""

    def run(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "agent", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=kw.pop("cwd", ROOT),
            **kw,
        )

    return run


class Listener:
    """A plain paho subscriber (an auditor) collecting messages."""

    def __init__(self, url: BrokerURL | str, topic: str, **tls: Path) -> None:
        url = BrokerURL.parse(url) if isinstance(url, str) else url
        self.messages: list[mqtt.MQTTMessage] = []
        self.ready = threading.Event()
        c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        if tls:
            c.tls_set(
                ca_certs=str(tls["ca_file"]),
                certfile=str(tls["cert_file"]),
                keyfile=str(tls["key_file"]),
            )
        c.on_connect = lambda cl, *_: cl.subscribe(topic, qos=1)
        c.on_subscribe = lambda *_: self.ready.set()
        c.on_message = lambda _c, _u, m: self.messages.append(m)
        c.connect(url.host, url.port)
        c.loop_start()
        assert self.ready.wait(5), "subscriber did not get SUBACK"
        self.client = c

    def json(self) -> list[dict]:
        return [json.loads(m.payload) for m in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
