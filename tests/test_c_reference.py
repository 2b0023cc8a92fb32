"""The C reference encoder/decoder (firmware_bridge/c) agrees with the vectors and with Python.

Compiled here with the system C compiler; both directions: frames C writes
decode in Python, frames Python writes decode in C, over the vector file and
over random frames.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import FrameDecoder, encode_frame
from tests.c_tool import CTool, build, from_text, to_text
from tests.test_frames import CORRUPT, VALID, canon, frame_from_json, small_frames

C_ERR = {
    "crc_errors": "ERR crc",
    "framing_errors": "ERR framing",
    "version_errors": "ERR version",
    "unknown_types": "ERR type",
}


@pytest.fixture(scope="module")
def ctool(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CTool]:
    tool = CTool(build(Path(tmp_path_factory.mktemp("c"))))
    yield tool
    tool.close()


def test_reference_code_compiles_cleanly_as_strict_c99(ctool):
    assert (
        ctool.ask("enc 42 1700003600000 3 3600")
        == "0401032a01010780561cd08b010103100e01050c53a71300"
    )


@pytest.mark.parametrize(("name", "expect", "wire", "expected"), VALID, ids=[v[0] for v in VALID])
def test_c_encodes_every_valid_vector_byte_for_byte(ctool, name, expect, wire, expected):
    assert ctool.ask("enc " + to_text(frame_from_json(expected))) == wire.hex()


@pytest.mark.parametrize(("name", "expect", "wire", "expected"), VALID, ids=[v[0] for v in VALID])
def test_c_decodes_every_valid_vector_to_its_frame(ctool, name, expect, wire, expected):
    got = from_text(ctool.ask(f"dec {wire.hex()}"))
    assert canon(got) == canon(frame_from_json(expected))
    assert ctool.stream(b"\x00" + wire) == [ctool.ask(f"dec {wire.hex()}")]


@pytest.mark.parametrize(
    ("name", "expect", "wire", "expected"), CORRUPT, ids=[v[0] for v in CORRUPT]
)
def test_c_rejects_every_corrupt_vector_with_the_same_reason(ctool, name, expect, wire, expected):
    results = ctool.stream(b"\x00" + wire)
    assert results == ([] if expect == "ignored" else [C_ERR[expect]])


@settings(max_examples=300, deadline=None)
@given(frame=small_frames)
def test_frames_python_writes_decode_in_c(ctool, frame):
    wire = encode_frame(frame)
    assert canon(from_text(ctool.ask(f"dec {wire.hex()}"))) == canon(frame)


@settings(max_examples=300, deadline=None)
@given(frame=small_frames)
def test_frames_c_writes_decode_in_python(ctool, frame):
    wire = bytes.fromhex(ctool.ask("enc " + to_text(frame)))
    assert wire == encode_frame(frame)
    out = FrameDecoder().feed(wire)
    assert [canon(f) for f in out] == [canon(frame)]


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600))
def test_c_stream_and_python_decoder_agree_on_arbitrary_bytes(ctool, data):
    stream = b"\x00" + data + b"\x00"
    dec = FrameDecoder()
    py = [to_text(f) for f in dec.feed(stream)]
    c_ok = [r for r in ctool.stream(stream) if not r.startswith("ERR")]
    assert [canon(from_text(x)) for x in c_ok] == [canon(from_text(x)) for x in py]
    c_errors = sum(1 for r in ctool.stream(stream) if r.startswith("ERR"))
    s = dec.stats
    assert c_errors == s.crc_errors + s.framing_errors + s.version_errors + s.unknown_types


def test_float_bit_patterns_survive_both_directions(ctool):
    nan_payload = struct.unpack("<f", bytes.fromhex("0100c07f"))[0]
    from firmware_bridge import Data, Frame

    frame = Frame(1, 2, Data((nan_payload, -0.0, 1e-45)))
    wire = encode_frame(frame)
    assert ctool.ask("enc " + to_text(frame)) == wire.hex()
