"""`audit report --html`: self-contained, and it renders in a real headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from agent.keys import generate_key
from tests.evidence_util import make_stream, write


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
    assert "CHAIN_GAP" in doc and "temp-range" in doc and "NOT met" in doc
    assert "Violation episodes" in doc and "Configuration changes" in doc
    # window 2 of gw-1 had an input outside the model's training range
    assert "<tr><td>excursion</td><td class='num'>7</td><td class='num'>1</td>" in doc

    dom = _run_chromium(tmp_path, "--dump-dom", out.as_uri())
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert "Device gw-1" in dom.stdout and "<polyline" in dom.stdout
    shot = tmp_path / "report.png"  # kept in the test tmp dir for a person to look at
    r = _run_chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2400", out.as_uri())
    assert r.returncode == 0, r.stderr[-2000:]
    assert shot.exists() and shot.stat().st_size > 20_000  # a real, non-blank page
    png = shot.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Uncaught" not in r.stderr and "ERR_FILE_NOT_FOUND" not in r.stderr
