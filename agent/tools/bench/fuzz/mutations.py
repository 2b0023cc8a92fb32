"""One fuzz case: a genuine stream with one file (two for a splice) mutated, by kind.

Every case is drawn from its own ``random.Random`` (seeded with the campaign seed and the
case number), so any case can be made again on its own, in any process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import cbor2

from agent.evidence.cose import sig_structure
from agent.identity.keys import ALG_ES256
from agent.tools.bench.fuzz.bombs import BOMB_SHAPES, PLACEMENTS
from agent.tools.bench.fuzz.claim_mutations import CLAIMS_MUTATIONS
from agent.tools.bench.fuzz.corpus import Stream, split_envelope
from agent.tools.bench.fuzz.envelope import ENVELOPE_VARIANTS, MAX_FILE, build
from agent.tools.bench.fuzz.rawcbor import Raw, encode

__all__ = ["BOMBS", "KINDS", "Case", "make_case"]

KINDS = (
    "byte-flip",
    "truncate",
    "insert",
    "delete",
    "envelope",
    "ecdsa-high-s",
    "claims-unsigned",
    "claims-resigned",
    "splice",
    "bomb",
)

BOMBS = tuple((shape, where) for shape in BOMB_SHAPES for where in PLACEMENTS)
"""Every bomb a campaign runs once: (shape, placement)."""

_P256_N = int("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551", 16)


@dataclass(frozen=True)
class Case:
    """A stream to verify: ``files`` in name (= seq) order, ``targets`` the positions changed.

    ``resigned``: the target's payload was signed again with the device's own key (a
    hostile device); ``in_profile``: what it signed is what the profile allows.
    """

    index: int
    kind: str
    mutation: str
    stream: Stream
    files: tuple[bytes, ...]
    targets: tuple[int, ...]
    resigned: bool = False
    in_profile: bool = False

    def names(self) -> list[str]:
        """The file names, in seq order: ``<stream>/000003.cose``."""
        return [f"{self.stream.name}/{i:06d}.cose" for i in range(len(self.files))]

    def __repr__(self) -> str:
        where = ",".join(f"{t:06d}.cose" for t in self.targets)
        return f"#{self.index} {self.kind} {self.mutation} on {self.stream.name}/{where}"


def _replace(stream: Stream, target: int, raw: bytes) -> tuple[bytes, ...]:
    files = list(stream.files)
    files[target] = raw
    return tuple(files)


def _byte_flip(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    out = bytearray(raw)
    pos = sorted(rng.sample(range(len(raw)), rng.choice((1, 1, 1, 2, 3))))
    for p in pos:
        out[p] ^= rng.randrange(1, 256)
    return bytes(out), "@" + ",".join(map(str, pos))


def _truncate(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    cut = rng.choice((rng.randrange(len(raw)), len(raw) - rng.randrange(1, 80)))
    return raw[:cut], f"to {cut} bytes"


def _insert(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    pos = rng.randrange(len(raw) + 1)
    data = rng.randbytes(rng.choice((1, 1, 2, 4, 16)))
    return raw[:pos] + data + raw[pos:], f"{data.hex()}@{pos}"


def _delete(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    n = rng.choice((1, 1, 2, 8))
    pos = rng.randrange(len(raw) - n + 1)
    return raw[:pos] + raw[pos + n :], f"{n}@{pos}"


_BYTES = {"byte-flip": _byte_flip, "truncate": _truncate, "insert": _insert, "delete": _delete}


def _high_s(signature: bytes) -> bytes:
    s = int.from_bytes(signature[32:], "big")
    return signature[:32] + (_P256_N - s).to_bytes(32, "big")


def _bomb(
    index: int, bomb: int, stream: Stream, target: int, protected: bytes, payload: bytes
) -> Case:
    shape, where = BOMBS[bomb % len(BOMBS)]
    make = BOMB_SHAPES[shape]
    if where == "file":
        raw = make(MAX_FILE)
        resigned = False
    else:
        if where == "payload":
            new = make(MAX_FILE - 200)
        else:  # a risk score that is a bomb, in an otherwise genuine claims set
            claims = cbor2.loads(payload)
            room = MAX_FILE - 300 - len(payload)
            claims[-70001][7][0][2] = Raw(make(room))
            new = encode(claims)
        sig = stream.signer.sign(sig_structure(protected, new))
        raw = build(protected, new, sig)
        resigned = True
    files = _replace(stream, target, raw)
    return Case(index, "bomb", f"{shape}/{where}", stream, files, (target,), resigned, False)


def make_case(index: int, kind: str, seed: int, streams: tuple[Stream, ...], bomb: int = 0) -> Case:
    """Case ``index`` of a campaign: ``kind`` applied to one stream from ``streams``.

    Raises:
        RuntimeError: the mutation left the stream as it was (a bug in the fuzzer: such a
            case would be counted as the verifier accepting a change).
    """
    case = _make_case(index, kind, seed, streams, bomb)
    if case.files == case.stream.files:
        raise RuntimeError(f"fuzz case {case!r} changes nothing")
    return case


def _make_case(index: int, kind: str, seed: int, streams: tuple[Stream, ...], bomb: int) -> Case:
    rng = random.Random(f"edgegov-fuzz:{seed}:{index}")
    if kind == "ecdsa-high-s":
        stream = next(s for s in streams if s.signer.alg == ALG_ES256)
    else:
        stream = rng.choice(streams)
    n = len(stream.files)
    target = rng.randrange(n)
    raw = stream.files[target]
    protected, payload, signature = split_envelope(raw)
    if kind in _BYTES:
        new, how = _BYTES[kind](rng, raw)
        return Case(index, kind, how, stream, _replace(stream, target, new), (target,))
    if kind == "envelope":
        name = rng.choice(sorted(ENVELOPE_VARIANTS))
        new = ENVELOPE_VARIANTS[name](protected, payload, signature)
        return Case(index, kind, name, stream, _replace(stream, target, new), (target,))
    if kind == "ecdsa-high-s":
        new = build(protected, payload, _high_s(signature))
        return Case(index, kind, "s=n-s", stream, _replace(stream, target, new), (target,))
    if kind in ("claims-unsigned", "claims-resigned"):
        m = rng.choice(CLAIMS_MUTATIONS)
        new_payload = encode(m.apply(cbor2.loads(payload), rng))
        resigned = kind == "claims-resigned"
        if resigned:
            signature = stream.signer.sign(sig_structure(protected, new_payload))
        new = build(protected, new_payload, signature)
        files = _replace(stream, target, new)
        return Case(
            index, kind, m.name, stream, files, (target,), resigned, resigned and m.in_profile
        )
    if kind == "splice":
        spliced = list(stream.files)
        if rng.random() < 0.5:
            # never over the last file: that is a dropped tail plus a redelivery, which no
            # verifier can tell from a stream that simply ends earlier
            j = rng.randrange(n - 1)
            i = rng.choice([x for x in range(n) if x != j])
            spliced[j] = stream.files[i]
            how = f"copy {i}->{j}"
        else:
            i, j = rng.sample(range(n), 2)
            spliced[i], spliced[j] = spliced[j], spliced[i]
            how = f"swap {i}<->{j}"
        return Case(index, kind, how, stream, tuple(spliced), tuple(sorted((i, j))))
    if kind == "bomb":
        return _bomb(index, bomb, stream, target, protected, payload)
    raise ValueError(f"unknown fuzz kind {kind!r}; known: {', '.join(KINDS)}")
