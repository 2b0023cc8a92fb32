"""Coverage-guided differential fuzzing of the audit verifier's decoders (issue 13), with Atheris.

Run from the repository root (``make fuzz-atheris`` installs Atheris and runs it 120 s)::

    .venv/bin/python tests/atheris_verify.py [-atheris_runs=N] [-max_total_time=S] \
        [-seed=1] [CORPUS_DIR]

Any libFuzzer flag works. Without ``CORPUS_DIR`` the corpus lives in a temporary
directory; with one, the seeds are written into it (it is created if missing) and
libFuzzer adds what it finds there. ``-seed=N`` makes a run repeatable: the seeds are
built with a fixed Ed25519 key, a fixed clock and fixed "random" salts, and the
script re-executes itself with ``PYTHONHASHSEED=0`` if that is not set.

What it checks. The first byte of an input picks the target (``TARGETS``), the rest
is the data:

0 ``scan``      ``native._cbor_scan.scan`` vs ``native._cbor_scan_py.scan``: the same
                ``(code, pos)`` for the limits the verifier uses, and more, strict
                (deterministic CBOR) and not.
1 ``loads``     ``native._verify.loads`` / ``loads_claims`` vs the pure twins
                (``cbor2.loads``): the same value (NaN equal to NaN, ``1 != 1.0``), or
                the same exception type and message.
2 ``envelope``  ``native._verify.split_sign1`` vs the pure twin on whole messages,
                then the pipeline on them (below).
3 ``payload``   a claims set: ``loads_claims`` as above, ``claims_fields`` and
                ``evidence_from_claims`` of the two twins on the decoded map (the
                same fields, or the same ``ClaimsError`` and message), then the
                pipeline on the payload wrapped in a real envelope (protected header
                and signature from a real attestation, so the length heads stay right).

Targets 1-3 also run the ``scan`` differential on their data. The pipeline is what the
audit verifier does with an untrusted message (signature aside):
``agent.evidence.cose.decode_sign1(raw).claims(unread=False)`` then
``agent.evidence.claims.parse_claims``; it may succeed or raise
``agent.errors.VerificationError``, nothing else. A twin disagreement or any other
exception raises ``AssertionError`` with the target, the data in hex and both
outcomes; libFuzzer then writes the input to ``crash-<sha1>`` (replay it with
``python tests/atheris_verify.py crash-<sha1>``).

Seeds: the payloads, protected headers and whole messages of real attestation streams
(``tests.evidence_util.make_stream``), Ed25519 and ES256, without and with an x5chain.

Coverage. The compiled extensions (``native/*.so``) are not instrumented for
libFuzzer (that needs a clang ``-fsanitize=fuzzer-no-link`` build of the Cython
output): the coverage that guides the search comes from the pure-Python twins
(``native._cbor_scan_py``, ``native._verify_py``) and the ``agent`` modules, which
``atheris.instrument_imports`` instruments; the compiled side is checked
differentially, by comparing its outcome with its twin's on every input. cbor2 is a C
extension too, so its branches do not guide the search either.
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__" and os.environ.get("PYTHONHASHSEED") is None:
    # str hashes (dict and set order, and so the coverage) the same from run to run
    os.environ["PYTHONHASHSEED"] = "0"
    os.execv(sys.executable, [sys.executable, *sys.argv])

import dataclasses
import hashlib
import math
import tempfile
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from unittest import mock

import atheris
import cbor2

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["native", "agent"]):
    import native._cbor_scan_py as scan_py
    import native._verify_py as verify_py
    from agent.errors import VerificationError
    from agent.evidence.cbor_limits import MAX_DEPTH, MAX_ITEMS
    from agent.evidence.claims import _TYPES, parse_claims
    from agent.evidence.cose import decode_sign1

import native._cbor_scan as scan_c  # noqa: E402 (the compiled twins, not instrumented)
import native._verify as verify_c  # noqa: E402

TARGETS = ("scan", "loads", "envelope", "payload")

# (max_depth, max_items): the verifier's (payload, envelope, protected header) and a few more
_LIMITS = ((MAX_DEPTH, MAX_ITEMS), (4, 64), (3, 63), (3, 64), (0, 1), (1, 3), (62, 100_000))


# --- comparing outcomes -------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    """Equal values of the same types (NaN equal to NaN), objects compared field by field."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, Mapping):  # dict, and cbor2's frozendict for keys (NaN keys too)
        return len(a) == len(b) and all(_same(k, j) and _same(a[k], b[j]) for k, j in zip(a, b))
    if isinstance(a, cbor2.CBORTag):  # CBORTag.__eq__ takes two NaNs for different values
        return a.tag == b.tag and _same(a.value, b.value)
    if hasattr(a, "__dict__") and not isinstance(a, type):
        return _same(vars(a), vars(b))
    return bool(a == b)


def _outcome(f: Any, *args: Any) -> tuple[str, Any]:
    try:
        return "ok", f(*args)
    except Exception as e:  # the exception type and text are what must agree
        return type(e).__name__, str(e)


