"""Footprint of the running agent: memory and CPU of a real ``edgegov run``, idle and at 1 kHz.

The agent runs as its own process (``python -m agent run``) on the shipped cold-chain policy
(two ONNX models; one 10-minute aggregate rule, a 10-minute feature history), with a spool
output (no broker) and one serial source: a pty that this process holds. Measured from
``/proc/PID/status`` (VmRSS, VmHWM) and ``/proc/PID/stat`` (utime + stime):

* time to ready: from spawning the process to systemd's ``READY=1`` on a ``NOTIFY_SOCKET``
  this process listens on (store open, models loaded, sources tried), against the 1 s goal;
* RSS idle: ready, the device silent (no readings), against the 80 MB goal;
* steady state at 1 kHz: an emulated device (a thread here, so its CPU is not the agent's)
  sends DATA at 1,000 readings/s for ``seconds``; the agent's CPU as a share of one core over
  the second half, its RSS at the end and the growth rate (least squares over the second
  half, MB/min);
* projected RSS with the 10-minute state full: the cold-chain bundle's 10-minute aggregate
  fills only after 10 minutes, so what the run did not reach is added from the sizes of the
  state that grows with it: the policy evaluator's ring per duration aggregate (timestamp,
  value, deque slot: 8 + 8 + 8 bytes per reading, in a power-of-two ring) and the risk
  engine's feature history (timestamp + one float64 per channel per reading). Both are
  given per reading; the run's own rate says how many readings 10 minutes are.

Rows print, never assert: the goals are in the notes. ``python -m agent.tools.bench.footprint
--seconds 600`` runs the full 10 minutes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TextIO

from agent.tools.bench.core import Row, proc_cpu_s, verdict

__all__ = ["Footprint", "measure", "run"]

_S = "footprint"
RSS_GOAL_MB = 80.0
READY_GOAL_S = 1.0
RATE_HZ = 1000.0
TEN_MIN_MS = 600_000


def _policy_path() -> Path:
    return Path(str(resources.files("configs") / "policies" / "cold-chain.yaml"))


def _status_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssAnon and RssFile (KiB) of ``pid``."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1])
    return out


@dataclass
class Footprint:
    """What one run measured. Memory in MiB, times in seconds."""

    ready_s: float = float("nan")
    idle_rss_mb: float = float("nan")
    idle_hwm_mb: float = float("nan")
    idle_anon_mb: float = float("nan")  # private memory; the rest is mostly shared libraries
    idle_file_mb: float = float("nan")  # code pages (clean: the kernel can drop them)
    seconds: float = 0.0
    readings_per_s: float = 0.0
    cpu_share: float = float("nan")  # % of one core, second half of the loaded run
    steady_rss_mb: float = float("nan")
    steady_hwm_mb: float = float("nan")
    steady_anon_mb: float = float("nan")
    steady_file_mb: float = float("nan")
    growth_mb_per_min: float = float("nan")
    full_state_mb: float = 0.0  # the 10-minute state at this rate, when full
    reached_state_mb: float = 0.0  # the part of it the run reached
    exit_code: int | None = None
    stop_s: float = float("nan")  # SIGTERM to exit
    samples: list[tuple[float, float]] = field(default_factory=list)  # (s since load, MB)
    log: str = ""

    @property
    def projected_rss_mb(self) -> float:
        return self.steady_rss_mb + self.full_state_mb - self.reached_state_mb


def _state_bytes(policy: Path, rate_hz: float, after_s: float) -> float:
    """Bytes of the state that grows with the readings of the last minutes, at ``rate_hz``
    after ``after_s`` seconds: the policy evaluator's ring per duration aggregate (8 + 8 + 8
    bytes per slot, power-of-two slots, see agent/policy/evaluator.py ``_Ring``) and the
    risk engine's feature history (8 + 8 per channel a feature reads, per reading kept)."""
    from agent.policy import load_policy
    from agent.policy.compiler import AggNode
    from agent.risk.features import parse_feature

    bundle = load_policy(policy)
    total = 0.0
    for node in bundle.plan.derived if bundle.plan is not None else ():
        if isinstance(node, AggNode):
            n = int(rate_hz * min(after_s, node.ms / 1000))
            total += (8 + 8 + 8) * _ring_slots(n)
    feats = [parse_feature(f) for m in bundle.models for f in m.features]
    hist_ms = max((f.dur_ms for f in feats), default=0)
    n = int(rate_hz * min(after_s, hist_ms / 1000))
    total += (8 + 8 * len({f.channel for f in feats})) * n  # the channels features read
    return total


