"""Evidence export bundles (selective disclosure): the layout, the manifest, and what
``edgegov audit verify BUNDLE`` checks beyond the normal path.

A bundle is a directory (``edgegov audit export`` writes it; docs/governance.md,
"Export bundles")::

    manifest.json                          what is inside and why (below)
    attestations/<device>/<seq>.cose       the device-signed windows of the period
    readings/<device>/<index>.proof        chosen readings: inclusion proofs (agent.audit.prove)
    statements/<kind>/<name>.<kind>        signed explanations and calibration certificates
    policy/<file>                          the policy bundle(s) named, when given

Everything but the manifest is signed by its author (device, person, lab), so a
verifier needs only trust anchors. The manifest is **not signed**: it adds no evidence,
only an index (every file's SHA-256), the scope (site, devices, period, each log's seq
range) and the reasons readings were chosen. Its hashes catch damage in transit and
files added or taken away; the scope is checked against the signed attestations (a
missing window inside a range is a ``CHAIN_GAP``, a range the attestations do not fill
is a ``BUNDLE_SCOPE`` finding). Who exported the bundle is the exporter's claim.

The checks (:func:`check_bundles`), each problem a :class:`Finding`:
1. every file the manifest lists is there with its SHA-256; nothing else is there;
2. the attestations go through ``verify_messages`` as any others; a chain that starts at
   the manifest's first seq for its log is not a ``CHAIN_START`` finding (the bundle
   starts mid-stream by design), any other is;
3. each log's seq range in the manifest is filled by verified attestations;
4. every chosen reading's proof verifies (:func:`agent.audit.prove.check_proof`) against
   the very attestation of its window in the bundle, and is the reading the manifest says;
5. every policy listed is one a verified attestation of the bundle was signed under;
6. statements are reviewed by ``agent.governance.review`` (signer, role, site).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from agent.audit.prove import check_proof
from agent.audit.trust import TrustStore
from agent.audit.verify import AuditResult, Finding
from agent.errors import VerificationError

__all__ = [
    "FORMAT",
    "MANIFEST",
    "Disclosure",
    "check_bundles",
    "disclosure_lines",
    "file_entry",
    "is_bundle",
]

MANIFEST = "manifest.json"
FORMAT = "edgegov-export-bundle/1"
_MAX_MANIFEST = 16 * 1024 * 1024


def file_entry(root: Path, rel: str) -> dict[str, Any]:
    """The manifest's entry for the file ``rel`` (POSIX path) below ``root``."""
    data = (root / rel).read_bytes()
    return {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def is_bundle(path: Path) -> bool:
    """A directory with a manifest.json: an export bundle (a bad manifest is a finding)."""
    return path.is_dir() and (path / MANIFEST).is_file()


@dataclass
class Disclosure:
    """What one bundle discloses, as verified: per device, readings disclosed of those in
    the exported windows, and the windows they come from."""

    bundle: str
    site: str | None
    period: tuple[str | None, str | None]
    exported_by: str
    exported_at: str
    devices: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "bundle": self.bundle,
            "site": self.site,
            "from": self.period[0],
            "until": self.period[1],
            "exported_by": self.exported_by,
            "exported_at": self.exported_at,
            "devices": self.devices,
        }


def check_bundles(paths: Sequence[Path], res: AuditResult, trust: TrustStore) -> list[Disclosure]:
    """Check each bundle among ``paths`` (already verified as attestations into ``res``),
    adding findings to ``res.findings``; what each discloses."""
    return [_Bundle(p, res, trust).check() for p in paths if is_bundle(p)]