def _agree(target: str, what: str, data: bytes, c: tuple[str, Any], p: tuple[str, Any]) -> None:
    same = c[0] == p[0] and (_same(c[1], p[1]) if c[0] == "ok" else c[1] == p[1])
    if not same:
        raise AssertionError(
            f"twins disagree: target {target}, {what}\n"
            f"  input ({len(data)} bytes): {data.hex()}\n"
            f"  compiled: {_show(c)}\n"
            f"  pure:     {_show(p)}"
        )


def _show(outcome: tuple[str, Any]) -> str:
    kind, v = outcome
    text = repr(v) if kind == "ok" else v
    if len(text) > 2000:
        text = text[:2000] + "..."
    return f"{kind}: {text}"


# --- the targets -----------------------------------------------------------------------


def fuzz_scan(data: bytes, every_limit: bool = True) -> None:
    limits = _LIMITS if every_limit else _LIMITS[:1]
    for depth, items in limits:
        for strict in (False, True):
            c = _outcome(scan_c.scan, data, depth, items, strict)
            p = _outcome(scan_py.scan, data, depth, items, strict)
            _agree("scan", f"scan(data, {depth}, {items}, strict={strict})", data, c, p)


def fuzz_loads(data: bytes) -> None:
    fuzz_scan(data, every_limit=False)
    for name in ("loads", "loads_claims"):
        c = _outcome(getattr(verify_c, name), data)
        p = _outcome(getattr(verify_py, name), data)
        _agree("loads", name, data, c, p)


def _pipeline(target: str, raw: bytes, data: bytes) -> None:
    """decode_sign1 -> claims -> parse_claims: success or VerificationError, nothing else."""
    try:
        parse_claims(decode_sign1(raw).claims(unread=False))
    except VerificationError:
        pass
    except Exception as e:
        raise AssertionError(
            f"pipeline raised {type(e).__name__} (not VerificationError): target {target}\n"
            f"  input ({len(data)} bytes): {data.hex()}\n"
            f"  message ({len(raw)} bytes): {raw.hex()}\n"
            f"  {type(e).__name__}: {e}\n{traceback.format_exc()}"
        ) from e


def fuzz_envelope(data: bytes) -> None:
    fuzz_scan(data, every_limit=False)
    c = _outcome(verify_c.split_sign1, data)
    p = _outcome(verify_py.split_sign1, data)
    _agree("envelope", "split_sign1", data, c, p)
    _pipeline("envelope", data, data)


def _bstr(b: bytes) -> bytes:
    return verify_py._bstr_head(len(b)) + b


_ENVELOPE: tuple[bytes, bytes] = (b"", b"")  # (protected header, signature) of a real message


def fuzz_payload(data: bytes) -> None:
    fuzz_scan(data, every_limit=False)
    c = _outcome(verify_c.loads_claims, data)
    p = _outcome(verify_py.loads_claims, data)
    _agree("payload", "loads_claims", data, c, p)
    try:
        full = verify_py.loads(data)
    except Exception:
        full = None
    for what, claims in (("claims", full), ("trimmed claims", p[1] if p[0] == "ok" else None)):
        if type(claims) is not dict:
            continue
        for name, args in (
            ("claims_fields", (claims,)),
            ("evidence_from_claims", (claims, _TYPES)),
        ):
            cc = _outcome(getattr(verify_c, name), *args)
            pp = _outcome(getattr(verify_py, name), *args)
            for o in (cc, pp):
                if o[0] not in ("ok", "ClaimsError"):
                    raise AssertionError(
                        f"{name} raised {o[0]} (not ClaimsError): target payload, {what}\n"
                        f"  input ({len(data)} bytes): {data.hex()}\n"
                        f"  compiled: {_show(cc)}\n  pure:     {_show(pp)}"
                    )
            _agree("payload", f"{name} of the {what}", data, cc, pp)
    protected, signature = _ENVELOPE
    raw = b"\xd2\x84" + _bstr(protected) + b"\xa0" + _bstr(data) + _bstr(signature)
    _pipeline("payload", raw, data)


_FUZZ = (fuzz_scan, fuzz_loads, fuzz_envelope, fuzz_payload)


def TestOneInput(raw: bytes) -> None:  # Atheris' name
    if not raw:
        return
    _FUZZ[raw[0] % len(_FUZZ)](raw[1:])


# --- seeds -----------------------------------------------------------------------------


