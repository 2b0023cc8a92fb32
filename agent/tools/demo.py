"""`edgegov demo`: the whole path on an embedded default, then an audit of what came out.

emulated sensor --pty--> agent (policy + ONNX risk, signs) --MQTT--> private
Mosquitto --> collector --> files --> `audit verify` with only the public key.
Without mosquitto installed the agent writes to a local spool directory instead
and says so.
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from importlib import resources
from pathlib import Path

import yaml

from agent.audit import format_result, verify_paths
from agent.audit.analysis import analyze
from agent.audit.collector import FileCollector
from agent.audit.report import render_html
from agent.config import load_config
from agent.errors import Error
from agent.evidence.store import store_path
from agent.governance.people import load_authorities
from agent.governance.review import default_as_of, review
from agent.identity.keys import generate_key, load_public_key, public_key_path
from agent.pipeline.runner import Agent
from agent.policy import load_policy
from agent.tools.broker import MosquittoBroker, find_mosquitto
from agent.transport.topics import attestations
from firmware_bridge import Emulator, open_pty

__all__ = ["run_demo"]

_MARKER = ".edgegov-demo"
DEVICE_ID = "demo-gw-01"
FLEET = "demo"


def _packaged_policy() -> Path:
    return Path(str(resources.files("configs") / "policies" / "cold-chain.yaml"))


def _prepare_out(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        if not (out / _MARKER).exists():
            raise Error(
                f"{out} exists and is not an earlier demo's output; choose another --out DIR"
            )
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / _MARKER).write_text("created by edgegov demo; removed by the next demo run\n")


_OPERATOR = "Demo Operator"


def _demo_trust(out: Path, device_pub: Path) -> tuple[Path, Path]:
    """A trust file for the demo's evidence: the device key, and an operator of the demo
    site who may sign explanations (their key made here, 0600)."""
    operator = out / "people" / "operator.key"
    generate_key(operator)
    trust = out / "trust.yaml"
    trust.write_text(
        yaml.safe_dump(
            {
                "keys": [{"key": str(device_pub.relative_to(out)), "device": DEVICE_ID}],
                "people": [
                    {
                        "key": str(public_key_path(operator).relative_to(out)),
                        "name": _OPERATOR,
                        "roles": ["operator"],
                        "sites": [FLEET],
                    }
                ],
                "sites": {FLEET: [DEVICE_ID]},
            },
            sort_keys=False,
        )
    )
    return trust, operator


def _show(path: Path) -> str:
    """A path as short as it can be for the reader: relative to the working directory."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def _cli_name() -> str:
    exe = Path(sys.executable).with_name("edgegov")
    if shutil.which("edgegov") == str(exe):
        return "edgegov"
    return _show(exe) if exe.exists() else f"{sys.executable} -m agent"


_SCENARIO_WORDS = {
    "excursion": "8 s in, the door opens and the temperature leaves 2-8 °C: expect violations",
    "normal": "a well-behaved cold store: expect no violations",
    "drift": "the temperature creeps upwards (a failing compressor)",
    "garbage": "random bytes and corrupted frames on the line: expect them counted, not used",
    "noisy-line": "bit flips on the line: expect CRC errors counted, not used",
}


