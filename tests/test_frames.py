"""The serial frame codec: COBS, CRC, encode/decode, the stream decoder, test vectors."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import firmware_bridge
from firmware_bridge import (
    Ack,
    ChannelKind,
    ChannelSpec,
    Command,
    Data,
    DecoderStats,
    DeviceError,
    Frame,
    FrameDecoder,
    Heartbeat,
    Hello,
    MsgType,
    cobs,
    crc,
    encode_frame,
)
from firmware_bridge.frames import MAX_ENCODED_LEN

VECTORS = Path(firmware_bridge.__file__).parent / "vectors" / "frames.hex"
COUNTERS = ("crc_errors", "framing_errors", "version_errors", "unknown_types")


# --------------------------------------------------------------------------- helpers


def canon(frame: Frame) -> tuple[object, ...]:
    """A comparable form of a frame: float32 bit patterns instead of floats (NaN != NaN)."""
    body = frame.body
    if isinstance(body, Data):
        bits = tuple("nan" if math.isnan(v) else struct.pack("<f", v) for v in body.values)
        body = (bits, body.n_samples, body.interval_ms)
    return (frame.seq, frame.timestamp_ms, frame.type, body)


def payload_len(body: object) -> int:
    """Payload size computed independently of the encoder, from PROTOCOL.md §4."""
    if isinstance(body, Hello):
        strs = [body.serial, body.firmware] + [s for c in body.channels for s in (c.name, c.unit)]
        return 2 + sum(1 + len(s.encode()) for s in strs) + 9 * len(body.channels)
    if isinstance(body, Data):
        return 4 + 4 * len(body.values)
    if isinstance(body, (Heartbeat, Ack)):
        return 4
    if isinstance(body, DeviceError):
        return 3 + len(body.message.encode())
    assert isinstance(body, Command)
    return 2 + len(body.arg)


def decode_all(data: bytes) -> tuple[list[Frame], DecoderStats]:
    decoder = FrameDecoder()
    frames = decoder.feed(data)
    return frames, decoder.stats


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
texts = st.text(max_size=24)
f32 = st.floats(width=32, allow_nan=False)
channels = st.lists(
    st.builds(
        ChannelSpec,
        st.text(max_size=12),
        st.text(max_size=6),
        st.sampled_from(ChannelKind),
        f32,
        f32,
    ),
    max_size=6,
)


@st.composite
def data_bodies(draw: st.DrawFn, max_values: int = 59, nan: bool = True) -> Data:
    ns = draw(st.integers(1, 8))
    nc = draw(st.integers(0, max(0, max_values // ns)))
    values = draw(st.lists(st.floats(width=32, allow_nan=nan), min_size=nc * ns, max_size=nc * ns))
    return Data(tuple(values), ns, draw(st.integers(0, 0xFFFF)))


bodies = st.one_of(
    st.builds(Hello, texts, texts, channels.map(tuple), st.integers(0, 255)),
    data_bodies(),
    st.builds(Heartbeat, u32),
    st.builds(DeviceError, st.integers(0, 0xFFFF), st.text(max_size=60)),
    st.builds(Ack, u32),
    st.builds(Command, st.integers(0, 255), st.binary(max_size=200)),
)
# Frames that always fit and whose floats survive re-encoding bit for bit.
small_bodies = st.one_of(
    st.builds(Hello, st.text(max_size=8), st.text(max_size=8), st.just((ChannelSpec("t", "Cel"),))),
    data_bodies(max_values=8, nan=False),
    st.builds(Heartbeat, u32),
    st.builds(DeviceError, st.integers(0, 0xFFFF), st.text(max_size=8)),
    st.builds(Ack, u32),
    st.builds(Command, st.integers(0, 255), st.binary(max_size=8)),
)
small_frames = st.builds(Frame, u32, u64, small_bodies)


# --------------------------------------------------------------------------- API surface


def test_public_names_are_exactly_the_documented_api():
    assert set(firmware_bridge.__all__) == {
        "MAX_FRAME_LEN",
        "PROTOCOL_VERSION",
        "SCENARIOS",
        "Ack",
        "Body",
        "ChannelKind",
        "ChannelSpec",
        "Command",
        "CommandCode",
        "Data",
        "DecoderStats",
        "DeviceError",
        "Emulator",
        "Frame",
        "FrameDecoder",
        "Heartbeat",
        "Hello",
        "MsgType",
        "PtyPair",
        "encode_frame",
        "open_pty",
    }
    for name in firmware_bridge.__all__:
        assert hasattr(firmware_bridge, name), name


def test_message_type_values_match_the_protocol():
    assert {t.name: t.value for t in MsgType} == {
        "HELLO": 1,
        "DATA": 2,
        "HEARTBEAT": 3,
        "ERROR": 4,
        "ACK": 0x81,
        "COMMAND": 0x82,
    }


def test_frame_type_follows_body_class():
    assert Frame(0, 0, Hello("s", "f", ())).type is MsgType.HELLO
    assert Frame(0, 0, Command(1)).type is MsgType.COMMAND
    with pytest.raises(ValueError):
        Frame(0, 0, "not a body").type  # type: ignore[arg-type]  # noqa: B018


def test_stats_as_dict_lists_every_counter():
    stats = DecoderStats(frames_ok=3, crc_errors=1)
    assert stats.as_dict() == {
        "frames_ok": 3,
        "crc_errors": 1,
        "framing_errors": 0,
        "unknown_types": 0,
        "version_errors": 0,
        "bytes_discarded": 0,
    }


# --------------------------------------------------------------------------- CRC and COBS


def test_crc_matches_the_catalogued_check_value():
    assert crc.crc32(b"123456789") == 0xCBF43926 == crc.CHECK_VALUE


def _crc32_bitwise(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c ^= b
        for _ in range(8):
            c = (c >> 1) ^ (0xEDB88320 if c & 1 else 0)
    return c ^ 0xFFFFFFFF


@given(st.binary(max_size=300))
def test_crc_equals_the_bitwise_definition_in_protocol_md(data):
    assert crc.crc32(data) == _crc32_bitwise(data)


# Examples from Cheshire & Baker / the Wikipedia COBS article.
COBS_EXAMPLES = [
    (b"", "01"),
    (b"\x00", "0101"),
    (b"\x00\x00", "010101"),
    (b"\x00\x11\x00", "01021101"),
    (b"\x11\x22\x00\x33", "0311220233"),
    (b"\x11\x22\x33\x44", "0511223344"),
    (b"\x11\x00\x00\x00", "0211010101"),
    (bytes(range(1, 255)), "ff" + bytes(range(1, 255)).hex()),
    (bytes(range(0, 255)), "01ff" + bytes(range(1, 255)).hex()),
    (bytes(range(1, 256)), "ff" + bytes(range(1, 255)).hex() + "02ff"),
    (bytes(range(2, 256)) + b"\x00", "ff" + bytes(range(2, 256)).hex() + "0101"),
    (bytes(range(3, 256)) + b"\x00\x01", "fe" + bytes(range(3, 256)).hex() + "0201"),
]


@pytest.mark.parametrize(("data", "encoded"), COBS_EXAMPLES)
def test_cobs_matches_published_examples(data, encoded):
    assert cobs.encode(data).hex() == encoded
    assert cobs.decode(bytes.fromhex(encoded)) == data


@given(st.binary(max_size=600))
def test_cobs_round_trips_without_zero_bytes_and_within_overhead(data):
    encoded = cobs.encode(data)
    assert 0 not in encoded
    assert len(encoded) <= cobs.max_encoded_len(len(data))
    assert cobs.decode(encoded) == data


def test_cobs_decode_accepts_a_redundant_final_01_block():
    assert cobs.decode(b"\xff" + bytes(range(1, 255)) + b"\x01") == bytes(range(1, 255))


@pytest.mark.parametrize(
    "bad", [b"", b"\x00", b"\x03\x11\x00", b"\x05\x11\x22", b"\x02\x11\x04\x22"]
)
def test_cobs_decode_rejects_invalid_input_by_returning_none(bad):
    assert cobs.decode(bad) is None


# --------------------------------------------------------------------------- encode / decode


@given(seq=u32, ts=u64, body=bodies)
def test_every_message_type_round_trips_or_is_refused_when_too_big(seq, ts, body):
    frame = Frame(seq, ts, body)
    size = 18 + payload_len(body)
    if size > 256:
        with pytest.raises(ValueError, match="maximum is 256"):
            encode_frame(frame)
        return
    wire = encode_frame(frame)
    assert wire.index(0) == len(wire) - 1  # one delimiter, at the end
    assert len(cobs.decode(wire[:-1]) or b"") == size
    frames, stats = decode_all(wire)
    assert [canon(f) for f in frames] == [canon(frame)]
    assert stats.frames_ok == 1 and stats.bytes_discarded == 0


def test_header_layout_is_little_endian_at_the_documented_offsets():
    wire = encode_frame(Frame(0x11223344, 0x0102030405060708, Heartbeat(0xAABBCCDD)))
    raw = cobs.decode(wire[:-1])
    assert raw is not None
    assert raw[:18].hex() == "0103443322110807060504030201ddccbbaa"
    assert raw[18:] == struct.pack("<I", _crc32_bitwise(raw[:18]))


def test_data_nan_decodes_to_a_python_float_nan():
    (frame,), _ = decode_all(encode_frame(Frame(1, 2, Data((float("nan"), 1.5)))))
    assert isinstance(frame.body, Data)
    assert math.isnan(frame.body.values[0]) and frame.body.values[1] == 1.5


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (Frame(2**32, 0, Ack(0)), "Frame.seq"),
        (Frame(-1, 0, Ack(0)), "Frame.seq"),
        (Frame(0, 2**64, Ack(0)), "Frame.timestamp_ms"),
        (Frame(0, 0, Ack(2**32)), "Ack.acked_seq"),
        (Frame(0, 0, Heartbeat(True)), "Heartbeat.uptime_s"),
        (Frame(0, 0, DeviceError(0x10000, "x")), "DeviceError.code"),
        (Frame(0, 0, Command(256)), "Command.code"),
        (Frame(0, 0, Command(1, b"x" * 256)), "Command.arg"),
        (Frame(0, 0, Hello("é" * 128, "", ())), "Hello.serial is 256 bytes"),
        (Frame(0, 0, Hello("s", "f", ("t",))), r"Hello.channels\[0\]"),  # type: ignore[arg-type]
        (Frame(0, 0, Data((1e39,))), "float32"),
        (Frame(0, 0, Data((0.0,) * 59)), "maximum is 256"),
        (Frame(0, 0, Data((0.0,) * 3, 2)), "n_samples"),
        (Frame(0, 0, Data((), 0)), "n_samples"),
        (Frame(0, 0, Data((1.0,), 1, 70000)), "Data.interval_ms"),
        (Frame(0, 0, Hello("s", "f", (), 256)), "Hello.max_version"),
        (Frame(0, 0, "body"), "not a frame body"),  # type: ignore[arg-type]
    ],
)
def test_encoding_an_unrepresentable_frame_raises_value_error(frame, message):
    with pytest.raises(ValueError, match=message):
        encode_frame(frame)


# --------------------------------------------------------------------------- test vectors


def load_vectors() -> list[tuple[str, str, bytes, dict | None]]:
    vectors = []
    for line in VECTORS.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith("#"):
            continue
        name, expect, wire, *rest = line.split(" ", 3)
        vectors.append((name, expect, bytes.fromhex(wire), json.loads(rest[0]) if rest else None))
    return vectors


def frame_from_json(d: dict) -> Frame:
    t = d["type"]
    body: object
    if t == "HELLO":
        chans = tuple(
            ChannelSpec(n, u, ChannelKind(k), lo, hi) for n, u, k, lo, hi in d["channels"]
        )
        body = Hello(d["serial"], d["firmware"], chans, d["max_version"])
    elif t == "DATA":
        body = Data(tuple(float(v) for v in d["values"]), d["n_samples"], d["interval_ms"])
    elif t == "HEARTBEAT":
        body = Heartbeat(d["uptime_s"])
    elif t == "ERROR":
        body = DeviceError(d["code"], d["message"])
    elif t == "ACK":
        body = Ack(d["acked_seq"])
    else:
        assert t == "COMMAND"
        body = Command(d["code"], bytes.fromhex(d["arg"]))
    frame = Frame(d["seq"], d["timestamp_ms"], body)  # type: ignore[arg-type]
    assert frame.type.name == t
    return frame


VECTOR_LIST = load_vectors()
VALID = [v for v in VECTOR_LIST if v[1] == "ok"]
CORRUPT = [v for v in VECTOR_LIST if v[1] != "ok"]


def test_vector_file_covers_every_type_and_every_kind_of_corruption():
    names = [v[0] for v in VECTOR_LIST]
    assert len(names) == len(set(names))
    assert {v[1] for v in VECTOR_LIST} == {"ok", "ignored", *COUNTERS}
    assert {frame_from_json(v[3]).type for v in VALID} == set(MsgType)  # type: ignore[arg-type]
    raw_sizes = {len(cobs.decode(v[2][:-1]) or b"") for v in VALID}
    assert 256 in raw_sizes and min(raw_sizes) > 18


@pytest.mark.parametrize(("name", "expect", "wire", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid_vector_decodes_to_its_frame(name, expect, wire, expected):
    frames, stats = decode_all(b"\x00" + wire)
    assert [canon(f) for f in frames] == [canon(frame_from_json(expected))]
    assert stats.as_dict() == {**DecoderStats().as_dict(), "frames_ok": 1}


@pytest.mark.parametrize(("name", "expect", "wire", "expected"), VALID, ids=[v[0] for v in VALID])
def test_encoding_the_vector_frame_reproduces_its_wire_bytes(name, expect, wire, expected):
    assert encode_frame(frame_from_json(expected)).hex() == wire.hex()


@pytest.mark.parametrize(
    ("name", "expect", "wire", "expected"), CORRUPT, ids=[v[0] for v in CORRUPT]
)
def test_corrupt_vector_is_counted_and_skipped(name, expect, wire, expected):
    frames, stats = decode_all(b"\x00" + wire)
    assert frames == []
    want = DecoderStats().as_dict()
    if expect != "ignored":
        want[expect] = 1
        want["bytes_discarded"] = len(wire) - wire.count(0)
    assert stats.as_dict() == want


# --------------------------------------------------------------------------- stream behaviour


def wire_of(frames: list[Frame]) -> bytes:
    return b"".join(encode_frame(f) for f in frames)


@settings(max_examples=200)
@given(frames=st.lists(small_frames, min_size=1, max_size=8), data=st.data())
def test_bit_flips_never_crash_and_only_untouched_frames_come_out(frames, data):
    wires = [encode_frame(f) for f in frames]
    stream = bytearray(b"\x00" + b"".join(wires))
    bits = data.draw(st.sets(st.integers(0, len(stream) * 8 - 1), max_size=6))
    touched_bytes = {b // 8 for b in bits}
    for b in bits:
        stream[b // 8] ^= 1 << (b % 8)
    # Frame i is untouched if none of its bytes, its delimiter, or the delimiter
    # before it was flipped; those, and only those, must decode.
    expected = []
    start = 1
    for frame, w in zip(frames, wires):
        if not touched_bytes & set(range(start - 1, start + len(w))):
            expected.append(canon(frame))
        start += len(w)
    decoder = FrameDecoder()
    out = decoder.feed(bytes(stream)) + decoder.feed(b"\x00")
    assert [canon(f) for f in out] == expected
    # Byte accounting: every non-delimiter byte is in a delivered frame or discarded.
    delivered = sum(len(encode_frame(f)) - 1 for f in out)
    payload_bytes = len(stream) + 1 - (bytes(stream) + b"\0").count(0)
    assert delivered + decoder.stats.bytes_discarded == payload_bytes


@settings(max_examples=200)
@given(a=small_frames, b=small_frames, c=small_frames, garbage=st.binary(max_size=700))
def test_garbage_costs_at_most_the_frame_it_hits(a, b, c, garbage):
    stream = b"\x00" + encode_frame(a) + garbage + encode_frame(b) + encode_frame(c)
    frames, stats = decode_all(stream)
    b_survives = garbage == b"" or garbage.endswith(b"\x00")
    assert [canon(f) for f in frames] == [canon(a)] + [canon(b)] * b_survives + [canon(c)]
    errors = sum(stats.as_dict()[k] for k in COUNTERS)
    assert (errors > 0) == any(garbage)


@settings(max_examples=200)
@given(
    frames=st.lists(small_frames, max_size=6),
    noise=st.lists(st.binary(max_size=300), max_size=6),
    cuts=st.lists(st.integers(0, 4000), max_size=20),
)
def test_feeding_in_any_chunks_equals_feeding_at_once(frames, noise, cuts):
    parts = [encode_frame(f) for f in frames]
    for i, junk in enumerate(noise):
        parts.insert(i * 2 % (len(parts) + 1), junk)
    stream = b"".join(parts)
    bulk = FrameDecoder()
    bulk_out = bulk.feed(stream)
    chunked = FrameDecoder()
    chunked_out = []
    edges = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for lo, hi in zip(edges, edges[1:]):
        chunked_out += chunked.feed(stream[lo:hi])
    assert [canon(f) for f in chunked_out] == [canon(f) for f in bulk_out]
    assert chunked.stats == bulk.stats


def test_byte_at_a_time_equals_bulk_on_a_mixed_stream():
    good = [Frame(i, 1000 + i, Data((float(i), 2.0, 0.0))) for i in range(5)]
    stream = (
        b"\x12\x34"  # tail of a frame from before we joined
        + b"\x00"
        + wire_of(good[:2])
        + b"\x55" * 400  # oversized run
        + b"\x00"
        + wire_of(good[2:3])
        + b"\xfe\xff\x01"  # junk glued to the next frame
        + wire_of(good[3:])
    )
    bulk = FrameDecoder()
    bulk_out = bulk.feed(stream)
    single = FrameDecoder()
    single_out = [f for i in range(len(stream)) for f in single.feed(stream[i : i + 1])]
    assert single_out == bulk_out == [good[0], good[1], good[2], good[4]]
    assert single.stats == bulk.stats
    assert bulk.stats.as_dict() == {
        "frames_ok": 4,
        "crc_errors": 0,
        "framing_errors": 2,
        "unknown_types": 0,
        "version_errors": 0,
        "bytes_discarded": 2 + 400 + 3 + len(encode_frame(good[3])) - 1,
    }


def test_partial_frame_before_the_first_delimiter_is_discarded_without_an_error():
    a, b = Frame(7, 1, Heartbeat(7)), Frame(8, 2, Heartbeat(8))
    wa = encode_frame(a)
    frames, stats = decode_all(wa[5:] + encode_frame(b))  # joined mid-frame
    assert frames == [b]
    assert stats == DecoderStats(frames_ok=1, bytes_discarded=len(wa) - 6)


def test_a_long_run_before_the_first_delimiter_is_discarded_and_then_errors_count():
    bad = bytearray(encode_frame(Frame(1, 1, Heartbeat(1))))
    bad[3] ^= 0x40
    decoder = FrameDecoder()
    assert decoder.feed(b"\x55" * 1000) == []  # overflows while not yet in sync
    assert decoder.feed(b"\x00" + bytes(bad)) == []
    assert decoder.stats.as_dict() == {
        **DecoderStats().as_dict(),
        "crc_errors": 1,
        "bytes_discarded": 1000 + len(bad) - 1,
    }


def test_a_complete_first_frame_without_a_leading_delimiter_is_accepted():
    a = Frame(0, 1, Hello("S", "F", ()))
    assert decode_all(encode_frame(a)) == ([a], DecoderStats(frames_ok=1))


def test_an_oversized_run_is_dropped_before_its_delimiter_arrives():
    decoder = FrameDecoder()
    decoder.feed(b"\x00")
    assert decoder.feed(b"\x55" * MAX_ENCODED_LEN) == []
    assert decoder.stats.framing_errors == 0  # could still be a frame
    decoder.feed(b"\x55")
    assert decoder.stats.framing_errors == 1  # cannot be a frame any more
    assert decoder.stats.bytes_discarded == MAX_ENCODED_LEN + 1
    decoder.feed(b"\x55" * 10_000)  # the rest of the run is not buffered
    assert decoder.stats.framing_errors == 1
    frame = Frame(1, 1, Ack(1))
    assert decoder.feed(b"\x00" + encode_frame(frame)) == [frame]
    assert decoder.stats.bytes_discarded == MAX_ENCODED_LEN + 1 + 10_000


def test_empty_frames_are_ignored_silently():
    frame = Frame(1, 1, Ack(1))
    assert decode_all(b"\x00\x00\x00" + encode_frame(frame) + b"\x00\x00") == (
        [frame],
        DecoderStats(frames_ok=1),
    )


@given(st.binary(max_size=2000))
def test_arbitrary_bytes_never_raise(data):
    decoder = FrameDecoder()
    decoder.feed(data)
    decoder.feed(data[::-1])
    assert decoder.stats.bytes_discarded <= 2 * len(data)
