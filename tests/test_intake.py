"""The bounded intake between the reader threads and the main loop (agent/pipeline/intake.py)."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from agent.pipeline.intake import Intake
from agent.sources.reading import Reading


def _batch(source: int, n: int, first: int = 0) -> list[Reading]:
    return [Reading(k, k, source, first + k, (float(k),)) for k in range(n)]


def test_batches_come_out_in_order_and_a_full_queue_sheds_after_waiting() -> None:
    shed: list[list[Reading]] = []
    q = Intake(shed.append, capacity=10, wait_s=0.05)
    q.put(_batch(0, 6))
    q.put(_batch(1, 4))
    t0 = time.monotonic()
    q.put(_batch(0, 1, first=6))  # no room: waits for it, then sheds
    waited = time.monotonic() - t0
    assert waited >= 0.04
    assert [len(b) for b in shed] == [1] and q.shed == 1
    assert [r.source for r in q.get(0.1)] == [0] * 6
    assert [r.source for r in q.get_nowait()] == [1] * 4
    assert q.empty()
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(0.01)


def test_a_reader_waiting_for_room_gets_it_when_the_loop_takes_a_batch() -> None:
    shed: list[list[Reading]] = []
    q = Intake(shed.append, capacity=5, wait_s=2.0)
    q.put(_batch(0, 5))
    done = threading.Event()

    def reader() -> None:
        q.put(_batch(0, 3, first=5))  # backpressure: blocks until there is room
        done.set()

    t = threading.Thread(target=reader)
    t.start()
    assert not done.wait(0.1)
    assert len(q.get(0.1)) == 5
    assert done.wait(2.0)
    t.join()
    assert shed == [] and len(q.get(0.1)) == 3


def test_one_read_larger_than_the_capacity_is_queued_when_the_queue_is_empty() -> None:
    shed: list[list[Reading]] = []
    q = Intake(shed.append, capacity=4, wait_s=0.01)
    q.put(_batch(0, 9))
    assert shed == [] and len(q.get_nowait()) == 9
