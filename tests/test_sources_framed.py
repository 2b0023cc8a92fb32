"""Framed sources: sequence judgement, schema checks, quality records; then over real ptys.

The first half drives FramedSource.feed with real encoded bytes (the port is
not what is tested there); the second half runs the reader thread against
the emulator on real pseudo-terminals, including unplug, reboot and
slow-trickle.
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path

import pytest

from agent.config import ExpectedChannel, SerialSettings, SourceConfig
from agent.policy.model import Channel
from agent.sources import FramedSource, make_source, sum_counters, window_problems
from agent.sources.reading import Reading
from firmware_bridge import (
    ChannelKind,
    ChannelSpec,
    Data,
    Emulator,
    Frame,
    Hello,
    encode_frame,
    open_pty,
)
from firmware_bridge import emulator as emu_mod

POLICY = (
    Channel("temperature", "Cel", -40.0, 85.0),
    Channel("humidity", "%RH", 0.0, 100.0),
    Channel("door", "bool", 0.0, 1.0),
)
HELLO = Hello("DEV-1", "fw", Emulator.CHANNELS)


class Sink:
    """Collects what a source delivers (thread-safe)."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[Reading]) -> None:
        with self.lock:
            self.readings.extend(batch)

    def count(self) -> int:
        with self.lock:
            return len(self.readings)


def source(port: str = "/nonexistent", **kw) -> tuple[FramedSource, Sink]:
    sink = Sink()
    cfg = SourceConfig(SerialSettings(port), "framed", "s0", 0.05, 0.4, **kw)
    src = make_source(0, cfg, POLICY, sink, "agent.yaml")
    assert isinstance(src, FramedSource)
    return src, sink


def w(seq: int, body: object, ts: int = 1000) -> bytes:
    return encode_frame(Frame(seq, ts, body))  # type: ignore[arg-type]


def d(seq: int, t: float = 5.0) -> bytes:
    return w(seq, Data((t, 50.0, 0.0)), ts=1000 + seq)


# --------------------------------------------------------------------------- sequence


def test_consecutive_frames_become_readings_in_policy_order():
    src, sink = source()
    src.feed(b"\x00" + w(0, HELLO) + d(1) + d(2, 6.5))
    assert [(r.frame_seq, r.values) for r in sink.readings] == [
        (1, (5.0, 50.0, 0.0)),
        (2, (6.5, 50.0, 0.0)),
    ]
    h = src.take_health()
    assert h["samples_ok"] == 2 and h["frames_ok"] == 3 and h["seq_gaps"] == 0
    assert h["device"] == "DEV-1" and h["gaps"] == []


def test_a_gap_is_recorded_with_its_exact_missing_range():
    src, sink = source()
    src.feed(b"\x00" + w(0, HELLO) + d(1) + d(5) + d(6) + d(10))
    h = src.take_health()
    assert h["seq_gaps"] == 2 and h["frames_missed"] == 6
    assert h["gaps"] == [[2, 4], [7, 9]]
    assert [r.frame_seq for r in sink.readings] == [1, 5, 6, 10]
    assert src.take_health()["gaps"] == []  # per window: the next window starts clean


def test_a_gap_across_the_seq_wrap_is_a_gap_not_a_reset():
    src, _ = source()
    src.feed(b"\x00" + w(0xFFFFFFF0, HELLO) + d(0xFFFFFFFE) + d(3))
    h = src.take_health()
    assert h["gaps"] == [[0xFFFFFFF1, 0xFFFFFFFD], [0xFFFFFFFF, 2]]
    assert h["frames_missed"] == 13 + 4 and h["seq_resets"] == 0


def test_duplicates_are_dropped_and_counted():
    src, sink = source()
    src.feed(b"\x00" + w(0, HELLO) + d(1) + d(2) + d(2) + d(1) + d(3))
    h = src.take_health()
    assert h["duplicates"] == 2 and h["seq_gaps"] == 0
    assert [r.frame_seq for r in sink.readings] == [1, 2, 3]


def test_hello_at_seq_0_is_a_reboot_not_a_gap():
    src, sink = source()
    src.feed(b"\x00" + w(0, HELLO) + d(1) + d(2) + b"\x00" + w(0, HELLO) + d(1))
    h = src.take_health()
    assert h["reboots"] == 1 and h["seq_gaps"] == 0 and h["duplicates"] == 0
    assert [r.frame_seq for r in sink.readings] == [1, 2, 1]


