"""The agent config: every error names the file and the full field path, and a start that
fails on its config writes nothing (no evidence store, no boot counted)."""

from __future__ import annotations

import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from agent.config import load_config
from agent.errors import ConfigError
from agent.evidence.store import EvidenceStore
from agent.identity.keys import generate_key
from tests.conftest import ROOT
from tests.pki import TestPKI


def _site(tmp: Path, **over: Any) -> Path:
    """A valid config (key, policy, spool) in ``tmp``, with top-level fields replaced."""
    if (tmp / "device.key").exists():
        os.chmod(tmp / "device.key", 0o600)
    else:
        generate_key(tmp / "device.key")
    (tmp / "policy.yaml").write_bytes(
        (ROOT / "configs" / "policies" / "cold-chain.yaml").read_bytes()
    )
    cfg: dict[str, Any] = {
        "device": {"id": "gw-1", "key": "device.key"},
        "fleet": "site-a",
        "policy": "policy.yaml",
        "state_dir": "state",
        "sources": [{"port": "/dev/null"}],
        "output": {"spool": "spool"},
        **over,
    }
    path = tmp / "agent.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _mqtt(tmp: Path, url: str = "mqtts://broker.example:8883", **files: str) -> dict[str, Any]:
    return {"mqtt": {"url": url, **files}}


@pytest.mark.parametrize(
    ("over", "field", "reason"),
    [
        ({"output": _mqtt(Path(), "http://broker")}, "output.mqtt.url", "mqtt:// or mqtts://"),
        ({"output": _mqtt(Path(), "mqtt://")}, "output.mqtt.url", "has no host"),
        ({"output": _mqtt(Path(), "mqtt://b:99999")}, "output.mqtt.url", "out of range"),
        ({"output": _mqtt(Path(), "mqtt://b:1883/x")}, "output.mqtt.url", "has a path"),
        ({"output": _mqtt(Path(), "mqtt://:pw@b")}, "output.mqtt.url", "no user name"),
        ({"output": _mqtt(Path(), "mqtt://b", ca="ca.pem")}, "output.mqtt.ca", "use mqtts://"),
        ({"output": _mqtt(Path(), topic_prefix="a/b")}, "output.mqtt.topic_prefix", "'/'"),
        ({"output": _mqtt(Path(), ca="nope.pem")}, "output.mqtt.ca", "cannot read the broker CA"),
        ({"output": _mqtt(Path(), ca="device.key")}, "output.mqtt.ca", "cannot load it"),
        ({"output": _mqtt(Path(), key="device.key")}, "output.mqtt.key", "needs its certificate"),
        ({"device": {"id": "gw-1", "key": "gone.key"}}, "device.key", "cannot read the device"),
        ({"device": {"id": "gw 1", "key": "device.key"}}, "device.id", "whitespace"),
        ({"fleet": "site/a"}, "fleet", "'/'"),
        ({"risk": {"providers": ["CPUExecutionProvider", 3]}}, "risk.providers[1]", "got 3"),
        ({"risk": {"providers": "CPUExecutionProvider"}}, "risk.providers", "expected list"),
        ({"risk": {"threads": 0}}, "risk.threads", "at least 1"),
        ({"evidence": {"retention_days": True}}, "evidence.retention_days", "got bool"),
        ({"evidence": {"max_mb": float("nan")}}, "evidence.max_mb", "finite positive"),
        (
            {"sources": [{"port": "/dev/null"}, {"port": "/x", "reconnect": {"max_s": "10"}}]},
            "sources[1].reconnect.max_s",
            "expected int or float",
        ),
        ({"policy": None}, "policy", "expected str"),
        ({"tuf": {"root": "r.json"}}, "tuf.root", "set output.mqtt"),
        (
            {"output": _mqtt(Path(), "mqtt://b"), "tuf": {"root": "r.json"}},
            "tuf.root",
            "cannot read the fleet's trusted root.json",
        ),
        (
            {"output": _mqtt(Path(), "mqtt://b"), "tuf": {"root": "device.key", "group": "a b"}},
            "tuf.group",
            "whitespace",
        ),
    ],
)
def test_errors_name_file_and_full_field_path(tmp_path, over, field, reason):
    path = _site(tmp_path, **over)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: {field}: "), msg
    assert reason in msg, msg


def test_a_missing_policy_is_named_unless_the_fleet_provides_one(tmp_path):
    path = _site(tmp_path)
    cfg = yaml.safe_load(path.read_text())
    del cfg["policy"]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match=rf"^{path}: policy: required field is missing"):
        load_config(path)
    root = tmp_path / "root.json"
    root.write_text("{}")  # read as a TUF root by the agent, not by the loader
    cfg |= {"output": {"mqtt": {"url": "mqtt://b"}}, "tuf": {"root": "root.json"}}
    path.write_text(yaml.safe_dump(cfg))
    assert load_config(path).policy_path is None


