"""Running as a systemd service: the unit file, the sysusers snippet, and the sd_notify
protocol (READY, STATUS, WATCHDOG from the main loop only, STOPPING) against a real
datagram socket and the real agent subprocess."""

from __future__ import annotations

import ctypes
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.audit import verify_paths
from agent.identity.keys import load_public_key
from agent.pipeline.service import Notifier
from tests.agent_process import AgentProcess, NotifySocket, agent_env, spool_evidence
from tests.conftest import ROOT
from tests.test_agent_e2e import Device, make_site

UNIT = ROOT / "configs" / "systemd" / "edgegov.service"
SYSUSERS = ROOT / "configs" / "systemd" / "edgegov.sysusers"

# -- the unit file ---------------------------------------------------------------------


def _unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values (systemd keys repeat: DeviceAllow=, SystemCallFilter=)."""
    sections: dict[str, dict[str, list[str]]] = {}
    section = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            sections.setdefault(section, {})
            continue
        key, _, value = line.partition("=")
        assert section, f"{path}: {line!r} outside a section"
        sections[section].setdefault(key.strip(), []).append(value.strip())
    return sections


def test_unit_file_has_the_service_settings_the_agent_relies_on():
    """Parsed always (systemd-analyze or not): each setting the README and the agent count on."""
    svc = _unit(UNIT)["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "30s"  # the agent pings every WatchdogSec/2
    assert one["Restart"] in ("always", "on-failure") and one["RestartSec"]
    assert one["RestartPreventExitStatus"] == "2"  # a config error does not loop
    assert one["ExecStart"].split()[:4] == [
        "/usr/local/bin/edgegov",
        "run",
        "--config",
        "/etc/edgegov/agent.yaml",
    ]
    assert "--log-format json" in one["ExecStart"]
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID" and one["KillSignal"] == "SIGTERM"
    assert one["TimeoutStopSec"]
    assert one["User"] == "edgegov" and "DynamicUser" not in svc
    assert one["SupplementaryGroups"] == "dialout"
    assert one["StateDirectory"] == "edgegov" and one["ConfigurationDirectory"] == "edgegov"
    assert one["ReadWritePaths"] == "/var/lib/edgegov"
    for key, want in {
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "NoNewPrivileges": "yes",
        "MemoryDenyWriteExecute": "yes",
        "LockPersonality": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "DevicePolicy": "closed",
    }.items():
        assert one[key] == want, key
    assert {d.split()[0] for d in svc["DeviceAllow"]} >= {
        "char-ttyUSB",
        "char-ttyACM",
        "char-ttyAMA",
    }
    assert "PrivateDevices" not in svc  # it would hide the serial ports
    # the agent's state_dir in the documented config is the unit's state directory
    assert "state_dir: /var/lib/edgegov" in (ROOT / "configs" / "agent.example.yaml").read_text()


def test_systemd_analyze_verifies_the_unit_without_a_warning(tmp_path):
    """systemd-analyze verify, where it exists. It checks that ExecStart= is executable, so
    the copy it checks points ExecStart at this venv's real `edgegov` script instead of
    /usr/local/bin/edgegov (the one line that differs)."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed; the unit's keys are checked by parsing")
    script = Path(sys.executable).parent / "edgegov"
    assert script.exists(), f"{script}: the venv's console script is missing"
    text = UNIT.read_text()
    assert text.count("ExecStart=/usr/local/bin/edgegov ") == 1
    copy = tmp_path / "edgegov.service"
    copy.write_text(text.replace("ExecStart=/usr/local/bin/edgegov ", f"ExecStart={script} "))
    r = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    # Unknown keys and unparsable values are only warnings (exit 0): any output is a defect.
    assert r.returncode == 0 and r.stdout + r.stderr == "", r.stdout + r.stderr


