"""A deterministic, seeded mutation fuzzer for the auditor's verifier (issue 13).

It makes its own genuine attestation streams from the seed (``corpus``), mutates one file
per case (``mutations``: bytes, envelope, ECDSA high-s, claims with and without
re-signing, splices, CBOR bombs), runs ``verify_messages`` -> ``analyze`` -> text and JSON
in-process and, for some cases, the CLI (``cli_check``), and counts the outcomes per kind
(``classify``). ``run_differential`` compares the compiled and the pure-Python path case
by case. ``edgegov bench fuzz`` is the command; tests/test_fuzz.py runs it.
"""

from agent.tools.bench.fuzz.campaign import plan, run_fuzz
from agent.tools.bench.fuzz.classify import BAD_OUTCOMES, OUTCOMES, CaseResult, classify, run_case
from agent.tools.bench.fuzz.corpus import Stream, make_corpus
from agent.tools.bench.fuzz.differential import run_differential
from agent.tools.bench.fuzz.mutations import BOMBS, KINDS, Case, make_case
from agent.tools.bench.fuzz.summary import (
    BOMB_MAX_BYTES,
    BOMB_MAX_S,
    DifferentialReport,
    FuzzReport,
    format_report,
)

__all__ = [
    "BAD_OUTCOMES",
    "BOMBS",
    "BOMB_MAX_BYTES",
    "BOMB_MAX_S",
    "KINDS",
    "OUTCOMES",
    "Case",
    "CaseResult",
    "DifferentialReport",
    "FuzzReport",
    "Stream",
    "classify",
    "format_report",
    "make_case",
    "make_corpus",
    "plan",
    "run_case",
    "run_differential",
    "run_fuzz",
]
