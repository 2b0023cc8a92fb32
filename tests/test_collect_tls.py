"""`edgegov audit collect` through the production mutual-TLS Mosquitto listener and ACL file:
with the fleet CA and an auditor certificate it stores what a device publishes; without them
it stops with a clear error (exit 2), never a traceback."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from agent.evidence.store import OutboxItem
from agent.transport.mqtt import BrokerURL
from agent.transport.publisher import MqttPublisher
from agent.transport.topics import DeviceTopics
from tests.conftest import ROOT
from tests.evidence_util import make_stream


def _collect(url: str, store: str, *tls_args: str) -> list[str]:
    return [sys.executable, "-m", "agent", "audit", "collect", "--broker", url, "--store", store,
            "--fleet", "f", *tls_args]  # fmt: skip


def test_collect_over_mutual_tls_stores_what_a_device_published(tls, tmp_path, signer, run_cli):
    msgs = make_stream(tmp_path / "device.sqlite", signer, device="gw-1", windows=6)
    auditor = tls.client_files("auditor")  # the ACL's read-only auditor identity
    store = tmp_path / "collected.sqlite"
    proc = subprocess.Popen(
        _collect(tls.url, f"sqlite:///{store}", "--ca", str(auditor["ca_file"]),
                 "--cert", str(auditor["cert_file"]), "--key", str(auditor["key_file"])),
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()  # printed once subscribed
        assert line.startswith("collecting edgegov/f/+/attestation and the signed statements"), line
        assert " from mqtts://" in line, line
        acks: list[int] = []
        topics = DeviceTopics("edgegov", "f", "gw-1")
        pub = MqttPublisher(BrokerURL.parse(tls.url), topics, acks.append,
                            client_id="gw-1", **tls.client_files("gw-1"))  # fmt: skip
        pub.start([OutboxItem(i, "edgegov/f/gw-1/attestation", m) for i, m in enumerate(msgs)])
        deadline = time.monotonic() + 10
        while len(acks) < len(msgs) and time.monotonic() < deadline:
            time.sleep(0.02)
        assert pub.stop(timeout=2) == 0 and sorted(acks) == list(range(len(msgs)))

        def stored() -> int:  # PUBACK came from the broker; the collector's copy may lag
            try:
                db = sqlite3.connect(f"{store.as_uri()}?mode=ro", uri=True)
            except sqlite3.Error:
                return 0  # not created yet
            try:
                return int(db.execute("SELECT COUNT(*) FROM collected").fetchone()[0])
            except sqlite3.Error:
                return 0
            finally:
                db.close()

        deadline = time.monotonic() + 10
        while stored() < len(msgs) and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == 0, err
    assert f"received {len(msgs)}, stored {len(msgs)} new" in err, err
    pem = tmp_path / "gw-1.pub.pem"
    pem.write_bytes(signer.public.pem())
    r = run_cli("audit", "verify", "--store", f"sqlite:///{store}", "--key", str(pem), "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f'"verified": {len(msgs)}' in r.stdout


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        # the fleet CA but no client certificate: the broker ends the TLS 1.2 handshake, or
        # (TLS 1.3) drops the connection right after it
        (("ca",), "a broker with mutual TLS needs a client certificate and key"),
        # no CA: the broker's certificate (a private fleet CA) does not verify
        (
            ("cert", "key"),
            "cannot reach broker {url}: the broker's certificate does not verify against the "
            "system's CA certificates (",
        ),
    ],
)
def test_collect_without_the_tls_files_it_needs_is_a_clear_error(tls, tmp_path, args, reason):
    files = tls.client_files("auditor")
    opts = {"ca": files["ca_file"], "cert": files["cert_file"], "key": files["key_file"]}
    tls_args = [x for k in args for x in (f"--{k}", str(opts[k]))]
    r = subprocess.run(
        _collect(tls.url, f"sqlite:///{tmp_path / 'c.sqlite'}", *tls_args, "--seconds", "5"),
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("edgegov: error: collector ") and r.stderr.count("\n") == 1
    assert tls.url in r.stderr and reason.format(url=tls.url) in r.stderr, r.stderr


def test_collect_names_an_unusable_tls_file(tls, tmp_path, run_cli):
    r = run_cli("audit", "collect", "--broker", tls.url, "--store", str(tmp_path / "c.sqlite"),
                "--ca", str(tmp_path / "missing-ca.pem"), "--seconds", "1")  # fmt: skip
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"CA certificate {tmp_path / 'missing-ca.pem'}: cannot load it" in r.stderr