def test_sysusers_snippet_creates_the_user_in_dialout(tmp_path):
    lines = [line.split() for line in SYSUSERS.read_text().splitlines() if line[:1] in "um"]
    assert lines[0][:3] == ["u", "edgegov", "-"] and ["m", "edgegov", "dialout"] in lines
    tool = shutil.which("systemd-sysusers")
    if tool is None:
        pytest.skip("systemd-sysusers is not installed; the snippet's lines are checked above")
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (etc / "group").write_text("root:x:0:\ndialout:x:20:\n")
    r = subprocess.run(
        [tool, f"--root={tmp_path}", str(SYSUSERS)], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    user = next(u for u in (etc / "passwd").read_text().splitlines() if u.startswith("edgegov:"))
    assert user.split(":")[5] == "/var/lib/edgegov" and user.endswith("nologin")
    assert "dialout:x:20:edgegov" in (etc / "group").read_text().splitlines()


# -- the notify protocol, unit by unit --------------------------------------------------


def test_notifier_sends_to_an_abstract_namespace_socket():
    name = f"edgegov-test-{os.getpid()}-{time.monotonic_ns()}"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind("\0" + name)
    server.settimeout(5)
    n = Notifier.from_env({"NOTIFY_SOCKET": f"@{name}"})
    try:
        assert n.enabled
        n.ready("seq 3 signed,\noutbox 0")
        assert server.recv(4096) == b"READY=1\nSTATUS=seq 3 signed, outbox 0"  # one line
        n.stopping("bye")
        assert server.recv(4096) == b"STOPPING=1\nSTATUS=bye"
    finally:
        n.close()
        server.close()


def test_notifier_pings_every_half_watchdog_period_and_only_for_its_own_pid():
    with NotifySocket() as sock:
        env = {"NOTIFY_SOCKET": sock.path, "WATCHDOG_USEC": "400000"}
        n = Notifier.from_env(env)
        assert n.watchdog_interval == pytest.approx(0.2)
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            n.watchdog()  # called far more often than it may ping
            time.sleep(0.01)
        pings = sock.collect(0.2)
        assert 3 <= len(pings) <= 6 and all(f == {"WATCHDOG": "1"} for _, f in pings)
        n.close()

        def interval(**changes: str) -> float | None:
            other = Notifier.from_env({**env, **changes}, pid=2)
            other.close()
            return other.watchdog_interval

        # WATCHDOG_PID names another process (e.g. a wrapper): not ours to ping
        assert interval(WATCHDOG_PID="1") is None
        assert interval(WATCHDOG_PID="2") == 0.2
        assert interval(WATCHDOG_USEC="soon") is None and interval(WATCHDOG_USEC="0") is None


def test_notifier_without_notify_socket_does_nothing_and_a_gone_socket_does_not_raise():
    n = Notifier.from_env({"WATCHDOG_USEC": "1000000"})
    assert not n.enabled and n.watchdog_interval is None and n.send("READY=1") is False
    gone = Notifier.from_env({"NOTIFY_SOCKET": "/nonexistent/notify"})
    assert gone.enabled and gone.send("READY=1") is False  # ENOENT: logged once, not raised
    gone.close()


# -- the real agent -------------------------------------------------------------------------


def test_agent_notifies_ready_after_its_store_then_status_watchdog_and_stopping(tmp_path):
    with NotifySocket() as sock, Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        env = agent_env(NOTIFY_SOCKET=sock.path, WATCHDOG_USEC="1000000")
        agent = AgentProcess(cfg, env=env)
        try:
            ready = sock.wait_for("READY")
            assert (tmp_path / "state" / "evidence.sqlite").exists()  # the store is open
            assert ready["STATUS"].endswith("1/1 sources connected"), ready
            assert not any(f.get("WATCHDOG") for _, f in sock.messages[:-1])  # READY first
            got = sock.collect(3.0)
            pings = [t for t, f in got if f.get("WATCHDOG") == "1"]
            # WATCHDOG_USEC=1 s: a ping every 0.5 s (the loop wakes at least every 0.25 s)
            assert 4 <= len(pings) <= 7, got
            assert max(b - a for a, b in zip(pings, pings[1:])) < 1.0, pings  # the period
            statuses = [f["STATUS"] for _, f in got if "STATUS" in f]
            assert any(s.startswith("seq ") and " signed, outbox 0, 1/1 sources" in s
                       for s in statuses), statuses  # fmt: skip
            agent.proc.terminate()
            stopping = sock.wait_for("STOPPING")
            assert "stopping" in stopping["STATUS"]
            assert agent.stop() == 0, agent.text()[-2000:]
        finally:
            agent.stop()
    assert verify_paths(
        [tmp_path / "spool"], [load_public_key(tmp_path / "keys/device.pub.pem")]
    ).ok


def _feed(fifo: Path, text: str) -> None:
    """Write ``text`` to ``fifo`` if a reader waits on it, then make it a file again."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: nobody is reading it (any more)
        pass
    else:
        with os.fdopen(fd, "w") as f:
            f.write(text)
    fifo.unlink()
    fifo.write_text(text)


def test_a_hung_main_loop_stops_the_watchdog_pings_while_other_threads_run(tmp_path):
    """The config file becomes a FIFO nobody writes: the SIGHUP reload blocks the main loop
    in open() (as a hung NFS mount would) while the source and the publisher threads run.
    A watchdog pinged from a thread of its own would keep pinging; ours must go quiet."""
    with NotifySocket() as sock, Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        text = cfg.read_text()
        agent = AgentProcess(cfg, env=agent_env(NOTIFY_SOCKET=sock.path, WATCHDOG_USEC="600000"))
        try:
            sock.wait_for("READY")
            sock.wait_for("WATCHDOG")
            sock.wait_for("WATCHDOG")  # pinging
            cfg.unlink()
            os.mkfifo(cfg)
            agent.hup()
            sock.wait_for("RELOADING", timeout=5)  # the main loop took the SIGHUP
            quiet = sock.collect(2.0)  # more than 6 ping intervals
            assert [f for _, f in quiet if "WATCHDOG" in f] == [], quiet
            state = Path(f"/proc/{agent.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            assert state in ("S", "R", "D"), state  # alive, blocked: not stopped, not a zombie
            _feed(cfg, text)  # unblock: the reload reads the same config
            assert sock.wait_for("READY", timeout=10)["STATUS"].endswith("1/1 sources connected")
            sock.wait_for("WATCHDOG", timeout=2)  # and the loop pings again
            assert agent.stop() == 0
        finally:
            if cfg.is_fifo():
                _feed(cfg, text)  # a failed assertion must not leave the agent blocked
            agent.stop()
    assert "config reloaded from" in agent.text()


PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1  # linux/prctl.h (6.3+)


def _deny_write_execute() -> None:
    """In the child before exec: no memory may become writable and executable, what
    MemoryDenyWriteExecute=yes enforces (the flag is inherited across execve)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_MDWE)")