def test_a_backward_jump_without_hello_is_an_unannounced_restart():
    src, sink = source()
    src.feed(b"\x00" + w(0, HELLO) + b"".join(d(i) for i in range(1, 200)) + d(5))
    h = src.take_health()
    assert h["seq_resets"] == 1 and h["duplicates"] == 0
    assert sink.readings[-1].frame_seq == 5  # accepted: the values are real


def test_data_before_hello_is_counted_never_guessed():
    src, sink = source()
    src.feed(b"\x00" + d(1) + d(2) + w(3, HELLO) + d(4))
    h = src.take_health()
    # the first two DATA came before any schema: counted, not delivered
    assert h["data_before_hello"] == 2 and h["samples_ok"] == 1
    assert [r.frame_seq for r in sink.readings] == [4]


def test_batched_data_become_one_reading_per_sample():
    src, sink = source()
    batch = Data((5.0, 50.0, 0.0, 5.5, 51.0, 1.0), 2, 100)
    src.feed(b"\x00" + w(0, HELLO) + w(1, batch, ts=9000))
    assert [(r.device_ms, r.values) for r in sink.readings] == [
        (9000, (5.0, 50.0, 0.0)),
        (9100, (5.5, 51.0, 1.0)),
    ]


def test_out_of_range_values_are_counted_and_passed_on():
    src, sink = source()
    src.feed(b"\x00" + w(0, HELLO) + w(1, Data((900.0, -5.0, 0.0))) + d(2))
    assert src.take_health()["out_of_range"] == 2
    assert sink.readings[0].values[0] == 900.0


def test_device_channels_map_by_name_and_unknown_ones_are_counted():
    src, sink = source()
    hello = Hello(
        "D",
        "f",
        (ChannelSpec("door", "bool", ChannelKind.BOOLEAN, 0, 1), ChannelSpec("co2", "ppm")),
    )
    src.feed(b"\x00" + w(0, hello) + w(1, Data((1.0, 400.0))))
    v = sink.readings[0].values
    assert math.isnan(v[0]) and math.isnan(v[1]) and v[2] == 1.0
    assert src.take_health()["unknown_channels"] == 1


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("hello", "reason"),
    [
        (Hello("D", "f", (ChannelSpec("temperature", "[degF]"),)), "'[degF]' on the device"),
        (Hello("D", "f", (ChannelSpec("t", "Cel"), ChannelSpec("t", "Cel"))), "repeats a channel"),
        (
            Hello("D", "f", (ChannelSpec("temperature", "Cel", ChannelKind.REAL, 5.0, -5.0),)),
            "invalid range",
        ),
        (
            Hello("D", "f", (ChannelSpec("temperature", "Cel", ChannelKind.REAL, math.nan, 1.0),)),
            "invalid range",
        ),
    ],
)
def test_a_hello_that_contradicts_the_config_quarantines_readings(hello, reason, caplog):
    src, sink = source()
    n = len(hello.channels)
    src.feed(b"\x00" + w(0, hello) + w(1, Data((1.0,) * n)) + w(2, Data((2.0,) * n)))
    assert sink.readings == []
    h = src.take_health()
    assert h["quarantined"] == 2
    assert any(reason in p for p in h["problems"]), h["problems"]
    assert any("ALERT" in r.message and reason in r.message for r in caplog.records)
    degraded = window_problems({"sources": [h]})
    assert degraded and degraded[0].startswith("source s0: readings quarantined")


def test_expected_channels_from_config_must_all_be_announced():
    src, sink = source(
        expect=(ExpectedChannel("temperature", "Cel"), ExpectedChannel("door", "bool"))
    )
    two = Hello("D", "f", Emulator.CHANNELS[:2])
    src.feed(b"\x00" + w(0, two) + w(1, Data((5.0, 50.0))))
    assert sink.readings == [] and src.take_health()["quarantined"] == 1


def test_a_matching_hello_after_a_bad_one_lifts_the_quarantine():
    src, sink = source()
    bad = Hello(
        "D",
        "f",
        (
            ChannelSpec("temperature", "K"),
            ChannelSpec("humidity", "%RH"),
            ChannelSpec("door", "bool"),
        ),
    )
    src.feed(b"\x00" + w(0, bad) + d(1) + b"\x00" + w(0, HELLO) + d(1))
    assert [r.frame_seq for r in sink.readings] == [1]
    assert src.take_health()["quarantined"] == 1


def test_config_naming_a_channel_the_policy_lacks_is_a_config_error():
    from agent.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"agent.yaml: sources\[0\].expect\[0\].name: channel 'co2'"
    ):
        source(expect=(ExpectedChannel("co2", "ppm"),))


