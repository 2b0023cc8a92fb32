"""The audit verifier against a hostile device (issue 13): the seeded mutation fuzzer.

A short campaign runs in the default suite (in-process, through the CLI, and as a
differential of the compiled and the pure path); the long one is ``make soak``. The
fuzzer's own classifier is tested first: a fuzzer that cannot fail proves nothing.
"""

from __future__ import annotations

import json
from dataclasses import replace
from types import SimpleNamespace

import cbor2
import pytest

from agent.audit.verify import Message, verify_messages
from agent.cli import main
from agent.tools.bench.fuzz import (
    BOMB_MAX_BYTES,
    BOMB_MAX_S,
    BOMBS,
    KINDS,
    Case,
    classify,
    format_report,
    make_case,
    make_corpus,
    plan,
    run_differential,
    run_fuzz,
)
from agent.tools.bench.fuzz.corpus import split_envelope
from agent.tools.bench.fuzz.envelope import ENVELOPE_VARIANTS, build, signed_parts
from agent.tools.bench.fuzz.rawcbor import Int, Map, encode, head

SEED = 12


@pytest.fixture(scope="module")
def corpus():
    return make_corpus(SEED)


def _finding(file: str, kind: str = "BAD_SIGNATURE", detail: str = "") -> SimpleNamespace:
    return SimpleNamespace(kind=kind, seq=3, file=file, detail=detail)


def _result(*findings: SimpleNamespace) -> SimpleNamespace:
    return SimpleNamespace(findings=list(findings))


def _with(stream, target: int, raw: bytes, **kw) -> Case:
    files = list(stream.files)
    files[target] = raw
    return Case(0, kw.pop("kind", "hand-made"), "hand-made", stream, tuple(files), (target,), **kw)


# -- the fuzzer itself -------------------------------------------------------------------


def test_corpus_is_the_same_bytes_from_the_same_seed_and_verifies(corpus):
    again = make_corpus(SEED)
    assert [s.files for s in again] == [s.files for s in corpus]
    assert [s.files for s in make_corpus(SEED + 1)] != [s.files for s in corpus]
    for stream in corpus:
        msgs = [Message(raw, f"{i:06d}.cose") for i, raw in enumerate(stream.files)]
        r = verify_messages(msgs, [stream.public])
        assert r.ok and not r.findings, [str(f) for f in r.findings]


def test_corpus_has_claims_for_the_claims_mutations_to_hit(corpus):
    ours = cbor2.loads(split_envelope(corpus[0].files[2])[1])[-70001]
    assert ours[6][0][7], "a rule with episodes"
    assert isinstance(ours[7][0][2], float), "a risk score"
    assert ours[8]["sources"][0]["offline"], "a per-source health record with ranges"


def test_a_changed_payload_with_no_finding_is_undetected(corpus):
    stream = corpus[0]
    protected, payload, signature = split_envelope(stream.files[3])
    forged = payload.replace(b"excursion", b"exCursion")
    case = _with(stream, 3, build(protected, forged, signature))
    assert classify(case, _result()) == "undetected"
    assert classify(case, _result(_finding("ed25519/000003.cose"))) == "rejected"


def test_an_envelope_change_with_no_finding_is_accepted_identical(corpus):
    stream = corpus[0]
    raw = ENVELOPE_VARIANTS["unprotected-x"](*split_envelope(stream.files[6]))
    case = _with(stream, 6, raw)
    assert classify(case, _result()) == "accepted-identical"


def test_a_finding_about_the_next_file_only_is_the_wrong_file(corpus):
    stream = corpus[0]
    raw = ENVELOPE_VARIANTS["tag-d812"](*split_envelope(stream.files[2]))
    case = _with(stream, 2, raw)
    next_only = _result(_finding("ed25519/000003.cose", "PREV_MISMATCH"))
    assert classify(case, next_only) == "wrong-file"
    both = _result(_finding("ed25519/000003.cose", "PREV_MISMATCH", "prev is not 000002.cose"))
    assert classify(case, both) == "rejected"


def test_re_signed_payloads_pass_only_in_profile(corpus):
    stream = corpus[0]
    case = _with(stream, 6, stream.files[6] + b"", resigned=True, in_profile=True)
    assert classify(case, _result()) == "accepted"
    assert classify(replace(case, in_profile=False), _result()) == "undetected"
    assert classify(case, None, crash=True) == "crash"
    assert classify(case, _result(), invalid_json=True) == "invalid-json"