def test_agent_scores_and_signs_with_write_execute_memory_denied(tmp_path):
    """The unit sets MemoryDenyWriteExecute=yes: the whole agent (onnxruntime, numpy, the
    Cython modules, cryptography, SQLite) must work without W+X memory."""
    if ctypes.CDLL(None).prctl(PR_GET_MDWE, 0, 0, 0, 0) < 0:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+): W^X not testable here")
    probe = subprocess.run(  # the restriction holds in the exec'd interpreter
        [sys.executable, "-c", "import mmap; mmap.mmap(-1, 4096, prot=7)"],
        preexec_fn=_deny_write_execute,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0 and "PermissionError" in probe.stderr, probe.stderr
    with Device("normal") as dev:
        cfg = make_site(tmp_path, output={"spool": "spool"}, port=dev.pty.slave_path)
        agent = AgentProcess(cfg, env=agent_env(), preexec_fn=_deny_write_execute)
        try:
            agent.wait_log("attestation seq 1 signed")
            assert agent.stop() == 0, agent.text()[-2000:]
        finally:
            agent.stop()
    evidence = spool_evidence(tmp_path / "spool")
    assert len(evidence) >= 2
    scored = {r.model_id for ev in evidence for r in ev.risk if r.score is not None}
    assert scored == {"excursion-risk", "drift-anomaly"}, [ev.degraded for ev in evidence]
