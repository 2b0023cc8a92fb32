"""Agent logs: text or JSON lines with structured fields, and never a secret in either
(device key material, a broker password, a PKCS#11 PIN), grepped in real agent runs."""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    load_pem_private_key,
)

from agent.logs import JsonFormatter, TextFormatter, configure, redact
from tests.agent_process import AgentProcess, agent_env, spool_evidence
from tests.test_agent_e2e import Device, make_site
from tests.test_pkcs11 import MODULES

PASSWORD = "hunter2-Zq8x"  # distinctive: a grep must not match timestamps or digests
PIN = "pin-5Kd9w2"


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.getLogger("edgegov.test").makeRecord(
        "edgegov.test", logging.WARNING, __file__, 1, msg, args, None, extra=extra
    )
    return rec


def test_json_lines_carry_time_level_logger_message_and_the_call_sites_fields():
    line = JsonFormatter().format(
        _record("attestation seq %d signed", 12, seq=12, device="gw-1", window=[1, 2])
    )
    doc = json.loads(line)
    assert "\n" not in line
    assert list(doc)[:4] == ["time", "level", "logger", "message"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", doc["time"])
    assert doc["level"] == "warning" and doc["logger"] == "edgegov.test"
    assert doc["message"] == "attestation seq 12 signed"
    assert doc["seq"] == 12 and doc["device"] == "gw-1" and doc["window"] == [1, 2]
    assert "args" not in doc and "msg" not in doc and "levelno" not in doc


def test_a_url_password_is_redacted_in_both_formats_wherever_it_appears():
    url = f"mqtts://agent:{PASSWORD}@broker.example:8883"
    assert redact(f"cannot reach {url}, retrying") == (
        "cannot reach mqtts://agent:***@broker.example:8883, retrying"
    )
    assert redact("mqtt://broker:1883 and mqtt://u@h and a:b@c") == (
        "mqtt://broker:1883 and mqtt://u@h and a:b@c"  # no password: unchanged
    )
    try:
        raise ValueError(f"bad {url}")
    except ValueError:
        rec = _record("broker %s: %s", url, "oops", reason=f"refused by {url}")
        rec.exc_info = sys.exc_info()
    for formatter in (JsonFormatter(), TextFormatter()):
        out = formatter.format(rec)
        assert PASSWORD not in out and "agent:***@broker.example" in out, out


def test_configure_switches_format_and_level():
    buf = io.StringIO()
    configure("warning", "json", buf)
    try:
        log = logging.getLogger("edgegov.test")
        log.info("not shown")
        log.error("shown", extra={"reason": "r"})
        (line,) = buf.getvalue().splitlines()
        assert json.loads(line)["reason"] == "r"
        with pytest.raises(ValueError, match="xml"):
            configure("info", "xml")
    finally:
        configure("info", "text", sys.stderr)
        logging.getLogger().setLevel(logging.WARNING)


def test_config_log_level_is_checked_with_its_field(tmp_path):
    from agent.config import load_config
    from agent.errors import ConfigError

    cfg = make_site(tmp_path, output={"spool": "spool"}, port="/dev/null")
    cfg.write_text(cfg.read_text() + "log: {level: loud}\n")
    with pytest.raises(ConfigError, match=r"agent\.yaml: log\.level: must be one of debug, "):
        load_config(cfg)
    cfg.write_text(cfg.read_text().replace("loud", "warning"))
    assert load_config(cfg).log_level == "warning"


def _key_secrets(key_file: Path) -> list[str]:
    """The device key as it could leak: the PEM body lines, the raw private bytes in hex."""
    pem = key_file.read_bytes()
    body = [ln for ln in pem.decode().splitlines() if ln and not ln.startswith("-----")]
    key = load_pem_private_key(pem, None)
    raw = key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())  # Ed25519
    return [*body, raw.hex(), raw.hex().upper()]


def _assert_clean(text: str, secrets: list[str]) -> None:
    for s in secrets:
        assert s not in text, f"a secret ({s[:4]}...) is in the agent's log"


def _bad_url_reload(agent: AgentProcess, cfg: Path) -> None:
    """SIGHUP with a broker URL that cannot be parsed and carries the password: the error
    names the field, and the password in it is redacted."""
    data = yaml.safe_load(cfg.read_text())
    data["output"]["mqtt"]["url"] = f"mqtt://edge:{PASSWORD}@127.0.0.1:1883/no-path-here"
    cfg.write_text(yaml.safe_dump(data))
    mark = len(agent.text())
    agent.hup()
    text = agent.wait_log("config reload refused", after=mark)
    assert "output.mqtt.url" in text[mark:]


