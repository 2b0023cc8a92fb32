"""MQTT transport through a real Mosquitto with the production TLS listener and ACL file:
mutual TLS, per-device topic rights, QoS 1 acknowledgement, retained status and Last Will."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from agent.evidence.store import OutboxItem
from agent.tools.broker import MosquittoBroker, find_mosquitto
from agent.transport.mqtt import BrokerURL
from agent.transport.publisher import MqttPublisher
from agent.transport.topics import DeviceTopics
from tests.conftest import ROOT, Listener
from tests.pki import TestPKI

BROKER_DIR = ROOT / "configs" / "broker"


class TlsBroker:
    def __init__(self, tmp: Path) -> None:
        if find_mosquitto() is None:
            pytest.fail("mosquitto is not installed; run 'make test', which installs it")
        self.pki = TestPKI(tmp / "pki")
        cert, key = self.pki.issue("localhost", server=True)
        paths = {
            "cafile": self.pki.ca_path,
            "certfile": cert,
            "keyfile": key,
            "acl_file": BROKER_DIR / "edgegov.acl",
        }
        # The production config's directives, with this test's paths (listener and
        # persistence come from MosquittoBroker).
        lines = []
        for line in (BROKER_DIR / "mosquitto-tls.conf").read_text().splitlines():
            word = line.split(" ", 1)[0]
            if (
                not line
                or line.startswith("#")
                or word
                in ("listener", "per_listener_settings", "persistence", "persistence_location")
            ):
                continue
            lines.append(f"{word} {paths[word]}" if word in paths else line)
        self.broker = MosquittoBroker(tmp / "broker", extra_config="\n".join(lines) + "\n")
        self.url = f"mqtts://127.0.0.1:{self.broker.port}"

    def client_files(self, cn: str) -> dict[str, Path]:
        cert, key = self.pki.issue(cn)
        return {"ca_file": self.pki.ca_path, "cert_file": cert, "key_file": key}


def _publisher(tls: TlsBroker, cn: str, device: str, acks: list[int]) -> MqttPublisher:
    return MqttPublisher(
        BrokerURL.parse(tls.url),
        DeviceTopics("edgegov", "f", device),
        acks.append,
        client_id=f"pub-{cn}-{device}",
        **tls.client_files(cn),
    )


def test_device_publishes_over_mutual_tls_and_an_auditor_reads_it(tls):
    auditor = Listener(
        BrokerURL.parse(tls.url), "edgegov/+/+/attestation", **tls.client_files("auditor")
    )
    acks: list[int] = []
    pub = _publisher(tls, "gw-1", "gw-1", acks)
    pub.start([OutboxItem(0, "edgegov/f/gw-1/attestation", b"\xd2evidence")])
    deadline = time.monotonic() + 5
    while (not acks or not auditor.messages) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert pub.stop(timeout=2) == 0
    auditor.close()
    assert acks == [0]  # PUBACK received: the outbox row may go
    msg = auditor.messages[0]
    assert msg.payload == b"\xd2evidence"
    assert msg.properties.ContentType == "application/eat+cwt"


def test_a_device_cannot_publish_as_another_device(tls, caplog):
    auditor = Listener(BrokerURL.parse(tls.url), "edgegov/#", **tls.client_files("auditor"))
    acks: list[int] = []
    forger = _publisher(tls, "gw-2", "gw-1", acks)  # gw-2's certificate, gw-1's topics
    with caplog.at_level(logging.ERROR, logger="edgegov.transport"):
        forger.start([OutboxItem(7, "edgegov/f/gw-1/attestation", b"forged")])
        deadline = time.monotonic() + 3
        while forger.unacknowledged() and time.monotonic() < deadline:
            time.sleep(0.02)
        forger.stop(timeout=1)
    time.sleep(0.3)
    auditor.close()
    assert acks == []  # never acknowledged, so it would stay in the outbox
    assert not [m for m in auditor.messages if m.payload == b"forged"]
    assert any(
        "rejected attestation seq 7" in r.getMessage() and "authori" in r.getMessage()
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]


def test_a_client_without_a_fleet_certificate_is_refused(tls, tmp_path):
    stranger_pki = TestPKI(tmp_path / "stranger", ca_name="not the fleet CA")
    cert, key = stranger_pki.issue("gw-1")
    c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(tls.pki.ca_path), certfile=str(cert), keyfile=str(key))
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set() if not a[3].is_failure else None
    url = BrokerURL.parse(tls.url)
    try:
        c.connect(url.host, url.port)  # TLS 1.3: the broker rejects the cert after the handshake
        c.loop_start()
    except OSError:
        pass  # or it aborts the handshake itself
    assert not connected.wait(1.5), "a client with a certificate from another CA got in"
    c.loop_stop()
    c.disconnect()


_STATUS_CHILD = r"""
import sys, time
from pathlib import Path
from agent.transport.mqtt import BrokerURL
from agent.transport.publisher import MqttPublisher
from agent.transport.topics import DeviceTopics
ca, cert, key = (Path(p) for p in sys.argv[2:5])
pub = MqttPublisher(BrokerURL.parse(sys.argv[1]), DeviceTopics("edgegov", "f", "gw-1"), print,
                    ca_file=ca, cert_file=cert, key_file=key)