class _Bundle:
    def __init__(self, root: Path, res: AuditResult, trust: TrustStore) -> None:
        self.root = root
        self.res = res
        self.trust = trust
        self.name = str(root)

    def add(
        self, kind: str, detail: str, file: str = "", device: str = "", seq: int | None = None
    ) -> None:
        self.res.findings.append(
            Finding(
                device or self.name, seq, kind, detail, file, "" if device == "" else "the manifest"
            )
        )

    def check(self) -> Disclosure:
        m = self._manifest()
        exported = _map(m.get("exported"))
        scope = _map(m.get("scope"))
        dis = Disclosure(
            self.name,
            scope.get("site"),
            (scope.get("from"), scope.get("until")),
            str(exported.get("by", "?")),
            str(exported.get("at", "?")),
        )
        if not m:
            return dis
        self._files(m.get("files"))
        logs = [lg for lg in scope.get("logs") or [] if isinstance(lg, dict)]
        self._scope(logs)
        proven = self._readings(m.get("readings"))
        self._policies(m.get("policies"))
        for lg in logs:
            vlog = next((v for v in self.res.logs if v.origin == lg.get("origin")), None)
            evs = vlog.evidence if vlog is not None else []
            wins = {
                s: n
                for s, n in sorted(proven.items())
                if s[0] == lg.get("device") and any(e.seq == s[1] for e in evs)
            }
            dis.devices.append(
                {
                    "device": lg.get("device"),
                    "origin": lg.get("origin"),
                    "first_seq": lg.get("first_seq"),
                    "last_seq": lg.get("last_seq"),
                    "readings_in_windows": sum(e.readings for e in evs),
                    "log_size": max((e.checkpoint.size for e in evs), default=0),
                    "readings_disclosed": sum(wins.values()),
                    "windows": {str(s[1]): n for s, n in wins.items()},
                }
            )
        return dis

    def _manifest(self) -> dict[str, Any]:
        f = self.root / MANIFEST
        try:
            if f.stat().st_size > _MAX_MANIFEST:
                raise ValueError(f"over {_MAX_MANIFEST} bytes")
            m = json.loads(f.read_bytes())
            if not isinstance(m, dict) or m.get("format") != FORMAT:
                raise ValueError(f"not a manifest of format {FORMAT!r}")
        except (OSError, ValueError) as e:
            self.add("BUNDLE_MANIFEST", f"{MANIFEST}: {e}", str(f))
            return {}
        return m

    def _files(self, listed: Any) -> None:
        if not isinstance(listed, list):
            self.add(
                "BUNDLE_MANIFEST", f"{MANIFEST} has no list of files", str(self.root / MANIFEST)
            )
            return
        seen: set[str] = set()
        for e in listed:
            rel = e.get("path") if isinstance(e, dict) else None
            p = PurePosixPath(rel) if isinstance(rel, str) else None
            if not isinstance(rel, str) or p is None or p.is_absolute() or ".." in p.parts:
                self.add("BUNDLE_MANIFEST", f"a file entry {e!r} is not a path inside the bundle")
                continue
            seen.add(rel)
            f = self.root / rel
            if not f.is_file():
                self.add("BUNDLE_FILE", f"{rel}: listed in the manifest but missing", str(f))
                continue
            got = hashlib.sha256(f.read_bytes()).hexdigest()
            if got != e.get("sha256"):
                self.add(
                    "BUNDLE_FILE",
                    f"{rel}: SHA-256 {got[:16]}... does not match the manifest's "
                    f"{str(e.get('sha256'))[:16]}... (changed after export)",
                    str(f),
                )
        seen.add(MANIFEST)
        for f in sorted(self.root.rglob("*")):
            rel = f.relative_to(self.root).as_posix()
            if (f.is_file() or f.is_symlink()) and rel not in seen:
                self.add(
                    "BUNDLE_FILE", f"{rel}: in the bundle but not listed in the manifest", str(f)
                )

    def _scope(self, logs: list[dict[str, Any]]) -> None:
        starts = {(lg.get("device"), lg.get("first_seq")) for lg in logs}
        # a chain that starts where the manifest says its range starts is the bundle's
        # design, not a gap; one delivered with another message in its place is kept
        self.res.findings[:] = [
            f
            for f in self.res.findings
            if not (f.kind == "CHAIN_START" and not f.related and (f.device, f.seq) in starts)
        ]
        for lg in logs:
            dev, origin, first, last = (
                lg.get(k) for k in ("device", "origin", "first_seq", "last_seq")
            )
            vlog = next((v for v in self.res.logs if v.origin == origin), None)
            seqs = {e.seq for e in vlog.evidence} if vlog is not None else set()
            for s, where in ((first, "first"), (last, "last")):
                if s not in seqs:
                    self.add(
                        "BUNDLE_SCOPE",
                        f"the manifest's range of log {origin} is seq {first}..{last}, but its "
                        f"{where} attestation (seq {s}) is not in the bundle or did not verify",
                        device=str(dev),
                        seq=s if isinstance(s, int) else None,
                    )
        declared = {lg.get("origin") for lg in logs}
        for v in self.res.logs:
            if v.origin not in declared and any(e.device_id == v.device for e in v.evidence):
                self.add(
                    "BUNDLE_SCOPE", f"log {v.origin} of {v.device} is not in the manifest's scope"
                )

    def _readings(self, listed: Any) -> dict[tuple[str, int], int]:
        """Check each chosen reading; (device, window seq) -> readings proven there."""
        proven: dict[tuple[str, int], int] = {}
        windows = {(e.device_id, e.seq): e for v in self.res.logs for e in v.evidence}
        for e in listed if isinstance(listed, list) else []:
            if not isinstance(e, dict):
                continue
            rel, dev, index = str(e.get("file")), str(e.get("device")), e.get("index")
            f = self.root / rel
            if not f.is_file():
                continue  # a file finding already says so
            where = f"{rel}: reading {index} of {dev}"
            try:
                p = check_proof(f.read_bytes(), self.trust)
            except VerificationError as err:
                self.add(
                    "READING",
                    f"{where}: inclusion proof does not verify: {err}",
                    str(f),
                    dev,
                    e.get("window_seq") if isinstance(e.get("window_seq"), int) else None,
                )
                continue
            ev = p.evidence
            if (ev.device_id, p.reading.index) != (dev, index):
                self.add(
                    "READING",
                    f"{where}: the proof is of reading {p.reading.index} of {ev.device_id}",
                    str(f),
                    dev,
                    ev.seq,
                )
                continue
            ours = windows.get((ev.device_id, ev.seq))
            if ours is None or ours.checkpoint != ev.checkpoint:
                self.add(
                    "READING",
                    f"{where}: proven against window seq {ev.seq}, which is not an attestation "
                    "of this bundle",
                    str(f),
                    dev,
                    ev.seq,
                )
                continue
            proven[dev, ev.seq] = proven.get((dev, ev.seq), 0) + 1
        return proven

    def _policies(self, listed: Any) -> None:
        attested = {e.config.policy_digest for v in self.res.logs for e in v.evidence}
        for p in listed if isinstance(listed, list) else []:
            if isinstance(p, dict) and p.get("digest") not in attested:
                self.add(
                    "BUNDLE_SCOPE",
                    f"policy {p.get('id')} v{p.get('version')} (digest {str(p.get('digest'))[:16]}"
                    "...) is listed but no attestation of the bundle was signed under it",
                )


def disclosure_lines(items: Sequence[dict[str, Any]]) -> list[str]:
    """What each bundle discloses, as ``audit verify``'s text says it (from the JSON)."""
    out: list[str] = []
    for b in items:
        site = f", site {b['site']}" if b["site"] else ""
        span = f"{b['from'] or 'the start'} .. {b['until'] or 'the end'}"
        out += ["", f"disclosure: bundle {b['bundle']}{site}; period {span}"]
        out.append(f"  exported by {b['exported_by']} at {b['exported_at']} (manifest unsigned)")
        for d in b["devices"]:
            wins = ", ".join(f"seq {s}: {n}" for s, n in d["windows"].items()) or "none"
            out.append(
                f"  {d['device']}: windows seq {d['first_seq']}..{d['last_seq']}; "
                f"{d['readings_disclosed']} of {d['readings_in_windows']} readings disclosed "
                f"(log size {d['log_size']}); disclosed per window: {wins}"
            )
    return out


def _map(v: Any) -> dict[str, Any]:
    return v if isinstance(v, dict) else {}
