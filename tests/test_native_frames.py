"""The columnar frame decoder: compiled module and pure twin agree with each other and the codec.

Every behaviour test runs on both implementations; differential tests feed
them (and firmware_bridge.FrameDecoder, the reference) the same random and
mutated streams.
"""

from __future__ import annotations

import importlib
import math
import os
import random
import subprocess
import sys
import time
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import Data, Frame, FrameDecoder, Heartbeat, Hello, encode_frame
from tests.test_frames import canon, small_frames

compiled = importlib.import_module("native._frames")  # a build failure is a test failure
twin = importlib.import_module("native._frames_py")
IMPLS = [compiled, twin]
ERRORS = ("crc_errors", "framing_errors", "version_errors", "unknown_types")


@pytest.fixture(params=IMPLS, ids=["cython", "python"])
def impl(request):
    return request.param


def data_wire(seq: int, values: tuple[float, ...], ns: int = 1, ts: int = 1000) -> bytes:
    return encode_frame(Frame(seq, ts, Data(values, ns, 10)))


def as_tuple(batch) -> tuple:
    """Everything a batch says, comparably (float bits via repr, NaN-safe)."""
    return (
        batch.seq.tolist(),
        batch.device_ms.tolist(),
        [[repr(v) for v in row] for row in batch.values.tolist()],
        [(p, canon(f)) for p, f in batch.others],
        batch.frame_seq.tolist(),
        batch.frame_samples.tolist(),
    )


def run(mod, stream: bytes, n_channels: int, cuts: list[int] = ()) -> tuple[list, dict]:
    dec = mod.BatchDecoder(n_channels)
    out, prev = [], 0
    for c in [*sorted(cuts), len(stream)]:
        out.append(as_tuple(dec.feed(stream[prev:c])))
        prev = c
    return out, dec.stats()


# --------------------------------------------------------------------------- selector


def test_selector_uses_the_compiled_module_unless_edgegov_pure_is_set():
    code = "import native.frames as f; print(f.IMPLEMENTATION, f.BatchDecoder.__module__)"
    env = {k: v for k, v in os.environ.items() if k != "EDGEGOV_PURE"}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    pure = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "EDGEGOV_PURE": "1"},
        capture_output=True,
        text=True,
    )
    assert plain.stdout.split() == ["cython", "native._frames"], plain.stderr
    assert pure.stdout.split() == ["python", "native._frames_py"], pure.stderr


# --------------------------------------------------------------------------- behaviour


def test_data_frames_become_columns_in_channel_order(impl):
    stream = b"\x00" + data_wire(5, (1.5, 2.5, 3.5)) + data_wire(6, (4.0, 5.0, 6.0))
    b = impl.BatchDecoder(3).feed(stream)
    assert b.values.shape == (3, 2) and b.values.dtype == np.float64
    assert b.values.tolist() == [[1.5, 4.0], [2.5, 5.0], [3.5, 6.0]]
    assert b.seq.tolist() == [5, 6] and b.device_ms.tolist() == [1000, 1000]
    assert b.frame_seq.tolist() == [5, 6] and b.frame_samples.tolist() == [1, 1]
    assert b.others == [] and len(b) == 2


def test_batched_samples_get_their_own_timestamps(impl):
    values = (1.0, 10.0, 2.0, 20.0, 3.0, 30.0)  # 3 samples x 2 channels, sample-major
    b = impl.BatchDecoder(2).feed(b"\x00" + data_wire(9, values, ns=3, ts=5000))
    assert b.values.tolist() == [[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]]
    assert b.device_ms.tolist() == [5000, 5010, 5020]
    assert b.seq.tolist() == [9, 9, 9] and b.frame_samples.tolist() == [3]


def test_other_frames_come_out_parsed_in_stream_order(impl):
    hello = Frame(0, 1, Hello("S", "f", ()))
    hb = Frame(3, 2, Heartbeat(7))
    wrong_width = Frame(4, 3, Data((1.0,)))  # one channel where two were announced
    stream = (
        b"\x00"
        + encode_frame(hello)
        + data_wire(1, (1.0, 2.0))
        + data_wire(2, (3.0, 4.0))
        + encode_frame(hb)
        + encode_frame(wrong_width)
    )
    b = impl.BatchDecoder(2).feed(stream)
    assert [(p, canon(f)) for p, f in b.others] == [
        (0, canon(hello)),
        (2, canon(hb)),
        (2, canon(wrong_width)),
    ]
    assert len(b) == 2


def test_without_a_schema_every_data_frame_is_passed_on_whole(impl):
    b = impl.BatchDecoder(0).feed(b"\x00" + data_wire(1, (1.0, 2.0)))
    assert len(b) == 0 and [canon(f) for _, f in b.others] == [
        canon(Frame(1, 1000, Data((1.0, 2.0), 1, 10)))
    ]


def test_corruption_is_counted_and_resync_takes_one_frame(impl):
    good = [data_wire(i, (float(i),)) for i in range(4)]
    hit = bytearray(good[1])
    hit[5] ^= 0x10
    stream = b"\x00" + good[0] + bytes(hit) + b"\x55" * 30 + b"\x00" + good[2] + good[3]
    dec = impl.BatchDecoder(1)
    b = dec.feed(stream)
    assert b.seq.tolist() == [0, 2, 3]
    s = dec.stats()
    assert s["frames_ok"] == 3 and s["crc_errors"] + s["framing_errors"] == 2
    assert s["resyncs"] == 1 and s["bytes_discarded"] == len(hit) - 1 + 30