def run_demo(
    seconds: float = 15.0,
    out: Path = Path("demo-out"),
    scenario: str = "excursion",
    rate_hz: float = 20.0,
    use_broker: bool = True,
) -> int:
    """Run the demo; returns the exit code (0 only if every attestation verified)."""
    out = out.resolve()
    _prepare_out(out)
    logging.basicConfig(level=logging.INFO, format="  | %(message)s", stream=sys.stderr)
    say = print
    say(f"edgegov demo: {seconds:g} s of an emulated cold-store sensor, scenario '{scenario}'")
    say(f"({_SCENARIO_WORDS.get(scenario, scenario)})\n")

    key_path = out / "device" / "device.key"
    generate_key(key_path)
    pub_path = public_key_path(key_path)
    say(f"1. device key      {_show(key_path)} (Ed25519, mode 0600)")

    pty = open_pty()
    emulator = Emulator(scenario=scenario, rate_hz=rate_hz, seed=7)
    stop_emu = threading.Event()
    emu_thread = threading.Thread(
        target=emulator.run, args=(pty.master_fd, stop_emu), name="emulator", daemon=True
    )
    emu_thread.start()
    say(
        f"2. sensor          emulated device EMU-0001 writing framed serial data to "
        f"{pty.slave_path} "
        f"at {rate_hz:g} Hz"
    )

    broker: MosquittoBroker | None = None
    collector: FileCollector | None = None
    evidence_dir = out / "attestations"
    output: dict[str, object]
    if use_broker and find_mosquitto():
        broker = MosquittoBroker(out / "broker").start()
        collector = FileCollector(broker.url, evidence_dir, fleet=FLEET)
        collector.start()
        output = {"mqtt": {"url": broker.url}}
        say(
            f"3. broker          private Mosquitto at {broker.url}; a collector subscribes to "
            f"{attestations(fleet=FLEET)}"
        )
    else:
        output = {"spool": str(evidence_dir)}
        why = (
            "--no-broker was given"
            if not use_broker
            else "mosquitto is not installed (sudo apt-get install mosquitto to use one)"
        )
        say(
            f"3. broker          none: {why}; attestations go to the spool directory "
            f"{_show(evidence_dir)} instead"
        )

    config_path = out / "agent.yaml"
    config_path.write_text(
        yaml.safe_dump(
            {
                "device": {"id": DEVICE_ID, "key": str(key_path)},
                "fleet": FLEET,
                "policy": str(_packaged_policy()),
                "state_dir": str(out / "state"),
                "sources": [{"port": pty.slave_path, "baud": 115200, "protocol": "framed"}],
                "output": output,
            },
            sort_keys=False,
        )
    )
    agent = Agent(load_config(config_path))
    p = agent.policy
    say(
        f"4. agent           policy {p.id} v{p.version} ({len(p.rules)} rules, "
        f"{p.window_seconds:g} s windows), models: "
        f"{', '.join(f'{m.id} on {m.provider}' for m in agent.models) or 'none'}"
    )
    say(f"\nrunning for {seconds:g} s (Ctrl-C stops early, cleanly)...")
    if threading.current_thread() is threading.main_thread():
        agent.install_signal_handlers()
    timer = threading.Timer(seconds, agent.stop)
    timer.start()
    try:
        stats = agent.run()
    finally:
        timer.cancel()
        stop_emu.set()
        emu_thread.join(timeout=2)
        pty.close()

    received = stats.attestations
    if collector is not None:
        deadline = time.monotonic() + 5
        while len(collector.stored) < stats.attestations and time.monotonic() < deadline:
            time.sleep(0.05)
        received = len(collector.stored)
        collector.stop()
    if broker is not None:
        broker.stop()

    source = "the broker delivered" if broker else "the agent spooled"
    say(f"\naudit: verifying what {source}, with only the device's public key")
    result = verify_paths([evidence_dir], [load_public_key(pub_path)])
    policy = load_policy(_packaged_policy())
    analysis = analyze(result, policy)  # compliance per goal
    trust_path, operator_key = _demo_trust(out, pub_path)  # an operator who may explain
    analysis.governance = review(
        analysis, [], load_authorities(trust_path), policy, default_as_of(analysis)
    )
    report_path = out / "report.html"
    report_path.write_text(render_html(analysis, title="edgegov demo: audit report"))
    say("\n".join(("   " + line).rstrip() for line in format_result(analysis).splitlines()))

    ok = result.ok and result.verified == stats.attestations == received
    goals = ", ".join(f"{c.id} {c.status}" for c in analysis.compliance) or "none judged"
    violations = ", ".join(f"{k} in {v} window(s)" for k, v in stats.violations.items()) or "none"
    cli = _cli_name()
    via = " via MQTT" if broker else ""
    say(f"""
summary
  readings        {stats.readings} received in {stats.windows} window(s)
  violations      {violations}
  attestations    {stats.attestations} signed, {received} delivered{via}, \
{result.verified} verified
  evidence        {analysis.evidence.upper()} (signatures, chain, Merkle log)
  goals           {goals}
  demo            {"PASS" if ok else "FAIL"} (every signed attestation delivered and intact)

files
  attestations    {_show(evidence_dir)}/  (COSE_Sign1 files, as {source} them)
  evidence store  {_show(store_path(out / "state"))}  (chain state, outbox)
  device key      {_show(key_path)}  (private, 0600)
  public key      {_show(pub_path)}  (all an auditor needs)
  agent config    {_show(config_path)}
  audit report    {_show(report_path)}  (open it in a browser)

verify by hand (then try deleting or editing one .cose file and verify again)
  {cli} audit verify {_show(evidence_dir)} --key {_show(pub_path)} \
--policy {_show(_packaged_policy())}
  {cli} audit verify {_show(evidence_dir)} --key {_show(pub_path)} --json

re-run the newest window from the stored readings; its verdict and scores come out the same
  {cli} audit replay --store {_show(store_path(out / "state"))} \
--policy {_show(_packaged_policy())} --key {_show(pub_path)}""")
    deviations = analysis.governance.deviations
    if deviations:
        say(f"""
comply or explain: the demo operator signs an explanation of the first deviation with
their own key ({_show(operator_key)}); verify again with the trust file that names them
  {cli} explain {deviations[0].id} --cause "door left open during loading" \
--action "crew retrained" --disposition quarantined --name "{_OPERATOR}" --role operator \
--key {_show(operator_key)} --out {_show(evidence_dir)}/deviation-1.explanation
  {cli} audit verify {_show(evidence_dir)} --trust {_show(trust_path)} \
--policy {_show(_packaged_policy())}""")
    if not ok and result.verified != stats.attestations:
        say(
            f"\n{stats.attestations - result.verified} attestation(s) were signed but not "
            "verified from the delivered files"
        )
    return 0 if ok else 1
