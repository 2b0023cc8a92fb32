"""The `edgegov` command line as a user meets it: real subprocesses, real exit codes."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from tests.conftest import ROOT


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "EDGEGOV_PURE"}
    env.update(extra)
    return env


@pytest.mark.slow
@pytest.mark.parametrize("pure", ["0", "1"], ids=["cython-evaluator", "pure-python-evaluator"])
def test_demo_runs_the_whole_path_and_audits_it(tmp_path, run_cli, pure):
    env = _env(**({"EDGEGOV_PURE": "1"} if pure == "1" else {}))
    r = run_cli("demo", "--seconds", "11", "--out", str(tmp_path / "demo"), env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "private Mosquitto at mqtt://127.0.0.1:" in r.stdout
    assert "evidence        INTACT" in r.stdout
    assert "demo            PASS" in r.stdout
    assert "temp-2-8 in" in r.stdout  # the excursion (8 s in) shows up as a violation
    assert "keep-cold violated" in r.stdout  # compliance is judged per goal, apart
    # The printed verify command works as printed, and passes.
    verify_line = next(
        line for line in r.stdout.splitlines() if "audit verify" in line and "--json" in line
    )
    args = verify_line.split("audit verify", 1)[1].split()
    v = run_cli("audit", "verify", *args)  # same working directory as the demo
    assert v.returncode == 0, v.stdout + v.stderr
    assert json.loads(v.stdout)["evidence"] == "intact"


def test_demo_without_a_broker_uses_the_spool_and_says_so(tmp_path, run_cli):
    r = run_cli(
        "demo",
        "--seconds",
        "2",
        "--no-broker",
        "--scenario",
        "normal",
        "--out",
        str(tmp_path / "demo"),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "broker          none: --no-broker was given" in r.stdout
    assert list((tmp_path / "demo" / "attestations").rglob("*.cose"))


def test_demo_refuses_to_wipe_a_directory_it_did_not_make(tmp_path, run_cli):
    (tmp_path / "precious.txt").write_text("keep me")
    r = run_cli("demo", "--seconds", "1", "--out", str(tmp_path))
    assert r.returncode == 2 and "not an earlier demo's output" in r.stderr
    assert (tmp_path / "precious.txt").read_text() == "keep me"


def test_tampered_evidence_gives_exit_1_and_names_device_and_seq(tmp_path, run_cli):
    r = run_cli(
        "demo",
        "--seconds",
        "6",
        "--no-broker",
        "--scenario",
        "normal",
        "--out",
        str(tmp_path / "d"),
    )  # 6 s always spans two 5 s windows
    assert r.returncode == 0, r.stdout + r.stderr
    files = sorted((tmp_path / "d" / "attestations").rglob("*.cose"))
    assert len(files) >= 2
    files[0].unlink()
    pub = str(tmp_path / "d" / "device" / "device.pub.pem")
    v = run_cli("audit", "verify", str(tmp_path / "d" / "attestations"), "--key", pub, "--json")
    assert v.returncode == 1
    finding = json.loads(v.stdout)["findings"][0]
    assert finding["code"] == "CHAIN_START" and finding["device"] == "demo-gw-01"


def test_policy_check_prints_the_digest(run_cli):
    r = run_cli("policy", "check", "configs/policies/cold-chain.yaml")
    assert r.returncode == 0 and "OK - policy cold-chain-gdp v1" in r.stdout
    assert "digest sha256:" in r.stdout


def test_policy_check_loads_each_model_as_the_agent_would(tmp_path, run_cli):
    (tmp_path / "policies").mkdir()
    (tmp_path / "models").mkdir()
    text = (ROOT / "configs" / "policies" / "cold-chain.yaml").read_text()
    (tmp_path / "policies" / "p.yaml").write_text(text)
    drift = (ROOT / "configs" / "models" / "drift-v1.onnx").read_bytes()
    (tmp_path / "models" / "drift-v1.onnx").write_bytes(drift[: len(drift) // 2])  # truncated
    r = run_cli("policy", "check", str(tmp_path / "policies" / "p.yaml"))
    assert r.returncode == 1, r.stdout + r.stderr
    assert "2 finding(s)" in r.stdout
    assert "model-refused: model excursion-risk: file " in r.stdout and "does not exist" in r.stdout
    assert "model-refused: model drift-anomaly: file " in r.stdout and "has SHA-256" in r.stdout


def test_policy_syntax_error_names_file_line_and_column(tmp_path, run_cli):
    bad = tmp_path / "bad.yaml"
    text = (ROOT / "configs" / "policies" / "cold-chain.yaml").read_text()
    text = text.replace("condition: humidity <= 65.0", "condition: humidity <= 65.0 &&")
    bad.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "65.0 &&" in t)
    r = run_cli("policy", "check", str(bad))
    assert r.returncode == 2
    assert f"{bad}:{line}:" in r.stderr and "^" in r.stderr


def test_init_makes_a_private_key_and_a_config_that_loads(tmp_path, run_cli):
    r = run_cli("init", "--device-id", "gw-9", "--dir", str(tmp_path))
    assert r.returncode == 0, r.stderr
    key = tmp_path / "keys" / "device.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE" not in r.stdout + r.stderr  # never printed
    from agent.config import load_config

    cfg = load_config(tmp_path / "agent.yaml")
    assert cfg.device_id == "gw-9" and cfg.key_path == key


def test_init_csr_hint_commands_work_when_run_in_order(tmp_path, run_cli):
    """The printed `fleet ca init` and `fleet ca issue` lines, run as printed, give the
    device a certificate for its own key from the fleet CA."""
    import shlex

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    r = run_cli("init", "--device-id", "gw-9", "--dir", "site", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    hints = [line.strip() for line in r.stdout.splitlines() if "edgegov fleet ca " in line]
    assert [h.split()[:4] for h in hints] == [["edgegov", "fleet", "ca", "init"],
                                              ["edgegov", "fleet", "ca", "issue"]]  # fmt: skip
    for h in hints:
        argv = shlex.split(h.split("  (")[0])  # without the trailing "(once per fleet)"
        done = run_cli(*argv[1:], cwd=tmp_path)
        assert done.returncode == 0, (h, done.stderr)
    site = tmp_path / "site"
    cert = x509.load_pem_x509_certificate((site / "keys" / "device.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((tmp_path / "fleet-ca" / "ca.pem").read_bytes())
    assert cert.issuer == ca.subject
    assert cert.subject.rfc4514_string() == "CN=gw-9"
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    device_pub = serialization.load_pem_public_key((site / "keys" / "device.pub.pem").read_bytes())
    assert cert.public_key().public_bytes(*der) == device_pub.public_bytes(*der)
    cert.verify_directly_issued_by(ca)
    assert "device.cert: keys/device.pem" in r.stdout
    assert "# cert: keys/device.pem" in (site / "agent.yaml").read_text()


def test_run_with_a_bad_config_field_says_which(tmp_path, run_cli):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        "device: {id: gw, key: k}\nfleet: f\npolicy: p.yaml\nstate_dir: s\n"
        "sources: [{port: /dev/null, baud: fast}]\noutput: {spool: sp}\n"
    )
    r = run_cli("run", "--config", str(cfg))
    assert r.returncode == 2
    assert f"{cfg}: sources[0].baud: expected int, got str 'fast'" in r.stderr


def test_emulate_prints_its_pty_and_stops_cleanly(run_cli):
    r = run_cli("emulate", "--pty", "--seconds", "0.5")
    assert r.returncode == 0, r.stderr
    assert "/dev/pts/" in r.stdout


def test_console_script_is_installed():
    assert shutil.which("edgegov", path=os.path.dirname(os.sys.executable)), (
        "the edgegov console script is missing from the venv"
    )


def _spool_site(tmp_path, port: str) -> str:
    from tests.test_agent_e2e import make_site

    return str(make_site(tmp_path, output={"spool": "spool"}, port=port))


def test_run_exits_0_on_sigterm_and_signs_the_last_partial_window(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from agent.audit import verify_paths
    from agent.identity.keys import load_public_key
    from tests.test_agent_e2e import Device

    with Device("normal") as dev:
        cfg = _spool_site(tmp_path, dev.pty.slave_path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", cfg],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        time.sleep(3.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "attestation seq 0 signed" in err
    res = verify_paths([tmp_path / "spool"], [load_public_key(tmp_path / "keys/device.pub.pem")])
    assert res.ok, [str(f) for f in res.findings]
    assert res.devices[0].readings > 50  # nothing received was left unsigned


def test_broker_that_is_not_there_is_named_with_the_reason(tmp_path):
    import subprocess
    import sys
    import time

    from agent.tools.broker import free_port
    from tests.test_agent_e2e import Device, make_site

    url = f"mqtt://127.0.0.1:{free_port()}"
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"mqtt": {"url": url}}, port=dev.pty.slave_path)
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        time.sleep(2.5)
        proc.terminate()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err  # the agent kept running and stopped cleanly
    assert f"cannot reach broker {url} (Connection refused)" in err
    assert "stay in the outbox" in err  # and said where its evidence is


def test_bench_runs_and_prints_ratios_side_by_side(run_cli):
    r = run_cli("bench", "--quick", "--only", "policy")
    assert r.returncode == 0, r.stderr
    assert (
        "cython evaluator" in r.stdout
        and "x numpy" in r.stdout
        and "x pure-python twin" in r.stdout
    )
    bad = run_cli("bench", "--only", "nope")
    assert bad.returncode == 2 and "unknown bench section" in bad.stderr
