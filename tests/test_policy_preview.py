"""``edgegov policy preview``: a proposed rule change replayed over a real gateway's evidence.

The store comes from the real agent (evaluator, onnxruntime model, signer, SQLite store)
fed a recorded stream window by window, as ``tests/test_replay.py`` does. The oracle is
plain Python over the same raw readings: which episodes a threshold gives, by the rule
semantics written out (an episode starts at the first reading outside the limits and
ends at the first one back inside; a missing reading changes nothing).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.audit.evidence_db import open_db
from agent.cli import main
from agent.config import load_config
from agent.errors import Error
from agent.evidence.store_reader import StoreReader
from agent.governance.preview import Preview, gateway_stores, parse_since, preview
from agent.identity.keys import generate_key
from agent.pipeline.runner import Agent
from agent.pipeline.window import Window
from agent.policy import load_policy
from agent.sources.reading import Reading
from tests.test_replay import make_site, trust

WINDOW_MS = 5000
HZ = 10
WINDOWS = 24
T0 = 1_700_000_000_000
STORE = Path("state") / "evidence.sqlite"


def _temperature(w: int, k: int, rng: np.random.Generator) -> float:
    """A cold store at ~5 °C; a hard excursion (~9.5 °C, windows 6-7), a mild one
    (~7.4 °C, windows 14-15: over 7, under 8) and a slow ramp through 7 °C (19-20)."""
    x = 5.0 + rng.normal(0, 0.05)
    if w in (6, 7):
        x += 4.5
    elif w in (14, 15):
        x = 7.4 + rng.normal(0, 0.05)
    elif w in (19, 20):
        x = 6.8 + 0.5 * ((w - 19) * 50 + k) / 100 + rng.normal(0, 0.05)
    return float(np.nan) if rng.random() < 0.01 else x


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[int, float]]]:
    """A real signed store of 24 windows, and the temperature readings fed (the oracle's)."""
    tmp = tmp_path_factory.mktemp("site")
    agent = Agent(load_config(make_site(tmp)))
    rng = np.random.default_rng(16)
    fed: list[tuple[int, float]] = []
    try:
        agent.publisher.start(agent.store.pending())
        for w in range(WINDOWS):
            start = T0 + w * WINDOW_MS
            window = Window(start, start + WINDOW_MS, 3)
            for k in range(WINDOW_MS * HZ // 1000):
                t_ms = start + k * 1000 // HZ
                temp = _temperature(w, k, rng)
                fed.append((t_ms, temp))
                window.add(Reading(t_ms, t_ms, 0, k, (temp, 50.0 + rng.normal(0, 0.4), 0.0)))
            agent._close(window)
    finally:
        agent.store.close()
    return tmp, fed


def _oracle(fed: list[tuple[int, float]], high: float) -> dict[tuple[int, int | None], float]:
    """Episodes of ``2.0 <= temperature <= high``: (start, end or None) -> peak (max)."""
    out: dict[tuple[int, int | None], float] = {}
    start: int | None = None
    peak = -math.inf
    for t, x in fed:
        if math.isnan(x):
            continue  # not evaluable: changes no state
        bad = not 2.0 <= x <= high
        if bad and start is None:
            start, peak = t, x
        elif bad:
            peak = max(peak, x)
        elif start is not None:
            out[start, t] = peak
            start = None
    if start is not None:
        out[start, None] = peak
    return out


def _variant(site: Path, name: str, old: str, new: str, count: int = 1) -> Path:
    """The site's policy with ``old`` replaced by ``new`` (``count`` times), beside it."""
    text = (site / "policies" / "cold-chain.yaml").read_text()
    assert text.count(old) == count, old
    out = site / "policies" / name
    out.write_text(text.replace(old, new).replace("version: 1", "version: 2", 1))
    return out


def _tightened(site: Path) -> Path:
    """temp-2-8 (no ``for``) from <= 8.0 to <= 7.0; the other keep-cold rules unchanged."""
    old = (
        "id: temp-2-8\n    goal: keep-cold\n    severity: critical\n"
        "    condition: temperature >= 2.0 && temperature <= 8.0"
    )
    return _variant(site, "tightened.yaml", old, old.replace("<= 8.0", "<= 7.0"))


def _run(site: Path, proposed: Path, since: str | None = None) -> Preview:
    current = load_policy(site / "policies" / "cold-chain.yaml")
    return preview([site / STORE], current, load_policy(proposed), trust(site), since)


def _goal(p: Preview, gid: str) -> dict[str, Any]:
    return next(g for g in p.goals if g["goal"] == gid)


def test_tightening_a_threshold_adds_exactly_the_episodes_the_oracle_predicts(
    site: tuple[Path, list[tuple[int, float]]],
) -> None:
    tmp, fed = site
    p = _run(tmp, _tightened(tmp))
    was, now = _oracle(fed, 8.0), _oracle(fed, 7.0)
    new = {k: v for k, v in now.items() if k not in was}
    vanished = {k: v for k, v in was.items() if k not in now}
    assert len(new) >= 3 and len(was) >= 1  # the mild excursion and the ramp's crossings
    keep_cold = _goal(p, "keep-cold")
    (dev,) = keep_cold["devices"]
    got_new = {(e["start_ms"], e["end_ms"]): e["peak"] for e in dev["new"]}
    got_vanished = {(e["start_ms"], e["end_ms"]): e["peak"] for e in dev["vanished"]}
    assert {e["rule"] for e in dev["new"] + dev["vanished"]} == {"temp-2-8"}
    assert got_new == new
    assert got_vanished == vanished
    assert keep_cold["new"] == len(new) and keep_cold["vanished"] == len(vanished)
    assert keep_cold["status"] == ["violated", "violated"]  # the hard excursion, both times
    assert p.changed
    # the other goals read the same evidence the same way
    for gid in ("control-humidity", "door-discipline"):
        g = _goal(p, gid)
        assert g["new"] == g["vanished"] == 0 and g["status"][0] == g["status"][1]
    (store,) = p.stores
    assert (store.windows, store.readings) == (WINDOWS, len(fed))
    assert (store.first_seq, store.last_seq, store.replayed_from_seq) == (0, WINDOWS - 1, 0)


def test_the_unchanged_policy_previews_no_difference(
    site: tuple[Path, list[tuple[int, float]]],
) -> None:
    tmp, _fed = site
    p = _run(tmp, tmp / "policies" / "cold-chain.yaml")
    assert not p.changed
    for g in p.goals:
        assert g["new"] == g["vanished"] == 0
        assert g["status"][0] == g["status"][1]
        assert g["not_evaluable"][0] == g["not_evaluable"][1]
    assert "no difference" in p.text()


def test_a_goal_status_change_and_a_since_window(
    site: tuple[Path, list[tuple[int, float]]],
) -> None:
    tmp, _fed = site
    stricter = _variant(
        tmp, "humid.yaml", "condition: humidity <= 65.0", "condition: humidity <= 50.0"
    )
    p = _run(tmp, stricter, since="30s")
    (store,) = p.stores
    assert store.windows == 6 and store.first_seq == WINDOWS - 6  # the last 30 s only
    assert store.replayed_from_seq == 0  # the state is still rebuilt from the start
    g = _goal(p, "control-humidity")
    assert g["status"][0] != "violated" and g["status"][1] == "violated"
    assert g["new"] > 0
    text = p.text()
    first_lines = text.splitlines()[1:4]
    assert [ln.split(":")[0] for ln in first_lines] == [
        "goal keep-cold",
        "goal control-humidity",
        "goal door-discipline",
    ]
    assert f"goal control-humidity: {g['status'][0]} -> violated;" in text


def test_readings_masked_by_a_narrower_range_are_reported_not_evaluable(
    site: tuple[Path, list[tuple[int, float]]],
) -> None:
    tmp, fed = site
    narrow = _variant(tmp, "narrow.yaml", "range: [-40, 85]", "range: [-40, 7]")
    p = _run(tmp, narrow)
    (dev,) = _goal(p, "keep-cold")["devices"]
    old_n, new_n = dev["not_evaluable"]["temp-2-8"]
    # nothing is violated any more (no reading under 2 °C), so every missing reading and
    # every one above 7 °C (now outside the channel's range) is not evaluable
    assert new_n == sum(1 for _t, x in fed if math.isnan(x) or x > 7.0)
    assert old_n < new_n
    assert {
        (e["start_ms"], e["end_ms"]) for e in dev["vanished"] if e["rule"] == "temp-2-8"
    } == set(_oracle(fed, 8.0))


def test_cli_prints_the_digest_of_the_document_it_writes(
    site: tuple[Path, list[tuple[int, float]]], capsys: pytest.CaptureFixture[str]
) -> None:
    tmp, _fed = site
    out = tmp / "preview.json"
    args = [
        "policy", "preview", str(_tightened(tmp)), "--current",
        str(tmp / "policies" / "cold-chain.yaml"), "--against", str(tmp / "state"),
        "--key", str(tmp / "keys" / "device.pub.pem"), "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    digest = re.search(r"preview sha256 ([0-9a-f]{64})", text)
    assert digest and digest[1] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert text.splitlines()[1].startswith("goal keep-cold: violated -> violated; ")
    assert "+ new      temp-2-8: " in text
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc.pop("sha256") == digest[1]  # deterministic: the same run, the same digest
    assert doc == json.loads(out.read_bytes())


def test_a_store_signed_by_an_unknown_key_is_rejected_naming_store_and_kid(
    site: tuple[Path, list[tuple[int, float]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp, _fed = site
    generate_key(tmp_path / "other.key")
    code = main([
        "policy", "preview", str(tmp / "policies" / "cold-chain.yaml"), "--current",
        str(tmp / "policies" / "cold-chain.yaml"), "--against", str(tmp / STORE),
        "--key", str(tmp_path / "other.pub.pem"),
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1  # as `audit replay`: evidence that does not verify is a finding
    assert re.search(
        rf"edgegov: error: {re.escape(str(tmp / STORE))}: seq \d+: signed by kid [0-9a-f]+, "
        "which is not a trusted key",
        err,
    ), err
    code = main([
        "policy", "preview", str(tmp / "policies" / "cold-chain.yaml"), "--current",
        str(tmp / "policies" / "cold-chain.yaml"), "--against", str(tmp / STORE),
    ])  # fmt: skip
    assert code == 2 and "no trust anchors" in capsys.readouterr().err  # fails closed


def test_a_collector_store_is_refused_saying_why_and_what_to_give(
    site: tuple[Path, list[tuple[int, float]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp, _fed = site
    reader = StoreReader(tmp / STORE)
    row = reader.window(0)
    reader.close()
    assert row is not None
    db = open_db(str(tmp_path / "collected.sqlite"))
    db.put("gw-replay", 0, hashlib.sha256(row.cose).digest(), row.cose, "test")
    db.close()
    for against in (str(tmp_path / "collected.sqlite"), "postgresql://auditor@db.example/fleet"):
        code = main([
            "policy", "preview", str(tmp / "policies" / "cold-chain.yaml"), "--current",
            str(tmp / "policies" / "cold-chain.yaml"), "--against", against,
            "--key", str(tmp / "keys" / "device.pub.pem"),
        ])  # fmt: skip
        err = capsys.readouterr().err
        assert code == 2
        assert f"{against}: a collector's store holds the attestations only, not the raw " in err
        assert "state_dir/evidence.sqlite" in err
    with pytest.raises(Error, match="no evidence store"):
        gateway_stores(str(tmp_path / "empty-dir-"))


def test_a_proposal_reading_other_channels_is_refused_naming_the_channel(
    site: tuple[Path, list[tuple[int, float]]],
) -> None:
    tmp, _fed = site
    text = (tmp / "policies" / "cold-chain.yaml").read_text()
    renamed = tmp / "policies" / "renamed.yaml"
    renamed.write_text(text.replace("humidity", "rh"))
    with pytest.raises(
        Error, match=r"renamed.yaml: declares channel 2 as 'rh', but column 2 of the stored "
        r"readings is 'humidity' \(the evidence holds temperature, humidity, door"
    ):  # fmt: skip
        _run(tmp, renamed)


def test_since_takes_durations_and_refuses_others() -> None:
    assert parse_since("30d") == 30 * 86_400_000
    assert parse_since("12h") == 12 * 3_600_000
    assert parse_since("90m") == 90 * 60_000
    for bad in ("30", "0d", "-1h", "1y", "d"):
        with pytest.raises(Error, match="give a positive duration"):
            parse_since(bad)


def test_the_signed_release_records_the_preview_digest_an_auditor_can_check(
    site: tuple[Path, list[tuple[int, float]]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tuf.api.metadata import Metadata, Targets

    from agent.fleet.repository import FleetRepository

    tmp, _fed = site
    proposed = _tightened(tmp)
    out = tmp_path / "preview.json"
    common = [
        "--current", str(tmp / "policies" / "cold-chain.yaml"), "--against", str(tmp / STORE),
        "--key", str(tmp / "keys" / "device.pub.pem"),
    ]  # fmt: skip
    assert main(["policy", "preview", str(proposed), *common, "--out", str(out)]) == 0
    repo = tmp_path / "repo"
    assert main(["fleet", "init", "--repo", str(repo), "--fleet", "site-a"]) == 0
    add = ["fleet", "add", "--repo", str(repo), "policies/cold-chain.yaml", str(proposed)]
    assert main([*add, "--preview", str(out)]) == 0
    assert main(["fleet", "sign", "--repo", str(repo)]) == 0
    capsys.readouterr()
    # what a gateway (and an auditor) verifies: signatures, thresholds, hashes
    msgs = FleetRepository(repo).verified_messages()
    newest = max(
        (t for t, _ in msgs if re.search(r"/metadata/\d+\.targets\.json$", t)),
        key=lambda t: int(t.rsplit("/", 1)[1].split(".")[0]),
    )
    md = Metadata[Targets].from_bytes(dict(msgs)[newest])
    custom = md.signed.targets["policies/cold-chain.yaml"].custom["edgegov"]
    assert custom["kind"] == "policy"
    assert custom["preview"]["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest()
    assert custom["preview"]["file"] == "preview.json"
    current = load_policy(tmp / "policies" / "cold-chain.yaml")
    assert custom["preview"]["current"]["sha256"] == current.digest
    # a preview of another bundle (here: of the policy in force) is not recorded
    other = tmp_path / "other.json"
    assert main(["policy", "preview", str(tmp / "policies" / "cold-chain.yaml"), *common,
                 "--out", str(other)]) == 0  # fmt: skip
    capsys.readouterr()
    assert main([*add, "--preview", str(other)]) == 2
    err = capsys.readouterr().err
    assert f"previews the policy with sha256 {current.digest}, not {proposed}" in err


def test_windows_whose_readings_were_pruned_are_refused_naming_the_seq(
    site: tuple[Path, list[tuple[int, float]]], tmp_path: Path
) -> None:
    import shutil
    import sqlite3

    tmp, _fed = site
    copy = tmp_path / "evidence.sqlite"
    shutil.copyfile(tmp / STORE, copy)
    db = sqlite3.connect(copy)
    db.execute("DELETE FROM window_readings WHERE seq = 2")  # what retention does
    db.commit()
    db.close()
    current = load_policy(tmp / "policies" / "cold-chain.yaml")
    with pytest.raises(Error, match=r"evidence.sqlite: seq 2 keeps 0 of its 50 readings") as e:
        preview([copy], current, load_policy(_tightened(tmp)), trust(tmp), "30s")
    assert type(e.value) is Error and e.value.exit_code == 2  # an input to change, not a finding
