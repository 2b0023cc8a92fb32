"""`audit report --html`: self-contained, renders in a real headless Chromium, and every
number in it is the number `audit verify --json` gives for the same evidence."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from agent.identity.keys import generate_key
from tests.evidence_util import make_stream, write
from tests.test_agent_e2e import Device, make_site, run_agent


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "Chromium is not installed; run the README's test command (make test), which "
        "installs Debian's chromium package with apt-get"
    )


def _run_chromium(tmp_path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'chromium-profile'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_html_report_is_self_contained_and_renders_in_chromium(tmp_path, signer, run_cli):
    other = generate_key(tmp_path / "o.key")
    a = make_stream(tmp_path / "a.sqlite", signer, device="gw-1", windows=8)
    b = make_stream(tmp_path / "b.sqlite", other, device="gw-2", windows=4)
    files = write(tmp_path / "f", a[:5] + a[6:] + b)  # one missing: a finding in the report
    (tmp_path / "a.pub").write_bytes(signer.public.pem())
    (tmp_path / "b.pub").write_bytes(other.public.pem())
    out = tmp_path / "report.html"
    r = run_cli("audit", "report", str(files), "--key", str(tmp_path / "a.pub"),
                "--key", str(tmp_path / "b.pub"), "--html", str(out))  # fmt: skip
    assert r.returncode == 1, r.stderr  # the gap is a finding
    doc = out.read_text()
    # Self-contained: no scripts, no external resources of any kind.
    assert "<script" not in doc and not re.search(r"""(src|href)=["']?(https?:)?//""", doc)
    assert doc.count("<svg") == 4  # risk and completeness, per device
    assert "CHAIN_GAP" in doc and "temp-range" in doc and "violated" in doc
    assert "Violation episodes" in doc and "Configuration changes" in doc
    # Findings come first, before the verdicts and the devices.
    assert doc.index("<h2>Findings") < doc.index("<h2>Evidence") < doc.index("<h2>Device")

    dom = _run_chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Device <span" in dom.stdout and "<polyline" in dom.stdout
    shot = tmp_path / "report.png"  # kept in the test tmp dir for a person to look at
    r = _run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", out.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 20_000  # a real, non-blank page
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Uncaught" not in r.stderr and "ERR_FILE_NOT_FOUND" not in r.stderr


# -- every number in the report is the JSON's ----------------------------------------


class _Scan(HTMLParser):
    """Values (``data-k`` elements) with their visible text; chart bars; and any text
    outside them (which must hold no number at all)."""

    VOID = frozenset({"br", "meta", "link", "img", "hr", "input", "col", "wbr"})
    SKIP = frozenset({"style", "svg", "title"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, dict[str, str], list[str]]] = []
        self.values: list[tuple[str, str, str]] = []
        self.bars: list[dict[str, str]] = []
        self.loose: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "rect" and "data-k" in a:
            self.bars.append(a)
        if tag not in self.VOID:
            self.stack.append((tag, a, []))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "rect" and "data-k" in a:
            self.bars.append(a)

    def handle_endtag(self, tag: str) -> None:
        while self.stack:
            t, a, text = self.stack.pop()
            if "data-k" in a and t != "rect":
                self.values.append((a["data-k"], a["data-f"], "".join(text)))
            if t == tag:
                break

    def handle_data(self, data: str) -> None:
        for _, a, text in reversed(self.stack):
            if "data-k" in a:
                text.append(data)
                return
        if any(t in self.SKIP or "meta" in a.get("class", "") for t, a, _ in self.stack):
            return
        self.loose.append(data)


def _resolve(doc: Any, pointer: str) -> Any:
    """RFC 6901."""
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _ms(ts: str) -> int:
    t = datetime.strptime(ts, "%Y-%m-%d %H:%M:%S.%f UTC").replace(tzinfo=timezone.utc)
    return round(t.timestamp() * 1000)


def _dur_ms(text: str) -> int:
    m = re.fullmatch(r"(\d+)\.(\d{3}) s", text)
    if m:
        return int(m[1]) * 1000 + int(m[2])
    m = re.fullmatch(r"(?:(\d+)h )?(\d+)m (\d+)\.(\d{3})s", text)
    assert m, text
    return ((int(m[1] or 0) * 60 + int(m[2])) * 60 + int(m[3])) * 1000 + int(m[4])


def _check(doc: dict, pointer: str, f: str, text: str) -> None:
    """The visible ``text`` is the JSON value at ``pointer``, written as ``f``."""
    if f == "key":
        parent, key = pointer.rsplit("/", 1)
        key = key.replace("~1", "/").replace("~0", "~")
        assert text == key and key in _resolve(doc, parent), (pointer, text)
        return
    value = _resolve(doc, pointer)
    where = f"{pointer} = {value!r} shown as {text!r}"
    if f == "count":
        assert int(text) == len(value), where
    elif value is None:
        assert text in ("-", "n/a"), where
    elif f == "int":
        assert int(text) == value, where
    elif f == "num":
        assert abs(float(text) - value) <= 0.0005, where
    elif f == "pct":
        assert abs(float(text.removesuffix(" %")) / 100 - value) <= 0.0005, where
    elif f == "ts":
        assert _ms(text) == value, where
    elif f == "dur":
        assert _dur_ms(text) == value, where
    else:
        assert text == str(value), where


