"""Signed governance statements: a person's explanation of a deviation, a lab's
calibration certificate.

Each is a COSE_Sign1 (RFC 9052) over a CBOR map in the deterministic encoding, signed by
the author's own key (``edgegov key generate``), never a device key. Its ``profile``
names the kind, so a statement can never pass for an attestation (the attestation
profile is another) nor one kind for the other. Files end in ``.explanation`` or
``.calibration`` (not ``.cose``: ``audit verify`` reads those as attestations).

An explanation (``tag:edgegov.org,2026:explanation:v1``)::

    {"profile", "signed": ms, "signer": {"name", "role"},
     "deviation": {"device", "rule", "start": ms},
     "cause", "action", "disposition", "text"}

A calibration certificate (``tag:edgegov.org,2026:calibration:v1``)::

    {"profile", "signed": ms, "signer": {"name", "role": "calibration lab"},
     "certificate", "device", "channel", "sensor", "valid_from": ms, "valid_until": ms,
     "unit", "uncertainty", "points": [[reference, observed], ...]}

Parsing is strict: every field present with its type, no other field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cbor2

from agent.errors import Error, VerificationError
from agent.evidence.cose import Sign1, decode_sign1, encode_sign1
from agent.identity.keys import SigningKey

__all__ = [
    "CALIBRATION",
    "EXPLANATION",
    "KINDS",
    "CalibrationCertificate",
    "Explanation",
    "Statement",
    "StatementError",
    "deviation_id",
    "parse_deviation_id",
    "read_statement",
    "sign_statement",
]

EXPLANATION = "tag:edgegov.org,2026:explanation:v1"
CALIBRATION = "tag:edgegov.org,2026:calibration:v1"
#: the kind (file suffix, topic level) of each profile
KINDS = {EXPLANATION: "explanation", CALIBRATION: "calibration"}
DISPOSITIONS = ("released", "quarantined", "destroyed", "returned", "not applicable", "pending")


class StatementError(VerificationError):
    """A statement that does not parse, or whose fields break the format."""


def deviation_id(device: str, rule: str, start_ms: int) -> str:
    """The stable id of one violation episode: ``DEVICE/RULE/START_MS``."""
    return f"{device}/{rule}/{start_ms}"


def parse_deviation_id(text: str) -> tuple[str, str, int]:
    """``DEVICE/RULE/START_MS`` as its parts; Error (an input error) if it is not one."""
    parts = text.split("/")
    if len(parts) != 3 or not parts[0] or not parts[1] or not parts[2].isdigit():
        raise Error(
            f"{text!r} is not a deviation id: expected DEVICE/RULE/START_MS as 'audit verify' "
            "lists it (e.g. gw-0001/temp-2-8/1796660609000)"
        )
    return parts[0], parts[1], int(parts[2])


@dataclass(frozen=True)
class Explanation:
    device: str
    rule: str
    start_ms: int
    cause: str
    action: str
    disposition: str
    text: str
    signer: str
    role: str
    signed_ms: int

    @property
    def deviation(self) -> str:
        return deviation_id(self.device, self.rule, self.start_ms)

    def claims(self) -> dict[str, Any]:
        return {
            "profile": EXPLANATION,
            "signed": self.signed_ms,
            "signer": {"name": self.signer, "role": self.role},
            "deviation": {"device": self.device, "rule": self.rule, "start": self.start_ms},
            "cause": self.cause,
            "action": self.action,
            "disposition": self.disposition,
            "text": self.text,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "deviation": self.deviation,
            "cause": self.cause,
            "action": self.action,
            "disposition": self.disposition,
            "text": self.text,
            "signer": self.signer,
            "role": self.role,
            "signed_ms": self.signed_ms,
        }


@dataclass(frozen=True)
class CalibrationCertificate:
    certificate: str
    device: str
    channel: str
    sensor: str
    valid_from_ms: int
    valid_until_ms: int
    unit: str
    uncertainty: float
    points: tuple[tuple[float, float], ...]
    issuer: str
    signed_ms: int

    def covers(self, start_ms: int, end_ms: int) -> bool:
        """Valid for the whole span [start, end)."""
        return self.valid_from_ms <= start_ms and end_ms <= self.valid_until_ms

    def claims(self) -> dict[str, Any]:
        return {
            "profile": CALIBRATION,
            "signed": self.signed_ms,
            "signer": {"name": self.issuer, "role": "calibration lab"},
            "certificate": self.certificate,
            "device": self.device,
            "channel": self.channel,
            "sensor": self.sensor,
            "valid_from": self.valid_from_ms,
            "valid_until": self.valid_until_ms,
            "unit": self.unit,
            "uncertainty": self.uncertainty,
            "points": [list(p) for p in self.points],
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate,
            "device": self.device,
            "channel": self.channel,
            "sensor": self.sensor,
            "valid_from_ms": self.valid_from_ms,
            "valid_until_ms": self.valid_until_ms,
            "unit": self.unit,
            "uncertainty": self.uncertainty,
            "points": [list(p) for p in self.points],
            "issuer": self.issuer,
            "signed_ms": self.signed_ms,
        }


@dataclass(frozen=True)
class Statement:
    """A decoded statement whose signature is not checked yet (``agent.governance.people``)."""

    kind: str  # "explanation" or "calibration"
    body: Explanation | CalibrationCertificate
    msg: Sign1
    source: str  # file or store row, for findings


def sign_statement(body: Explanation | CalibrationCertificate, signer: SigningKey) -> bytes:
    """The COSE_Sign1 bytes of a statement (checked by parsing them back)."""
    raw = encode_sign1(cbor2.dumps(body.claims(), canonical=True), signer)
    read_statement(raw, "the statement being signed")  # never sign what we would refuse
    return raw


def read_statement(raw: bytes, source: str) -> Statement:
    """Decode and check a statement's format (not its signature); StatementError if bad."""
    try:
        msg = decode_sign1(raw)
        claims = msg.claims()
    except VerificationError as e:
        raise StatementError(f"{source}: not a signed statement: {e}") from e
    if "profile" not in claims:  # e.g. an attestation (integer claim keys)
        raise StatementError(
            f"{source}: not a governance statement: its payload has no profile (an "
            "attestation goes to audit verify as a .cose file)"
        )
    f = _Fields(claims, source)
    profile = f.text("profile")
    signer = _Fields(f.map("signer"), source, "signer.")
    name, role = signer.text("name"), signer.text("role")
    signer.done()
    if profile == EXPLANATION:
        dev = _Fields(f.map("deviation"), source, "deviation.")
        ex = Explanation(
            dev.text("device"),
            dev.text("rule"),
            dev.int("start"),
            f.text("cause"),
            f.text("action"),
            f.text("disposition"),
            f.text("text", empty=True),
            name,
            role,
            f.int("signed"),
        )
        dev.done()
        if ex.disposition not in DISPOSITIONS:
            raise StatementError(
                f"{source}: disposition {ex.disposition!r} is not one of " + ", ".join(DISPOSITIONS)
            )
        body: Explanation | CalibrationCertificate = ex
    elif profile == CALIBRATION:
        points = []
        for i, p in enumerate(f.list("points")):
            if (
                not isinstance(p, list)
                or len(p) != 2
                or not all(_number(v) for v in p)
            ):  # fmt: skip
                raise StatementError(f"{source}: points[{i}] must be [reference, observed]")
            points.append((float(p[0]), float(p[1])))
        cert = CalibrationCertificate(
            f.text("certificate"),
            f.text("device"),
            f.text("channel"),
            f.text("sensor"),
            f.int("valid_from"),
            f.int("valid_until"),
            f.text("unit"),
            f.number("uncertainty"),
            tuple(points),
            name,
            f.int("signed"),
        )
        if cert.valid_until_ms <= cert.valid_from_ms:
            raise StatementError(f"{source}: valid_until is not after valid_from")
        if not points:
            raise StatementError(f"{source}: points: a certificate lists at least one point")
        body = cert
    else:
        raise StatementError(
            f"{source}: profile {profile!r} is not a statement this version reads "
            f"({EXPLANATION} or {CALIBRATION})"
        )
    f.done()
    return Statement(KINDS[profile], body, msg, source)