pub.publish_status({"state": "online", "device": "gw-1"})
pub.start([])
assert pub.wait_connected(5)
print("connected", flush=True)
time.sleep(60)
"""


def test_status_is_retained_and_the_last_will_marks_a_killed_agent_offline(tls):
    files = tls.client_files("gw-1")
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _STATUS_CHILD,
            tls.url,
            str(files["ca_file"]),
            str(files["cert_file"]),
            str(files["key_file"]),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "connected"
        time.sleep(0.3)
        # A late subscriber still sees the retained status.
        auditor = Listener(
            BrokerURL.parse(tls.url), "edgegov/f/gw-1/status", **tls.client_files("auditor")
        )
        time.sleep(0.3)
        assert [m.retain for m in auditor.messages] == [True]
        assert b'"online"' in auditor.messages[0].payload
        child.kill()  # kill -9: no DISCONNECT, so the broker sends the Last Will
        child.wait()
        deadline = time.monotonic() + 5
        while len(auditor.messages) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        auditor.close()
        assert re.search(rb'"state": "offline"', auditor.messages[-1].payload)
    finally:
        child.kill()
        child.wait()
        if child.stdout:
            child.stdout.close()


def test_username_and_password_from_the_broker_url(tmp_path):
    """mqtt://user:password@host: accepted with the right password, refused without."""
    import shutil

    passwd = shutil.which("mosquitto_passwd")
    if passwd is None:
        pytest.fail("mosquitto_passwd is missing (it comes with Debian's mosquitto package)")
    pwfile = tmp_path / "passwd"
    subprocess.run([passwd, "-c", "-b", str(pwfile), "gw-1", "s3cret"], check=True)
    pwfile.chmod(0o600)
    with MosquittoBroker(
        tmp_path / "broker", extra_config=f"allow_anonymous false\npassword_file {pwfile}\n"
    ) as broker:
        port = broker.port
        acks: list[int] = []
        good = MqttPublisher(
            BrokerURL.parse(f"mqtt://gw-1:s3cret@127.0.0.1:{port}"),
            DeviceTopics("edgegov", "f", "gw-1"),
            acks.append,
        )
        good.start([OutboxItem(0, "edgegov/f/gw-1/attestation", b"x")])
        assert good.wait_connected(5)
        deadline = time.monotonic() + 5
        while not acks and time.monotonic() < deadline:
            time.sleep(0.02)
        good.stop(1)
        assert acks == [0]
        bad = MqttPublisher(
            BrokerURL.parse(f"mqtt://gw-1:wrong@127.0.0.1:{port}"),
            DeviceTopics("edgegov", "f", "gw-1"),
            acks.append,
        )
        bad.start([])
        assert not bad.wait_connected(1.5)
        bad.stop(0.1)
    assert "s3cret" not in str(BrokerURL.parse(f"mqtt://gw-1:s3cret@127.0.0.1:{port}"))