def test_oversized_length_and_garbage_runs_do_not_buffer_without_bound(impl):
    dec = impl.BatchDecoder(1)
    dec.feed(b"\x00")
    for _ in range(100):
        assert len(dec.feed(b"\x01" * 10_000)) == 0
    b = dec.feed(b"\x00" + data_wire(1, (2.0,)))
    assert b.seq.tolist() == [1]
    assert dec.stats()["framing_errors"] == 1 and dec.stats()["resyncs"] == 1


def test_rejects_bad_channel_counts_as_misuse(impl):
    with pytest.raises(ValueError):
        impl.BatchDecoder(256)
    with pytest.raises(ValueError):
        impl.BatchDecoder(1).set_channels(-1)


# --------------------------------------------------------------------------- differential


def reference(stream: bytes) -> tuple[list[Frame], dict[str, int]]:
    dec = FrameDecoder()
    return dec.feed(stream), dec.stats.as_dict()


def check_agree(stream: bytes, n_channels: int, cuts: list[int]) -> None:
    c_out, c_stats = run(compiled, stream, n_channels, cuts)
    p_out, p_stats = run(twin, stream, n_channels, cuts)
    assert c_out == p_out
    assert c_stats == p_stats
    # And both agree with the reference codec, frame for frame.
    ref_frames, ref_stats = reference(stream)
    for k in (*ERRORS, "bytes_discarded", "frames_ok"):
        assert c_stats[k] == ref_stats[k], k
    seqs = [s for part in c_out for s in part[4]]
    ref_cols = [
        f.seq
        for f in ref_frames
        if isinstance(f.body, Data) and n_channels and f.body.n_channels == n_channels
    ]
    assert seqs == ref_cols


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(small_frames, max_size=10),
    n_channels=st.integers(0, 4),
    data=st.data(),
)
def test_compiled_twin_and_codec_agree_on_mutated_streams(frames, n_channels, data):
    stream = bytearray(b"\x00" + b"".join(encode_frame(f) for f in frames))
    for _ in range(data.draw(st.integers(0, 6))):
        if not stream:
            break
        i = data.draw(st.integers(0, len(stream) - 1))
        op = data.draw(st.sampled_from(["flip", "drop", "insert", "zero"]))
        if op == "flip":
            stream[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "drop":
            del stream[i]
        elif op == "insert":
            stream.insert(i, data.draw(st.integers(0, 255)))
        else:
            stream[i] = 0
    stream += data.draw(st.binary(max_size=40))
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    check_agree(bytes(stream), n_channels, cuts)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=2000), n_channels=st.integers(0, 3))
def test_arbitrary_bytes_never_raise_and_both_agree(data, n_channels):
    check_agree(data, n_channels, [len(data) // 3])


def test_a_frame_split_at_every_byte_position_decodes_the_same(impl):
    wire = b"\x00" + data_wire(7, (1.0, 2.0, 3.0))
    for cut in range(len(wire) + 1):
        dec = impl.BatchDecoder(3)
        a, b = dec.feed(wire[:cut]), dec.feed(wire[cut:])
        assert a.seq.tolist() + b.seq.tolist() == [7], cut
        assert dec.stats()["frames_ok"] == 1


# --------------------------------------------------------------------------- fuzzing


@pytest.mark.slow
def test_ten_megabytes_of_random_and_mutated_bytes_never_crash_hang_or_grow():
    """>= 10 MB through the compiled decoder (and 1 MB of it through the twin, compared)."""
    rng = random.Random(20260101)
    frames = [data_wire(i, (float(i), -1.0, math.pi)) for i in range(2000)]
    clean = b"".join(frames)
    chunks = []
    total = 0
    while total < 10_500_000:
        kind = rng.random()
        if kind < 0.3:
            chunk = rng.randbytes(rng.randint(1, 70_000))
        else:
            start = rng.randrange(len(clean) - 60_000)
            chunk = bytearray(clean[start : start + rng.randint(1000, 60_000)])
            for _ in range(rng.randint(0, 40)):
                chunk[rng.randrange(len(chunk))] = rng.randrange(256)
            if rng.random() < 0.2:
                chunk[rng.randrange(len(chunk)) :] = rng.randbytes(rng.randint(0, 600))
            chunk = bytes(chunk)
        chunks.append(chunk)
        total += len(chunk)
    dec = compiled.BatchDecoder(3)
    tracemalloc.start()
    t0 = time.perf_counter()
    samples = 0
    for chunk in chunks:
        b = dec.feed(chunk)
        samples += len(b)
        assert b.values.shape == (3, len(b))
    elapsed = time.perf_counter() - t0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    s = dec.stats()
    assert total >= 10_000_000 and samples > 10_000
    assert s["frames_ok"] >= samples and s["crc_errors"] + s["framing_errors"] > 100
    assert elapsed < 10, f"{total} bytes took {elapsed:.1f} s"
    assert peak < 64 * 2**20, f"peak traced memory {peak} bytes"
    # On the first megabyte the twin agrees exactly.
    head = b"".join(chunks)[:1_000_000]
    assert run(compiled, head, 3, [333_333])[1] == run(twin, head, 3, [333_333])[1]
