"""Evidence export bundles (issue 16, selective disclosure): ``edgegov audit export`` then
``edgegov audit verify BUNDLE``, through real signed stores, real statements and the CLI."""

from __future__ import annotations

import json
import shutil
import sqlite3
import struct
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import cbor2
import pytest
import yaml

from agent.audit.bundle import MANIFEST
from agent.evidence.claims import ConfigInForce
from agent.evidence.leaves import decode_record
from agent.evidence.store_reader import stored_records
from agent.governance.statements import CalibrationCertificate, Explanation, sign_statement
from agent.identity.keys import generate_key, public_key_path
from agent.policy import load_policy
from tests.conftest import ROOT
from tests.evidence_util import make_stream, write

POLICY = ROOT / "configs" / "policies" / "cold-chain.yaml"
T0 = 1_780_000_000_000  # window w of each device: [T0 + 1000 w, T0 + 1000 (w + 1))
DEVIATION = f"gw-1/temp-2-8/{T0 + 2000}"  # window seq 2 of gw-1 lists it


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).isoformat().replace("+00:00", "Z")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three gateways (gw-1, gw-2 at site-a; gw-3 at site-b), six windows each under the
    cold-chain policy, window 2 an episode of temp-2-8; a trusted operator's explanation,
    an untrusted one, a lab's calibration certificate; and one export bundle of site-a,
    windows 1..4, reading gw-1/10 and the deviation's readings."""
    d = tmp_path_factory.mktemp("site")
    p = load_policy(POLICY)
    config = ConfigInForce(p.id, p.version, p.digest, {m.id: m.sha256 for m in p.models})
    msgs: list[bytes] = []
    keys = []
    for dev in ("gw-1", "gw-2", "gw-3"):
        signer = generate_key(d / f"{dev}.key")
        msgs += make_stream(
            d / f"{dev}.sqlite", signer, dev, 6, start_ms=T0, config=config, rule="temp-2-8",
            episode=True,
        )  # fmt: skip
        keys.append({"key": f"{dev}.pub.pem", "device": dev})
    att = write(d / "attestations", msgs)
    alice, mallory, lab = (generate_key(d / f"{n}.key") for n in ("alice", "mallory", "lab"))
    st = d / "statements"
    st.mkdir()
    ex = Explanation(
        "gw-1", "temp-2-8", T0 + 2000, "door left open at loading", "crew retrained",
        "released", "", "Alice Operator", "operator", T0 + 9000,
    )  # fmt: skip
    (st / "gw-1.explanation").write_bytes(sign_statement(ex, alice))
    cal = CalibrationCertificate(
        "CAL-1", "gw-1", "temperature", "PT100-1", T0 - 86_400_000, T0 + 86_400_000, "degC",
        0.1, ((0.0, 0.02), (5.0, 5.03)), "ACME Lab", T0 - 86_400_000,
    )  # fmt: skip
    (st / "gw-1.calibration").write_bytes(sign_statement(cal, lab))
    (d / "mallory.explanation").write_bytes(
        sign_statement(
            Explanation(*[*ex.__dict__.values()][:7], "Mallory", "operator", T0 + 9000), mallory
        )
    )
    trust = {
        "keys": keys,
        "people": [
            {
                "key": "alice.pub.pem",
                "name": "Alice Operator",
                "roles": ["operator"],
                "sites": ["site-a"],
            },
        ],
        "labs": [{"key": "lab.pub.pem", "name": "ACME Lab"}],
        "sites": {"site-a": ["gw-1", "gw-2"], "site-b": ["gw-3"]},
    }
    (d / "trust.yaml").write_text(yaml.safe_dump(trust))
    assert public_key_path(d / "alice.key").is_file()
    r = cli(
        "audit", "export", "--attestations", str(att), "--readings-from", str(d / "gw-1.sqlite"),
        "--statements", str(st), "--site", "site-a", "--trust", str(d / "trust.yaml"),
        "--from", _iso(T0 + 1000), "--until", _iso(T0 + 5000), "--reading-index", "gw-1/10",
        "--readings-of-deviation", DEVIATION, "--policy", str(POLICY), "--exporter", "Ann Auditor",
        "--out", str(d / "bundle"),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return {"dir": d, "bundle": d / "bundle", "trust": d / "trust.yaml"}


def verify(bundle: Path, trust: Path, *more: str) -> subprocess.CompletedProcess[str]:
    return cli("audit", "verify", str(bundle), "--trust", str(trust), *more)


def manifest(bundle: Path) -> dict:
    return json.loads((bundle / MANIFEST).read_text())


def copy(site: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(site["bundle"], tmp_path / "bundle"))


def rehash(bundle: Path) -> None:
    """Update the manifest's hashes, as someone altering the bundle would."""
    from agent.audit.bundle import file_entry

    m = manifest(bundle)
    m["files"] = [file_entry(bundle, e["path"]) for e in m["files"]]
    (bundle / MANIFEST).write_text(json.dumps(m))


def test_a_bundle_of_one_site_and_period_verifies_offline_and_says_what_it_discloses(site):
    r = verify(site["bundle"], site["trust"], "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert out["evidence"] == "intact" and out["findings"] == []
    (dis,) = out["disclosure"]
    assert dis["site"] == "site-a" and dis["exported_by"] == "Ann Auditor"
    by_dev = {d["device"]: d for d in dis["devices"]}
    # windows 1..4 of each device: 8 + 9 + 7 + 8 readings; gw-1 discloses reading 10
    # (window 1) and the 9 readings of window 2 (the deviation's), gw-2 none
    assert by_dev["gw-1"] | {"origin": None} == {
        "device": "gw-1", "origin": None, "first_seq": 1, "last_seq": 4,
        "readings_in_windows": 32, "log_size": 39, "readings_disclosed": 10,
        "windows": {"1": 1, "2": 9},
    }  # fmt: skip
    assert by_dev["gw-2"]["readings_disclosed"] == 0 and by_dev["gw-2"]["first_seq"] == 1
    gov = out["governance"]
    assert gov["statements"] == 2 and gov["statements_refused"] == 0
    status = {d["id"]: d["status"] for d in gov["deviations"]["items"]}
    assert status == {DEVIATION: "explained", f"gw-2/temp-2-8/{T0 + 2000}": "unexplained"}
    text = verify(site["bundle"], site["trust"]).stdout
    assert "evidence:   INTACT" in text
    assert "gw-1: windows seq 1..4; 10 of 32 readings disclosed (log size 39)" in text


def test_the_period_and_site_pick_the_devices_and_windows(site):
    m = manifest(site["bundle"])
    logs = {lg["device"]: (lg["first_seq"], lg["last_seq"]) for lg in m["scope"]["logs"]}
    assert logs == {"gw-1": (1, 4), "gw-2": (1, 4)}  # gw-3 is at site-b; windows 0, 5 outside
    files = sorted(e["path"] for e in m["files"])
    assert [f for f in files if f.startswith("attestations/gw-1/")] == [
        f"attestations/gw-1/{s:08d}.cose" for s in range(1, 5)
    ]
    assert not any("gw-3" in f for f in files)
    kinds = sorted(s["kind"] for s in m["statements"])
    assert kinds == ["calibration", "explanation"]
    (pol,) = m["policies"]
    assert pol["digest"] == load_policy(POLICY).digest and pol["file"] == "policy/cold-chain.yaml"
    assert set(pol["models"]) == {"excursion-risk", "drift-anomaly"}
    why = {r["index"]: r["why"] for r in m["readings"]}
    assert sorted(why) == [10, *range(15, 24)]
    assert why[10] == ["--reading-index gw-1/10"] and why[15][0].startswith(
        f"deviation {DEVIATION}"
    )


def test_readings_not_chosen_are_not_in_the_bundle(site):
    blob = b"".join(f.read_bytes() for f in sorted(site["bundle"].rglob("*")) if f.is_file())
    db = sqlite3.connect(site["dir"] / "gw-1.sqlite")
    records = stored_records(db)
    db.close()
    chosen = {10, *range(15, 24)}
    assert len(records) == 48
    shown = {decode_record(records[i]).values[0] for i in chosen}
    hidden = 0
    for i, rec in enumerate(records):
        r = decode_record(rec)
        assert (rec in blob, r.salt in blob) == (i in chosen, i in chosen), i
        if r.values[0] not in shown:  # a temperature no chosen reading has
            assert struct.pack(">d", r.values[0]) not in blob, i
            hidden += 1
    assert hidden > 20


def test_an_altered_reading_is_a_precise_finding(site, tmp_path):
    b = copy(site, tmp_path)
    f = b / "readings" / "gw-1" / "0000000017.proof"
    proof = cbor2.loads(f.read_bytes())
    rec = bytearray(proof[1])
    rec[-16:-8] = struct.pack(">d", 4.0)  # the temperature, now in range
    proof[1] = bytes(rec)
    f.write_bytes(cbor2.dumps(proof))
    rehash(b)  # the manifest agrees: only the proof can tell
    r = verify(b, site["trust"])
    assert r.returncode == 1
    (line,) = [x for x in r.stdout.splitlines() if "[READING]" in x]
    assert "gw-1 seq 2" in line and "readings/gw-1/0000000017.proof: reading 17 of gw-1" in line
    assert "inclusion proof does not verify" in line
    assert "FINDINGS (1)" in r.stdout


def test_a_reading_altered_without_the_manifest_is_two_findings(site, tmp_path):
    b = copy(site, tmp_path)
    f = b / "readings" / "gw-1" / "0000000010.proof"
    data = bytearray(f.read_bytes())
    data[30] ^= 1  # inside the record
    f.write_bytes(bytes(data))
    out = json.loads(verify(b, site["trust"], "--json").stdout)
    assert sorted(x["kind"] for x in out["findings"]) == ["BUNDLE_FILE", "READING"]


def test_an_attestation_removed_from_the_middle_is_a_gap_but_a_mid_stream_start_is_not(
    site, tmp_path
):
    b = copy(site, tmp_path)
    (b / "attestations" / "gw-2" / "00000003.cose").unlink()
    out = json.loads(verify(b, site["trust"], "--json").stdout)
    kinds = sorted((x["kind"], x["device"], x["seq"]) for x in out["findings"])
    assert kinds == [("BUNDLE_FILE", str(b), None), ("CHAIN_GAP", "gw-2", 4)]
    assert not any(x["kind"] == "CHAIN_START" for x in out["findings"])


def test_the_first_attestation_removed_is_a_finding_even_if_the_manifest_is_rewritten(
    site, tmp_path
):
    b = copy(site, tmp_path)
    (b / "attestations" / "gw-2" / "00000001.cose").unlink()
    m = manifest(b)
    m["files"] = [e for e in m["files"] if e["path"] != "attestations/gw-2/00000001.cose"]
    (b / MANIFEST).write_text(json.dumps(m))
    out = json.loads(verify(b, site["trust"], "--json").stdout)
    kinds = sorted((x["kind"], x["device"], x["seq"]) for x in out["findings"])
    assert kinds == [("BUNDLE_SCOPE", "gw-2", 1), ("CHAIN_START", "gw-2", 2)]


def test_a_manifest_hash_mismatch_is_a_finding(site, tmp_path):
    b = copy(site, tmp_path)
    m = manifest(b)
    (e,) = [e for e in m["files"] if e["path"] == "policy/cold-chain.yaml"]
    e["sha256"] = "00" * 32
    (b / MANIFEST).write_text(json.dumps(m))
    r = verify(b, site["trust"])
    assert r.returncode == 1
    assert "[BUNDLE_FILE]" in r.stdout and "policy/cold-chain.yaml: SHA-256" in r.stdout
    assert "does not match the manifest's 0000000000000000..." in r.stdout


def test_an_unlisted_file_is_a_finding(site, tmp_path):
    b = copy(site, tmp_path)
    shutil.copy(site["dir"] / "gw-1.sqlite", b / "readings" / "gw-1" / "all.sqlite")
    r = verify(b, site["trust"])
    assert r.returncode == 1
    assert "readings/gw-1/all.sqlite: in the bundle but not listed in the manifest" in r.stdout


def test_an_explanation_by_an_untrusted_signer_is_a_finding(site, tmp_path):
    b = copy(site, tmp_path)
    shutil.copy(
        site["dir"] / "mallory.explanation", b / "statements" / "explanation" / "m.explanation"
    )
    rehash(b)
    m = manifest(b)
    from agent.audit.bundle import file_entry

    m["files"].append(file_entry(b, "statements/explanation/m.explanation"))
    (b / MANIFEST).write_text(json.dumps(m))
    out = json.loads(verify(b, site["trust"], "--json").stdout)
    (f,) = out["findings"]
    assert f["kind"] == "statement" and f["file"].endswith("m.explanation")
    assert "not the key of a person" in f["detail"]


def test_score_and_report_read_a_bundle_too(site, tmp_path):
    r = cli("audit", "score", str(site["bundle"]), "--trust", str(site["trust"]), "--json")
    assert r.returncode == 0 and {s["device"] for s in json.loads(r.stdout)["scores"]} == {
        "gw-1",
        "gw-2",
    }
    html = tmp_path / "r.html"
    args = ["--trust", str(site["trust"]), "--html", str(html)]
    assert cli("audit", "report", str(site["bundle"]), *args).returncode == 0
    # The report's disclosure section: every value in it is the JSON's (as for the rest)
    from tests.test_report_html import _check, _Scan

    doc = json.loads(cli("audit", "verify", str(site["bundle"]), "--trust", str(site["trust"]),
                         "--json").stdout)  # fmt: skip
    scan = _Scan()
    scan.feed(html.read_text())
    shown = [v for v in scan.values if v[0].startswith("/disclosure/")]
    assert {v[0] for v in shown} >= {"/disclosure/0/devices/0/readings_disclosed",
                                     "/disclosure/0/devices/1/log_size"}  # fmt: skip
    for pointer, f, text in shown:
        _check(doc, pointer, f, text)


def test_a_reading_outside_the_period_is_refused_at_export(site, tmp_path):
    d = site["dir"]
    r = cli(
        "audit", "export", "--attestations", str(d / "gw-1.sqlite"), "--device", "gw-1",
        "--trust", str(d / "trust.yaml"), "--from", _iso(T0 + 1000), "--reading-index", "3",
        "--out", str(tmp_path / "b"),
    )  # fmt: skip
    assert r.returncode == 2
    assert "reading 3 of gw-1 is in window seq 0, which is not exported" in r.stderr
    assert not (tmp_path / "b").exists()