def test_window_totals_sum_counters_over_sources():
    a = {"source": "a", "frames_ok": 3, "gaps": [[1, 2]], "crc_errors": 1}
    b = {"source": "b", "frames_ok": 4, "lines_ok": 2}
    assert sum_counters([a, b]) == {"crc_errors": 1, "frames_ok": 7, "lines_ok": 2}


# --------------------------------------------------------------------------- real ptys


def wait_for(pred, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return False


def test_reader_thread_over_a_real_pty_delivers_emulator_readings():
    with open_pty() as pair:
        src, sink = source(pair.slave_path)
        stop = threading.Event()
        t = threading.Thread(
            target=Emulator(rate_hz=100).run, args=(pair.master_fd, stop), daemon=True
        )
        t.start()
        src.start()
        try:
            assert wait_for(lambda: sink.count() >= 50)
        finally:
            src.stop()
            stop.set()
            t.join(3)
    h = src.take_health()
    assert h["crc_errors"] == 0 and h["samples_ok"] >= 50 and h["device"] == "EMU-0001"
    # A reading taken 1 s in must exist with plausible values
    assert all(3.0 < r.values[0] < 7.0 for r in sink.readings)


def test_unplug_is_an_offline_interval_and_a_gap_then_reading_resumes(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(emu_mod, "UNPLUG_ONLINE_S", 0.8)
    monkeypatch.setattr(emu_mod, "UNPLUG_OFFLINE_S", 0.6)
    link = str(tmp_path / "ttyEMU")
    emu = Emulator("unplug", rate_hz=50)
    stop = threading.Event()
    ready = threading.Event()
    result: dict[str, int] = {}
    t = threading.Thread(
        target=lambda: result.update(emu.serve_pty(link, stop, 3.4, lambda _: ready.set())),
        daemon=True,
    )
    t.start()
    assert ready.wait(5)
    src, sink = source(link)
    t0 = int(time.time() * 1000)
    src.start()
    try:
        t.join(10)
        assert result["unplugs"] >= 2
        wait_for(lambda: False, 0.3)
    finally:
        src.stop()
    h = src.take_health()
    # The time the port was gone is recorded as intervals, never hidden.
    assert len(h["offline"]) >= 2 and h["offline_ms"] >= 2 * 400
    for start, end in h["offline"]:
        assert t0 - 1000 <= start <= end
    # What the device sent meanwhile is a gap (the device kept counting).
    assert h["seq_gaps"] >= 2 and h["frames_missed"] >= 2 * 0.4 * 50
    # and reading resumed after each reopen
    assert sink.count() > 50 and h["reboots"] == 0


def test_reboot_scenario_counts_reboots_and_no_gaps(monkeypatch):
    monkeypatch.setattr(emu_mod, "REBOOT_PERIOD_MS", 500)
    with open_pty() as pair:
        src, sink = source(pair.slave_path)
        stop = threading.Event()
        t = threading.Thread(
            target=Emulator("reboot", rate_hz=50).run, args=(pair.master_fd, stop, 1.8), daemon=True
        )
        src.start()
        assert src.connected.wait(3)
        t.start()
        t.join(5)
        time.sleep(0.2)
        src.stop()
    h = src.take_health()
    assert h["reboots"] >= 2 and h["seq_gaps"] == 0 and h["seq_resets"] == 0
    assert sink.count() > 40


def test_slow_trickle_one_byte_per_write_loses_nothing():
    with open_pty() as pair:
        src, _ = source(pair.slave_path)
        stop = threading.Event()
        emu = Emulator("slow-trickle", rate_hz=20)
        t = threading.Thread(target=emu.run, args=(pair.master_fd, stop, 1.5), daemon=True)
        src.start()
        assert src.connected.wait(3)
        t.start()
        t.join(5)
        time.sleep(0.2)
        src.stop()
    h = src.take_health()
    assert h["crc_errors"] == h["framing_errors"] == h["seq_gaps"] == 0
    assert h["samples_ok"] >= 20


def test_a_port_that_is_not_there_is_retried_with_capped_exponential_backoff(caplog):
    import logging

    caplog.set_level(logging.WARNING, "edgegov.source")
    src, _ = source("/dev/edgegov-no-such-port")  # initial 0.05 s, cap 0.4 s
    src.start()
    time.sleep(1.6)
    src.stop()
    delays = [
        float(r.message.rsplit("retrying in ", 1)[1].split()[0])
        for r in caplog.records
        if "retrying in" in r.message
    ]
    assert delays[:5] == [0.05, 0.1, 0.2, 0.4, 0.4]
    h = src.take_health()
    assert h["reopen_failures"] == len(delays) and h["offline_ms"] >= 1500
    assert os.path.exists("/dev/edgegov-no-such-port") is False