@pytest.mark.slow
def test_no_key_material_or_broker_password_in_json_or_text_logs(tmp_path, broker):
    url = f"mqtt://edge:{PASSWORD}@{broker.url.removeprefix('mqtt://')}"
    for fmt in ("json", "text"):
        site = tmp_path / fmt
        with Device("excursion") as dev:
            cfg = make_site(site, output={"mqtt": {"url": url}}, port=dev.pty.slave_path)
            agent = AgentProcess(cfg, "--log-format", fmt, "--log-level", "debug", env=agent_env())
            try:
                agent.wait_log("connected to broker")
                agent.wait_log("attestation seq 1 signed")
                _bad_url_reload(agent, cfg)
                assert agent.stop() == 0
            finally:
                agent.stop()
        text = agent.text()
        _assert_clean(text, [PASSWORD, *_key_secrets(site / "keys" / "device.key")])
        assert "edge:***@" in text  # the reload error shows where the password was
        if fmt == "json":
            lines = agent.json_lines()  # every line is one JSON object
            assert all({"time", "level", "logger", "message"} <= set(d) for d in lines)
            signed = [d for d in lines if d["message"].startswith("attestation seq ")]
            assert signed[0]["seq"] == 0 and signed[0]["device"] == "gw-test"
            refused = next(d for d in lines if d["message"].startswith("config reload refused"))
            assert refused["level"] == "error" and refused["file"] == str(cfg.resolve())


@pytest.fixture
def softhsm_token(tmp_path):
    """A SoftHSM2 token (PIN = ``PIN``) with an Ed25519 key ``device``, made in a child
    process so this process's PKCS#11 library state is untouched. Returns (module, env)."""
    module = next((m for m in MODULES if Path(m).exists()), None)
    util = shutil.which("softhsm2-util")
    if module is None or util is None:
        pytest.fail("SoftHSM2 is not installed; run 'make test' (it installs Debian's softhsm2)")
    d = tmp_path / "softhsm"
    (d / "tokens").mkdir(parents=True)
    conf = d / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {d}/tokens\nobjectstore.backend = file\n")
    env = agent_env(SOFTHSM2_CONF=str(conf), EDGEGOV_TEST_PIN=PIN)
    subprocess.run(
        [util, "--init-token", "--free", "--label", "gw", "--pin", PIN, "--so-pin", "so-pin-1"],
        check=True,
        capture_output=True,
        env=env,
        timeout=60,
    )
    make_key = (
        "import os, pkcs11\n"
        "from pkcs11 import Attribute, KeyType, Mechanism\n"
        "from pkcs11.util.ec import encode_named_curve_parameters as p\n"
        f"tok = pkcs11.lib({module!r}).get_token(token_label='gw')\n"
        "with tok.open(rw=True, user_pin=os.environ['EDGEGOV_TEST_PIN']) as s:\n"
        "    s.create_domain_parameters(KeyType.EC_EDWARDS,\n"
        "        {Attribute.EC_PARAMS: p('1.3.101.112')}, local=True).generate_keypair(\n"
        "        store=True, label='device', mechanism=Mechanism.EC_EDWARDS_KEY_PAIR_GEN)\n"
    )
    subprocess.run([sys.executable, "-c", make_key], check=True, env=env, timeout=60)
    return module, env


@pytest.mark.slow
def test_no_pkcs11_pin_in_the_logs_of_a_run_or_of_a_refused_pin(tmp_path, softhsm_token):
    module, env = softhsm_token
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        data = yaml.safe_load(cfg.read_text())
        data["device"] = {
            "id": "gw-test",
            "pkcs11": {
                "module": module,
                "token": "gw",
                "key": "device",
                "pin_env": "EDGEGOV_TEST_PIN",
            },
        }
        cfg.write_text(yaml.safe_dump(data))
        agent = AgentProcess(cfg, "--log-format", "json", "--log-level", "debug", env=env)
        try:
            agent.wait_log("attestation seq 1 signed")
            assert agent.stop() == 0
        finally:
            agent.stop()
        _assert_clean(agent.text(), [PIN])
        assert spool_evidence(tmp_path / "spool")  # it did sign, inside the token
        # A wrong PIN: the start fails with a reason, and that reason does not echo the PIN.
        wrong = "wrong-" + PIN
        bad = AgentProcess(cfg, env={**env, "EDGEGOV_TEST_PIN": wrong})
        assert bad.proc.wait(60) == 2
        bad.stop()
        assert "device.pkcs11" in bad.text()
        _assert_clean(bad.text(), [PIN, wrong])