def test_tls_files_load_as_the_mqtt_client_loads_them(tmp_path):
    pki = TestPKI(tmp_path / "pki")
    cert, key = pki.issue("gw-1")
    _other_cert, other_key = pki.issue("gw-2")
    files = {"ca": str(pki.ca_path), "cert": str(cert), "key": str(key)}
    cfg = load_config(_site(tmp_path, output=_mqtt(tmp_path, **files)))
    assert cfg.mqtt is not None and cfg.mqtt.key == key
    path = _site(tmp_path, output=_mqtt(tmp_path, **{**files, "key": str(other_key)}))
    with pytest.raises(ConfigError, match=rf"^{path}: output\.mqtt\.cert: .*{other_key}"):
        load_config(path)


def test_an_unreadable_tls_file_is_named(tmp_path):
    (tmp_path / "unreadable.pem").write_bytes(TestPKI(tmp_path / "pki").ca_path.read_bytes())
    os.chmod(tmp_path / "unreadable.pem", 0)
    path = _site(tmp_path, output=_mqtt(tmp_path, ca="unreadable.pem"))
    want = rf"^{path}: output\.mqtt\.ca: .*Permission denied"
    if os.access(tmp_path / "unreadable.pem", os.R_OK):
        # root reads any file: load the config in a process without the capabilities that
        # let it (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH), as an operator's agent would be
        setpriv = shutil.which("setpriv")
        assert setpriv, "setpriv (util-linux) is needed to test file permissions as root"
        code = (
            "import sys\nfrom agent.config import load_config\nfrom agent.errors import Error\n"
            "try:\n    load_config(sys.argv[1])\nexcept Error as e:\n    print(e)\n"
        )
        drop = "-dac_override,-dac_read_search"
        r = subprocess.run(
            [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}",
             sys.executable, "-c", code, str(path)],
            capture_output=True, text=True, cwd=ROOT, timeout=60,
        )  # fmt: skip
        assert re.search(want, r.stdout.strip()), r.stdout + r.stderr
        return
    with pytest.raises(ConfigError, match=want):
        load_config(path)


def test_a_relative_config_name_is_shown_resolved(tmp_path, run_cli):
    _site(tmp_path, output=_mqtt(tmp_path, "mqtt:/broker"))
    r = run_cli("run", "--config", "agent.yaml", cwd=tmp_path)
    assert r.returncode == 2
    assert f"edgegov: error: {tmp_path}/agent.yaml: output.mqtt.url: " in r.stderr, r.stderr


def _bootcount(state: Path) -> int:
    db = sqlite3.connect(state / "evidence.sqlite")
    try:
        (n,) = db.execute("SELECT bootcount FROM state").fetchone()
    finally:
        db.close()
    return int(n)


def _break(tmp: Path, path: Path, how: str) -> str:
    """Make ``path``'s config fail as ``how`` says; returns the expected message start."""
    cfg = yaml.safe_load(path.read_text())
    if how == "bad-url":
        cfg["output"] = {"mqtt": {"url": "mqtt//127.0.0.1:1883"}}
        want = "output.mqtt.url: 'mqtt//127.0.0.1:1883' must start with mqtt://"
    elif how == "missing-key":
        cfg["device"]["key"] = "keys/gone.key"
        want = f"device.key: {tmp}/keys/gone.key: cannot read the device key"
    elif how == "key-readable-by-others":  # found by the agent, before it writes anything
        os.chmod(tmp / "device.key", 0o644)
        want = f"device.key: {tmp}/device.key: private key has mode 0644"
    elif how == "unknown-channel":  # found when the sources are built for the policy
        cfg["sources"] = [{"port": "/dev/null", "expect": [{"name": "co2", "unit": "ppm"}]}]
        want = "sources[0].expect[0].name: channel 'co2'"
    else:
        assert how == "policy-missing"
        cfg["policy"] = "gone.yaml"
        want = f"policy: {tmp}/gone.yaml: cannot read policy bundle"
    path.write_text(yaml.safe_dump(cfg))
    return f"{path}: {want}"


@pytest.mark.parametrize(
    "how", ["bad-url", "missing-key", "key-readable-by-others", "unknown-channel", "policy-missing"]
)
def test_a_start_that_fails_on_its_config_writes_nothing(tmp_path, run_cli, how):
    path = _site(tmp_path)
    state = tmp_path / "state"
    fresh = _break(tmp_path, path, how)
    r = run_cli("run", "--config", str(path))
    assert r.returncode == 2 and f"edgegov: error: {fresh}" in r.stderr, r.stderr
    assert not state.exists()  # no evidence store, no directory even

    # With an evidence log already there: two failed starts count no boot.
    _site(tmp_path)  # repaired
    EvidenceStore(state / "evidence.sqlite", "gw-1").close()
    assert _bootcount(state) == 1
    before = sorted(p.name for p in state.iterdir())
    _break(tmp_path, path, how)
    for _ in range(2):
        r = run_cli("run", "--config", str(path))
        assert r.returncode == 2 and fresh in r.stderr, r.stderr
    assert _bootcount(state) == 1
    assert sorted(p.name for p in state.iterdir()) == before