def _ring_slots(n: int) -> int:
    cap = 64
    while cap < n:
        cap *= 2
    return cap


def _site(tmp: Path, port: str, policy: Path) -> Path:
    import yaml

    from agent.identity.keys import generate_key

    generate_key(tmp / "device.key")
    cfg = tmp / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "device": {"id": "gw-footprint", "key": "device.key"},
                "fleet": "bench",
                "policy": str(policy),
                "state_dir": "state",
                "sources": [{"name": "cold-room", "port": port, "baud": 115200}],
                "output": {"spool": "spool"},
                "log": {"level": "warning"},
            }
        )
    )
    return cfg


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (x, y)."""
    if len(points) < 2:
        return float("nan")
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    return sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else float("nan")


def measure(
    seconds: float = 20.0,
    idle_s: float = 2.0,
    rate_hz: float = RATE_HZ,
    policy: Path | None = None,
    progress: TextIO | None = None,
) -> Footprint:
    """Run ``edgegov run`` idle for ``idle_s`` after READY, then at ``rate_hz`` for ``seconds``;
    each RSS sample is also written to ``progress`` as it is taken."""
    from firmware_bridge import Emulator, open_pty

    policy = policy or _policy_path()
    fp = Footprint(seconds=seconds)
    tmp = Path(tempfile.mkdtemp(prefix="edgegov-footprint-"))
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp / "notify"))
    notify.settimeout(0.5)
    stop = threading.Event()
    emu_thread: threading.Thread | None = None
    counts: dict[str, int] = {}
    proc: subprocess.Popen[bytes] | None = None
    pty = open_pty()
    try:
        cfg = _site(tmp, pty.slave_path, policy)
        env = dict(os.environ, NOTIFY_SOCKET=str(tmp / "notify"))
        env.pop("WATCHDOG_USEC", None)
        with open(tmp / "agent.log", "wb") as log:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(cfg)],
                cwd=tmp,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # Read every notification for the whole run, as systemd does: a datagram socket
        # nobody reads fills after a few STATUS= lines and then blocks the agent's sendto.
        ready = threading.Event()

        def listen() -> None:
            while True:
                try:
                    msg = notify.recv(4096).decode()
                except TimeoutError:
                    continue
                except OSError:
                    return  # closed: the run is over
                if not ready.is_set() and "READY=1" in msg.split("\n"):
                    fp.ready_s = time.monotonic() - t0
                    ready.set()

        threading.Thread(target=listen, name="notify", daemon=True).start()
        deadline = t0 + 60.0
        while not ready.wait(0.1) and time.monotonic() < deadline and proc.poll() is None:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"agent exited with {proc.returncode} before READY")
        pid = proc.pid
        time.sleep(idle_s)  # the device is silent: windows close empty
        st = _status_kib(pid)
        fp.idle_rss_mb, fp.idle_hwm_mb = st["VmRSS"] / 1024, st["VmHWM"] / 1024
        fp.idle_anon_mb, fp.idle_file_mb = st["RssAnon"] / 1024, st["RssFile"] / 1024

        emu = Emulator(scenario="normal", rate_hz=rate_hz, seed=1)

        def emulate() -> None:
            counts.update(emu.run(pty.master_fd, stop))

        emu_thread = threading.Thread(target=emulate, name="emulator", daemon=True)
        t_load = time.monotonic()
        emu_thread.start()
        half = t_load + seconds / 2
        c_half = w_half = None
        while True:
            now = time.monotonic()
            if now - t_load >= seconds:
                break
            if c_half is None and now >= half:
                c_half, w_half = proc_cpu_s(pid), now
            fp.samples.append((now - t_load, _status_kib(pid)["VmRSS"] / 1024))
            if progress is not None:
                print(f"  t={fp.samples[-1][0]:6.1f}s  RSS {fp.samples[-1][1]:7.1f} MB",
                      file=progress, flush=True)  # fmt: skip
            time.sleep(min(1.0, max(0.0, t_load + seconds - now)))
        c_end, w_end = proc_cpu_s(pid), time.monotonic()
        st = _status_kib(pid)
        fp.steady_rss_mb, fp.steady_hwm_mb = st["VmRSS"] / 1024, st["VmHWM"] / 1024
        fp.steady_anon_mb, fp.steady_file_mb = st["RssAnon"] / 1024, st["RssFile"] / 1024
        if c_half is not None and w_half is not None and w_end > w_half:
            fp.cpu_share = 100.0 * (c_end - c_half) / (w_end - w_half)
        fp.growth_mb_per_min = 60.0 * _slope([p for p in fp.samples if p[0] >= seconds / 2])
        stop.set()
        emu_thread.join(5)
        fp.readings_per_s = counts.get("data", 0) / max(1e-9, time.monotonic() - t_load)
        t_stop = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        fp.exit_code = proc.wait(180)
        fp.stop_s = time.monotonic() - t_stop
    finally:
        stop.set()
        if emu_thread is not None:
            emu_thread.join(5)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        pty.close()
        notify.close()
        fp.log = (
            (tmp / "agent.log").read_text(errors="replace") if (tmp / "agent.log").exists() else ""
        )
        shutil.rmtree(tmp, ignore_errors=True)

    fp.full_state_mb = _state_bytes(policy, fp.readings_per_s, TEN_MIN_MS / 1000) / 2**20
    fp.reached_state_mb = _state_bytes(policy, fp.readings_per_s, seconds) / 2**20
    return fp


def rows(fp: Footprint) -> list[Row]:
    rate = fp.readings_per_s
    return [
        Row(
            _S,
            "time to READY (spawn -> sd_notify)",
            1000.0 * fp.ready_s,
            "ms",
            note=f"goal <= {READY_GOAL_S:g} s: {verdict(fp.ready_s <= READY_GOAL_S)}",
        ),
        Row(
            _S,
            "agent RSS idle, two models",
            fp.idle_rss_mb,
            "MB",
            note=f"anon {fp.idle_anon_mb:.1f} + file {fp.idle_file_mb:.1f}; "
            f"HWM {fp.idle_hwm_mb:.1f} MB; goal <= {RSS_GOAL_MB:g} MB: "
            f"{verdict(fp.idle_rss_mb <= RSS_GOAL_MB)}",
        ),
        Row(
            _S,
            f"agent RSS at 1 kHz after {fp.seconds:g} s",
            fp.steady_rss_mb,
            "MB",
            note=f"{rate:,.0f} readings/s; anon {fp.steady_anon_mb:.1f} + file "
            f"{fp.steady_file_mb:.1f}; HWM {fp.steady_hwm_mb:.1f} MB; goal <= "
            f"{RSS_GOAL_MB:g} MB: {verdict(fp.steady_rss_mb <= RSS_GOAL_MB)}",
        ),
        Row(
            _S,
            "agent RSS growth at 1 kHz (2nd half)",
            fp.growth_mb_per_min,
            "MB/min",
            note="flat once the 10-minute state is full",
        ),
        Row(
            _S,
            "projected RSS, 10-minute state full",
            fp.projected_rss_mb,
            "MB",
            note=f"+{fp.full_state_mb - fp.reached_state_mb:.1f} MB not yet reached "
            f"(10-min rings + feature history: {fp.full_state_mb:.1f} MB full); goal <= "
            f"{RSS_GOAL_MB:g} MB: {verdict(fp.projected_rss_mb <= RSS_GOAL_MB)}",
        ),
        Row(
            _S,
            "agent CPU at 1 kHz (steady state)",
            fp.cpu_share,
            "% of core",
            note=f"exit code {fp.exit_code} ({fp.stop_s:.1f} s after SIGTERM)",
        ),
    ]


def run(quick: bool) -> list[Row]:
    return rows(measure(seconds=20.0 if quick else 60.0))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--seconds", type=float, default=60.0, help="loaded run (default 60)")
    p.add_argument("--idle", type=float, default=2.0, help="idle seconds after READY")
    p.add_argument("--rate", type=float, default=RATE_HZ, help="readings/s (default 1000)")
    p.add_argument("--samples", action="store_true", help="print the RSS samples")
    a = p.parse_args(argv)
    from agent.tools.bench.core import format_rows

    fp = measure(a.seconds, a.idle, a.rate, progress=sys.stdout if a.samples else None)
    print(format_rows(rows(fp)))
    return 0 if fp.exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