def _seed_messages() -> list[bytes]:
    """Real attestation streams, the same bytes on every run of one source tree."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    from agent.identity.keys import Signer
    from tests.evidence_util import make_stream

    counter = iter(range(1 << 30))

    def token_bytes(n: int = 32) -> bytes:
        out = b""
        while len(out) < n:
            out += hashlib.sha256(b"atheris-seed %d" % next(counter)).digest()
        return out[:n]

    class FixedSigner(Signer):
        """ECDSA signs with a random k: fixed bytes instead (the harness checks no signature)."""

        def sign(self, data: bytes) -> bytes:
            return hashlib.sha512(data).digest()

    ed = Signer(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))), "seed-ed25519")
    p256 = FixedSigner(ec.derive_private_key(0x1D2C3B4A, ec.SECP256R1()), "seed-p256")
    clock = iter(range(1_700_000_000, 1 << 40))
    msgs: list[bytes] = []
    with (
        tempfile.TemporaryDirectory() as tmp,
        mock.patch("secrets.token_bytes", token_bytes),
        mock.patch("secrets.token_hex", lambda n=32: token_bytes(n).hex()),
        mock.patch("time.time", lambda: float(next(clock))),
    ):
        chains = ((), (), (b"\x30\x03\x02\x01\x01",), (b"\x30\x00", b"\x30\x01\x00"))
        for i, (signer, chain) in enumerate(zip((ed, p256, ed, ed), chains)):
            msgs += make_stream(Path(tmp) / f"{i}.db", signer, windows=4, x5chain=chain)
    return [*msgs, _rich_message(msgs[0], ed)]


def _rich_message(first: bytes, signer: Any) -> bytes:
    """``first`` with every optional claim the stream lacks: rule episodes, the fleet
    config (TUF versions, targets, change, state), a nonce, source records, a restart."""
    from agent.evidence.claims import (
        Restart,
        RuleEpisode,
        RuleResult,
        SourceDowntime,
        encode_claims,
    )
    from agent.evidence.cose import encode_sign1

    ev = parse_claims(decode_sign1(first).claims())
    rich = dataclasses.replace(
        ev,
        rules=(
            *ev.rules,
            RuleResult("r-open", 9, 3, 0, 1, 2, (RuleEpisode(1, 5, 2.5), RuleEpisode(7, None))),
        ),
        config=dataclasses.replace(
            ev.config,
            config_version=4,
            tuf={"root": 1, "timestamp": 9, "snapshot": 8, "targets": 7},
            targets={"policy.bundle": "ab" * 32},
            changed=(3, 1_700_000_000_000),
            state_in="cd" * 32,
        ),
        nonce=b"n" * 8,
        source_health=(
            {
                "source": "s0",
                "protocol": "framed",
                "port": "/dev/ttyUSB0",
                "device": None,
                "gaps": [[1, 5]],
                "offline": [[1_700_000_000_000, 1_700_000_000_500]],
                "problems": ["gap"],
                "frames_ok": 3,
            },
        ),
        restart=Restart(
            1_700_000_000_000,
            1_699_999_999_000,
            False,
            (SourceDowntime("s0", 5_000, 41), SourceDowntime("s1", 5_200)),
            2,
            None,
            "a new log",
            "unknown",
        ),
    )
    return encode_sign1(encode_claims(rich), signer)


def write_seeds(corpus: Path) -> int:
    global _ENVELOPE
    msgs = _seed_messages()
    seeds: set[bytes] = set()
    for m in msgs:
        parts = verify_py.split_sign1(m)
        assert parts is not None, "a seed message is not in the profile's envelope"
        protected, payload, signature = parts
        # a harness whose seeds fail early tests nothing: each must pass the pipeline
        parse_claims(decode_sign1(m).claims(unread=False))
        if not _ENVELOPE[0]:
            _ENVELOPE = (protected, signature)
        seeds.update(
            {
                bytes([TARGETS.index("scan")]) + payload,
                bytes([TARGETS.index("scan")]) + protected,
                bytes([TARGETS.index("scan")]) + m,
                bytes([TARGETS.index("loads")]) + payload,
                bytes([TARGETS.index("loads")]) + protected,
                bytes([TARGETS.index("envelope")]) + m,
                bytes([TARGETS.index("payload")]) + payload,
            }
        )
    corpus.mkdir(parents=True, exist_ok=True)
    for s in seeds:
        (corpus / f"seed-{hashlib.sha1(s).hexdigest()}").write_bytes(s)
    return len(seeds)


def main() -> None:
    args = sys.argv[1:]
    paths = [a for a in args if not a.startswith("-")]
    replay = [Path(p) for p in paths if Path(p).is_file()]
    if replay:  # libFuzzer runs single files as they are: no seeds needed but the envelope
        msgs = _seed_messages()
        parts = verify_py.split_sign1(msgs[0])
        assert parts is not None
        global _ENVELOPE
        _ENVELOPE = (parts[0], parts[2])
        argv = [sys.argv[0], *args]
    else:
        if paths:
            corpus = Path(paths[0])
            argv = [sys.argv[0], *args]
        else:
            corpus = Path(tempfile.mkdtemp(prefix="edgegov-atheris-"))
            argv = [sys.argv[0], *args, str(corpus)]
        t0 = time.monotonic()
        n = write_seeds(corpus)
        print(
            f"atheris_verify: {n} seed inputs in {corpus} ({time.monotonic() - t0:.1f} s); "
            f"targets {', '.join(f'{i}={t}' for i, t in enumerate(TARGETS))}; "
            f"compiled: {scan_c.__file__}, {verify_c.__file__}",
            flush=True,
        )
    atheris.Setup(argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