def _agent_evidence(tmp: Path) -> tuple[Path, Path, Path]:
    """Two real agent runs on one log: the first with one model refused (degraded
    windows), then a restart under the corrected policy; a rule whose short violation
    episodes cross window boundaries. Returns (spool, policy in force last, public key)."""
    with Device("normal") as dev:
        cfg = make_site(tmp, output={"spool": "spool"}, port=dev.pty.slave_path)
        policy = tmp / "policies" / "cold-chain.yaml"
        good = policy.read_text().replace(
            "rules:\n",
            "rules:\n"
            "  - id: temp-noise\n"
            "    goal: keep-cold\n"
            "    severity: info\n"
            "    condition: temperature <= 5.05\n"
            "    clear: {for: 200ms}\n"
            "    measure: temperature\n"
            '    explain: "above 5.05 from {start} ({duration})"\n',
            1,
        )
        bad = re.sub(
            r'(id: excursion-risk[\s\S]*?sha256: )"?[0-9a-f]{64}"?',
            r'\g<1>"' + "0" * 64 + '"',
            good,
        )
        assert bad != good
        policy.write_text(bad)
        agent, _ = run_agent(cfg, 2.2)
        policy.write_text(good)
        run_agent(cfg, 2.2)
    pub = tmp / "device.pub.pem"
    pub.write_bytes(agent.signer.public.pem())
    return tmp / "spool", policy, pub


def test_every_number_in_the_html_report_is_the_jsons(tmp_path, run_cli):
    """Observation 4: verify said an episode lasted 1.598 s, the report 5.0 s (windows)."""
    spool, policy, pub = _agent_evidence(tmp_path)
    files = sorted(spool.rglob("*.cose"))
    redelivered = tmp_path / "delivered"  # as a subscriber that keeps every delivery has it
    redelivered.mkdir()
    for i, f in enumerate(files + files[-2:]):
        (redelivered / f"{i:05d}.cose").write_bytes(f.read_bytes())
    args = (str(redelivered), "--key", str(pub), "--policy", str(policy))
    v = run_cli("audit", "verify", *args, "--json")
    assert v.returncode == 0, v.stderr
    doc = json.loads(v.stdout)
    out = tmp_path / "report.html"
    r = run_cli("audit", "report", *args, "--html", str(out))
    assert r.returncode == 0, r.stderr

    dev = doc["devices"][0]
    # The evidence has what the report must show: redeliveries counted (no finding),
    # episodes, degraded windows, a restart, a config change, goals with owners.
    assert doc["evidence"] == "intact" and doc["redelivered"] == 2 and not doc["findings"]
    assert dev["episodes"] and dev["degraded"]["runs"] and dev["restarts"]["events"]
    assert len(dev["config_changes"]) == 2 and doc["compliance"]["scope"] == "goals"
    assert doc["compliance"]["policy"]["windows_other_policy"] > 0
    assert dev["restarts"]["count"] == 1 and dev["restarts"]["down_ms"] > 0
    # Episodes are exact (from the rule's own episodes), not whole windows.
    closed = [e for e in dev["episodes"] if e["end_ms"] is not None]
    assert closed and all(e["duration_ms"] == e["end_ms"] - e["start_ms"] for e in closed)
    assert any(e["duration_ms"] % 1000 for e in closed)
    assert any(e["first_seq"] != e["last_seq"] for e in dev["episodes"])  # crosses windows

    scan = _Scan()
    scan.feed(out.read_text())
    shown = {k for k, _, _ in scan.values}
    for pointer, f, text in scan.values:
        _check(doc, pointer, f, text)
    for bar in scan.bars:
        value = _resolve(doc, bar["data-k"])
        assert (bar["data-v"] == "" and value is None) or abs(float(bar["data-v"]) - value) < 1e-6
    loose = [t.strip() for t in scan.loose if re.search(r"\d", t)]
    assert not loose, f"numbers in the report that are not the JSON's: {loose[:10]}"

    # Coverage: every number of these kinds is in the report.
    must = {"/files", "/verified", "/attestations", "/redelivered", "/findings", "/evidence"}
    d = "/devices/0"
    must |= {f"{d}/{k}" for k in ("attestations", "redelivered", "readings", "period_start_ms",
                                  "period_end_ms", "first_seq", "last_seq")}  # fmt: skip
    must |= {f"{d}/completeness/{k}" for k in ("ratio", "received", "expected")}
    for j, e in enumerate(dev["episodes"]):
        ends = ("end_ms", "duration_ms") if e["end_ms"] is not None else ("open_at_ms",)
        must |= {f"{d}/episodes/{j}/{k}" for k in ("start_ms", "rule", "goal", *ends)}
    for j, run in enumerate(dev["degraded"]["runs"]):
        must |= {f"{d}/degraded/runs/{j}/{k}" for k in ("first_seq", "last_seq", "windows",
                                                         "start_ms", "end_ms")}  # fmt: skip
        must |= {f"{d}/degraded/runs/{j}/reasons/{n}" for n in range(len(run["reasons"]))}
    rs = ("count", "unclean", "down_ms", "frames_unrecorded", "recovered_readings",
          "unrecorded_readings")  # fmt: skip
    must |= {f"{d}/restarts/{k}" for k in rs}
    for j in range(len(dev["restarts"]["events"])):
        must |= {f"{d}/restarts/events/{j}/{k}" for k in ("started_ms", "down_ms", "seq")}
    for j, c in enumerate(doc["compliance"]["items"]):
        p = f"/compliance/items/{j}"
        must |= {f"{p}/{k}" for k in ("id", "status", "reason", "stakeholder", "source")}
        must |= {f"{p}/rules/{n}" for n in range(len(c["rules"]))}
        must |= {f"{p}/devices/{n}/status" for n in range(len(c["devices"]))}
    missing = sorted(must - shown)
    assert not missing, f"not in the report: {missing}"
    assert {b["data-k"] for b in scan.bars} == {
        f"{d}/windows/{j}/completeness/ratio" for j in range(len(dev["windows"]))
    }