def _number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


class _Fields:
    """Strict reads of one CBOR map; ``done`` refuses any field not read."""

    def __init__(self, m: Any, source: str, prefix: str = "") -> None:
        if type(m) is not dict:
            raise StatementError(f"{source}: {prefix.rstrip('.') or 'payload'} must be a map")
        self.m, self.source, self.prefix = m, source, prefix
        self.read: set[str] = set()

    def _get(self, key: str) -> Any:
        if key not in self.m:
            raise StatementError(f"{self.source}: {self.prefix}{key} is missing")
        self.read.add(key)
        return self.m[key]

    def _bad(self, key: str, what: str) -> StatementError:
        return StatementError(f"{self.source}: {self.prefix}{key} must be {what}")

    def text(self, key: str, *, empty: bool = False) -> str:
        v = self._get(key)
        if type(v) is not str or (not empty and not v.strip()):
            raise self._bad(key, "a text string" + ("" if empty else ", not empty"))
        return v

    def int(self, key: str) -> int:
        v = self._get(key)
        if type(v) is not int or v < 0:
            raise self._bad(key, "a non-negative integer (ms since the epoch)")
        return v

    def number(self, key: str) -> float:
        v = self._get(key)
        if not _number(v) or v < 0:
            raise self._bad(key, "a finite non-negative number")
        return float(v)

    def map(self, key: str) -> Any:
        return self._get(key)

    def list(self, key: str) -> list[Any]:
        v = self._get(key)
        if type(v) is not list:
            raise self._bad(key, "an array")
        return v

    def done(self) -> None:
        extra = sorted(str(k) for k in self.m if k not in self.read)
        if extra:
            raise StatementError(f"{self.source}: unknown field(s) {self.prefix}{', '.join(extra)}")