def test_a_splice_is_rejected_only_when_both_files_are_named(corpus):
    stream = corpus[0]
    files = list(stream.files)
    files[2], files[4] = files[4], files[2]
    case = Case(0, "splice", "swap 2<->4", stream, tuple(files), (2, 4))
    one = _result(_finding("ed25519/000004.cose", "REORDER"))
    assert classify(case, one) == "wrong-file"
    assert classify(case, _result(*one.findings, _finding("ed25519/000002.cose"))) == "rejected"


def test_every_envelope_variant_keeps_the_signed_bytes_and_changes_the_file(corpus):
    raw = corpus[1].files[0]
    parts = split_envelope(raw)
    assert build(*parts) == raw
    for name, variant in ENVELOPE_VARIANTS.items():
        out = variant(*parts)
        assert out != raw and signed_parts(out) == signed_parts(raw), name
        assert len(out) <= 64 * 1024, name


def test_hand_cbor_writes_the_non_shortest_and_duplicate_forms():
    assert head(0, 3, 8) == b"\x1b" + (3).to_bytes(8, "big")
    assert head(4, 4, 1) == b"\x98\x04"
    assert encode(Int(5, 2)) == b"\x19\x00\x05"
    assert encode(Map(((1, 2), (1, 3)))) == b"\xa2\x01\x02\x01\x03"
    doc = {-70001: {1: 2}, 6: 1.5, "b": [b"x"]}
    assert encode(doc) == cbor2.dumps(doc, canonical=True)


def test_cases_are_made_again_identically_and_cover_every_kind(corpus):
    kinds = {k for k, _ in plan(10 * len(KINDS) + 10 * len(BOMBS))}
    assert kinds == set(KINDS)
    assert sum(k == "bomb" for k, _ in plan(20_000)) == len(BOMBS)
    for i, (kind, bomb) in enumerate(plan(40)):
        a = make_case(i, kind, SEED, corpus, bomb)
        b = make_case(i, kind, SEED, make_corpus(SEED), bomb) if i < 3 else a
        assert a.files == b.files and a.mutation == b.mutation
        assert a.files != corpus[[s.name for s in corpus].index(a.stream.name)].files


def test_bench_fuzz_command_prints_the_counts_and_exits_by_them(capsys):
    code = main(["bench", "fuzz", "--cases", "12", "--seed", str(SEED), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert doc["cases"] == 12 and sum(r["cases"] for r in doc["counts"].values()) == 12
    bad = sum(
        r[o]
        for r in doc["counts"].values()
        for o in ("crash", "undetected", "accepted-identical", "wrong-file", "invalid-json")
    )
    assert code == (1 if bad or doc["cli_problems"] else 0)


# -- the short campaign (default suite) --------------------------------------------------


@pytest.fixture(scope="module")
def campaign():
    return run_fuzz(1500, SEED, cli_cases=15)


@pytest.fixture(scope="module")
def differential():
    return run_differential(300, SEED)


def _none(report, outcome: str) -> None:
    assert report.total(outcome) == 0, format_report(report)


def test_no_hostile_input_crashes_the_verifier(campaign):
    _none(campaign, "crash")


def test_no_unsigned_change_or_out_of_profile_payload_goes_undetected(campaign):
    _none(campaign, "undetected")


def test_the_envelope_is_not_malleable(campaign):
    _none(campaign, "accepted-identical")


def test_findings_name_the_altered_file(campaign):
    _none(campaign, "wrong-file")


def test_the_json_is_always_valid(campaign):
    _none(campaign, "invalid-json")


def test_bombs_are_rejected_cheaply(campaign):
    assert len(campaign.bombs) == len(BOMBS)
    assert all(b["outcome"] == "rejected" for b in campaign.bombs), campaign.bombs
    assert not campaign.bombs_over_limits, (BOMB_MAX_S, BOMB_MAX_BYTES, campaign.bombs_over_limits)


def test_the_cli_never_tracebacks_and_exits_0_1_or_2(campaign):
    assert campaign.cli_cases == 15
    assert campaign.cli_problems == [], format_report(campaign)


def test_compiled_and_pure_paths_agree_case_by_case(differential):
    assert {differential.compiled.implementation, differential.pure.implementation} == {
        "cython",
        "python",
    }
    assert differential.mismatches == [], differential.format()


def test_the_pure_path_passes_the_campaign_too(differential):
    assert not differential.pure.failed, differential.format()


# -- the long campaign (make soak) -------------------------------------------------------


@pytest.mark.soak
def test_long_campaign_on_both_paths():
    """20,000 cases and 400 through the CLI, on the compiled and on the pure path."""
    diff = run_differential(20_000, SEED, cli_cases=400)
    assert not diff.mismatches, diff.format()
    for report in (diff.compiled, diff.pure):
        assert report.cli_cases == 400
        assert not report.failed, diff.format()
        assert not report.bombs_over_limits, diff.format()
