"""Data completeness is defined once (agent/audit/completeness.py): readings received of
those expected, per source kind; every rendering reads it from there."""

from __future__ import annotations

import pytest

from agent.audit.completeness import WindowSources, measure

FRAMED = {"source": "fridge", "protocol": "framed", "frames_ok": 0, "frames_missed": 0}


def _framed(ok: int, missed: int = 0, unrecorded: int = 0, offline: int = 0) -> dict:
    rec = {**FRAMED, "frames_ok": ok, "frames_missed": missed, "offline_ms": offline}
    if unrecorded:
        rec["frames_unrecorded"] = unrecorded
    # counters that are not about what arrived do not count either way
    return {**rec, "crc_errors": 7, "bytes_discarded": 900, "resyncs": 3}


def _text(ok: int, errors: int = 0, offline: int = 0, name: str = "probe") -> dict:
    return {"source": name, "protocol": "text", "lines_ok": ok, "parse_errors": errors,
            "bad_values": 5, "offline_ms": offline}  # fmt: skip


def _modbus(ok: int, timeouts: int = 0, offline: int = 0) -> dict:
    return {"source": "plc", "protocol": "modbus", "polls_ok": ok, "poll_timeouts": timeouts,
            "poll_errors": 0, "offline_ms": offline}  # fmt: skip


def test_completeness_is_readings_received_of_those_expected_per_source_kind():
    w = 1000  # one-second windows

    # framed: the device's frame counter says exactly what was sent and not recorded --
    # lost on the line / while the port was away (frames_missed), or sent while the
    # agent was down (frames_unrecorded); byte and CRC counters are not frames lost.
    per, total = measure([
        WindowSources(w, [_framed(97, missed=3)], {}),
        WindowSources(w, [_framed(80, unrecorded=20)], {"fridge": 4000}),
    ])  # fmt: skip
    assert [c.ratio for c in per] == [pytest.approx(0.97), pytest.approx(0.80)]
    assert total.received == 177 and total.expected == 200 and total.ratio == pytest.approx(0.885)

    # text: lines that did not parse are lost; time offline is priced at the rate the
    # source delivered while online over the whole period (here 20 lines/s).
    per, total = measure([
        WindowSources(w, [_text(15, errors=5)], {}),  # 20 attempted in 1 s online
        WindowSources(w, [_text(10, offline=500)], {}),  # 10 in 0.5 s: 10 more expected
        WindowSources(w, [_text(20)], {"probe": 2000}),  # a restart: 2 s without data
    ])  # fmt: skip
    rate = (20 + 10 + 20) / 2500  # attempted per ms online
    assert per[0].ratio == pytest.approx(15 / 20)
    assert per[1].expected == pytest.approx(10 + rate * 500) and per[1].ratio == pytest.approx(
        10 / (10 + rate * 500)
    )
    assert per[2].expected == pytest.approx(20 + rate * 2000)
    assert total.expected == pytest.approx(50 + rate * 2500) and total.received == 45

    # modbus: polls answered of polls attempted, and the same pricing of dark time
    per, _ = measure([WindowSources(w, [_modbus(8, timeouts=2)], {})])
    assert per[0].ratio == pytest.approx(0.8)

    # a sensor that is not there (offline all the time, never a reading) is 0 %, and a
    # dead sensor beside a good one makes the window 50 %, not hidden by the other's traffic
    per, total = measure([WindowSources(w, [_framed(50), _text(0, offline=w)], {})] * 3)
    assert [c.ratio for c in per] == [0.5] * 3 and total.ratio == 0.5
    assert total.sources["probe"] == (0, 0.0, 0.0) and total.sources["fridge"][2] == 1.0
    # nothing expected and nothing dark (a quiet Modbus window): undefined, not 0 or 100
    per, total = measure([WindowSources(w, [_modbus(0)], {})])
    assert per[0].ratio is None and total.ratio is None
    # old evidence without per-source records: the window totals, by their counters
    per, _ = measure([WindowSources(w, [{"frames_ok": 9, "frames_missed": 1}], {})])
    assert per[0].ratio == pytest.approx(0.9)
