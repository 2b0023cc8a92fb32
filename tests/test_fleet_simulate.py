"""`edgegov fleet simulate`: emulated gateways (real keys, evidence logs, outboxes) against
a real Mosquitto, collectors storing into SQLite or the real PostgreSQL; what they stored
verifies with the gateways' keys."""

from __future__ import annotations

import json
import math

from tests.test_collect import pg_url  # noqa: F401 - the fixture: a fresh PostgreSQL schema


def _simulate(run_cli, *args: str) -> dict:
    r = run_cli("fleet", "simulate", *args, "--json", timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


def test_a_private_broker_and_sqlite_store_every_attestation_once(run_cli, tmp_path) -> None:
    keep = tmp_path / "sim"
    doc = _simulate(run_cli, "--gateways", "6", "--seconds", "3", "--keep", str(keep))
    assert doc["gateways"] == 6 and doc["signed"] >= 6 * 3
    assert doc["stored"] == doc["signed"] and doc["lost"] == 0 and doc["duplicated"] >= 0
    assert 0 < doc["latency_p50_ms"] <= doc["latency_p99_ms"] < 10_000
    assert math.isfinite(doc["attestations_per_s"]) and doc["attestations_per_s"] > 0
    assert doc["broker"]["version"].startswith("mosquitto version")  # Mosquitto's $SYS
    # What the collector stored is the gateways' signed evidence: it verifies, every chain
    # complete, with the keys the simulation kept.
    store = keep / "collected.sqlite"
    r = run_cli("audit", "verify", "--store", str(store), "--trust", str(keep / "trust.yaml"),
                "--json")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    verdict = json.loads(r.stdout)
    assert verdict["evidence"] == "intact" and verdict["attestations"] == doc["signed"]
    assert len(verdict["devices"]) == 6


def test_two_collectors_share_the_load_into_postgresql(run_cli, tmp_path, pg_url) -> None:  # noqa: F811
    keep = tmp_path / "sim"
    doc = _simulate(
        run_cli, "--gateways", "4", "--seconds", "3", "--store", pg_url, "--collectors", "2",
        "--keep", str(keep),
    )  # fmt: skip
    assert doc["collectors"] == 2 and doc["lost"] == 0 and doc["stored"] == doc["signed"]
    r = run_cli("audit", "verify", "--store", pg_url, "--trust", str(keep / "trust.yaml"),
                "--json")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads(r.stdout)["attestations"] == doc["signed"]


def test_bad_arguments_are_refused(run_cli) -> None:
    r = run_cli("fleet", "simulate", "--gateways", "0")
    assert r.returncode == 2 and "--gateways" in r.stderr
    r = run_cli("fleet", "simulate", "--broker", "tcp://x:1", "--seconds", "1")
    assert r.returncode == 2 and "--broker" in r.stderr, r.stderr


def test_against_nats_in_mqtt_311_with_its_own_figures(run_cli, tmp_path) -> None:
    """The same simulation on a NATS server (JetStream, MQTT 3.1.1), its figures read from
    its monitoring endpoint."""
    from agent.tools.brokers import NatsServer

    with NatsServer(tmp_path / "nats") as nats:
        doc = _simulate(
            run_cli, "--gateways", "4", "--seconds", "3", "--broker", nats.url,
            "--mqtt-version", "3.1.1", "--broker-monitor", f"http://127.0.0.1:{nats.monitor_port}",
        )  # fmt: skip
    assert doc["lost"] == 0 and doc["stored"] == doc["signed"] >= 4 * 3
    assert doc["broker"]["version"].startswith("2.")
    assert int(doc["broker"]["messages received"]) >= doc["signed"]
