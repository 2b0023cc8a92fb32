"""The fuzzer's genuine corpus: short attestation streams made by the agent's own code.

Everything follows from the seed: the keys (Ed25519 from 32 derived bytes, P-256 from a
derived scalar), and what the attester would otherwise draw from ``secrets`` and the
clock (salts, ``cti``, the log origin, ``iat``, uptime), so two processes with the same
seed fuzz the same bytes. ECDSA signs deterministically (RFC 6979) for the same reason.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import cbor2
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

import agent.evidence.attester
import agent.evidence.store
from agent.evidence.attester import Attester
from agent.evidence.claims import (
    ConfigInForce,
    Restart,
    RiskResult,
    RuleEpisode,
    RuleResult,
    SourceDowntime,
)
from agent.evidence.store import EvidenceStore
from agent.identity.keys import ALG_EDDSA, PublicKey, Signer
from agent.sources.quality import QualityLedger
from agent.sources.reading import Reading
from agent.tools.bench.fuzz.rawcbor import encode
from agent.transport.topics import DeviceTopics

__all__ = ["SeededSigner", "Stream", "make_corpus", "split_envelope"]

_P256_N = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_CONFIG = ConfigInForce("cold-chain", 3, "ab" * 32, {"excursion": "cd" * 32})


class SeededSigner:
    """A :class:`agent.identity.keys.SigningKey` whose key comes from a seed; ECDSA per RFC 6979."""

    def __init__(self, seed: int, alg: str) -> None:
        material = hashlib.sha256(f"edgegov-fuzz:{seed}:{alg}".encode()).digest()
        if alg == "ed25519":
            key: Any = ed25519.Ed25519PrivateKey.from_private_bytes(material)
        else:
            scalar = int.from_bytes(material, "big") % (_P256_N - 1) + 1
            key = ec.derive_private_key(scalar, ec.SECP256R1())
        self._signer = Signer(key, f"fuzz-{alg}")
        self._key = key
        self.public: PublicKey = self._signer.public
        self.alg = self.public.alg
        self.kid = self.public.kid

    def sign(self, data: bytes) -> bytes:
        if self.alg == ALG_EDDSA:
            return self._signer.sign(data)
        der = self._key.sign(data, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        r, s = decode_dss_signature(der)
        s = min(s, _P256_N - s)  # the low s: the one form the profile accepts
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")


@dataclass(frozen=True)
class Stream:
    """One device's genuine attestations, in seq order, and the key that signed them."""

    name: str
    signer: SeededSigner
    files: tuple[bytes, ...]

    @property
    def public(self) -> PublicKey:
        return self.signer.public


def split_envelope(raw: bytes) -> tuple[bytes, bytes, bytes]:
    """Protected header, payload and signature of a COSE_Sign1 the agent wrote."""
    obj = cbor2.loads(raw)
    protected, _, payload, signature = obj.value
    return protected, payload, signature


class _Entropy:
    """Stands in for ``secrets`` in the attester and the store: seeded, not secret."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def token_bytes(self, n: int) -> bytes:
        return self._rng.randbytes(n)

    def token_hex(self, n: int) -> str:
        return self._rng.randbytes(n).hex()


class _Clock:
    """Stands in for ``time`` in the attester: a second per attestation."""

    def __init__(self) -> None:
        self._t = START_MS / 1000

    def time(self) -> float:
        self._t += 1.0
        return self._t

    def monotonic(self) -> float:
        return self._t - START_MS / 1000


@contextlib.contextmanager
def _seeded(rng: random.Random) -> Iterator[None]:
    entropy = _Entropy(rng)
    with (
        mock.patch.object(agent.evidence.attester, "secrets", entropy),
        mock.patch.object(agent.evidence.attester, "time", _Clock()),
        mock.patch.object(agent.evidence.store, "secrets", entropy),
    ):
        yield


def _readings(t0: int, n: int, base: float) -> list[Reading]:
    return [Reading(t0 + 10 * i, t0 + 10 * i, 0, i, (base + i * 0.01, 50.0)) for i in range(n)]


def _source_record(w: int, t0: int, n: int) -> dict[str, Any]:
    ledger = QualityLedger("0", "framed", "/dev/ttyUSB0")
    ledger.add_many({"frames_ok": n, "samples_ok": 2 * n, "crc_errors": w % 2})
    if w % 3 == 1:
        ledger.gap(100 * w + 1, 100 * w + 3)
    if w % 3 == 2:
        ledger.offline(t0 + 200)
        ledger.online(t0 + 400)
    ledger.device(f"SN-{w % 2}")
    return ledger.take(t0 + 1000)


def _stream(name: str, device: str, signer: SeededSigner, n: int, rng: random.Random) -> Stream:
    with tempfile.TemporaryDirectory(prefix="edgegov-fuzz-") as tmp, _seeded(rng):
        store = EvidenceStore(Path(tmp) / "evidence.db", device)
        att = Attester(
            device,
            signer,
            store,
            DeviceTopics("edgegov", "f", device).attestation,
            sensors={"0": {"port": "/dev/ttyUSB0", "protocol": "framed"}},
        )
        att.restart = Restart(START_MS - 5000, None, True, (SourceDowntime("0", 5000, 41),))
        files = []
        for w in range(n):
            t0 = START_MS + w * 1000
            k = 6 + w % 3
            hot = w in (2, 3)
            episodes = (RuleEpisode(t0 + 10, t0 + 30 if w == 2 else None, 9.02),) if hot else ()
            item = att.attest(
                (t0, t0 + 1000),
                _readings(t0, k, 9.0 if hot else 5.0),
                _CONFIG,
                (
                    RuleResult(
                        "temp-range",
                        k,
                        3 if hot else 0,
                        0,
                        t0 + 10 if hot else None,
                        t0 + 30 if hot else None,
                        episodes,
                    ),
                ),
                (
                    RiskResult(
                        "excursion", 0.1 + 0.2 * hot, "CPUExecutionProvider", ood=("max(t)",)
                    ),
                    RiskResult("drift", None, "CPUExecutionProvider", "model not loaded"),
                ),
                # the runner hands the per-source records in the same mapping (runner.py)
                {"frames_ok": k, "crc_errors": w % 2, "sources": [_source_record(w, t0, k)]},  # type: ignore[dict-item]
                ("0",) if w == 4 else (),
            )
            files.append(item.payload)
        store.close()
    for f in files:  # the hand encoder must reproduce the agent's bytes (the fuzzer relies on it)
        payload = split_envelope(f)[1]
        if encode(cbor2.loads(payload)) != payload:
            raise RuntimeError("fuzz corpus: rawcbor.encode does not round-trip a payload")
    return Stream(name, signer, tuple(files))


def make_corpus(seed: int) -> tuple[Stream, ...]:
    """Two streams from ``seed``: 7 Ed25519 attestations and 6 ECDSA P-256 ones."""
    rng = random.Random(f"edgegov-fuzz-corpus:{seed}")
    return (
        _stream("ed25519", "gw-ed", SeededSigner(seed, "ed25519"), 7, rng),
        _stream("p256", "gw-ec", SeededSigner(seed, "p256"), 6, rng),
    )
