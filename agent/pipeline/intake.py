"""The bounded queue between the sources' reader threads and the agent's main loop.

In: batches of readings from each source (``PortSource.deliver``, on its reader thread).
Out: the same batches, in order, to the main loop (``agent.pipeline.runner``).

A device that sends faster than the agent evaluates, signs and stores must not grow the
agent's memory without bound. The queue holds at most ``capacity`` readings. A reader that
finds it full waits up to ``wait_s`` for room (backpressure: it reads nothing meanwhile, so
the port's buffer fills and a device on a pty, or with flow control, slows down); if there
is still no room, the batch is shed and counted on its source's quality ledger
(``readings_shed_overload``, and a problem that marks the window degraded), so the shedding
is in the signed evidence of the window it happened in. Nothing is dropped silently.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from agent.sources.reading import ReadingBatch

__all__ = ["CAPACITY", "SHED_COUNTER", "SHED_PROBLEM", "Intake"]

log = logging.getLogger("edgegov.agent")

#: Readings the queue holds at most by default (config ``evidence.intake_readings``):
#: about 1 s of a fast device, ~10 MB of readings.
CAPACITY = 65_536
SHED_COUNTER = "readings_shed_overload"
SHED_PROBLEM = "readings shed: the agent could not keep up with this source (its queue was full)"
_LOG_EVERY_S = 10.0


class Intake:
    """A FIFO of reading batches bounded by the readings it holds (module docstring).

    ``get``/``get_nowait``/``empty`` behave as :class:`queue.Queue`'s (``queue.Empty``).
    ``on_shed(batch)`` is called, on the reader's thread, for each batch shed.
    """

    def __init__(
        self,
        on_shed: Callable[[ReadingBatch], None],
        capacity: int = CAPACITY,
        wait_s: float = 0.05,
    ) -> None:
        self._items: deque[ReadingBatch] = deque()
        self._held = 0  # readings in _items
        self._cond = threading.Condition()
        self._on_shed = on_shed
        self.capacity = capacity
        self.wait_s = wait_s
        self.shed = 0  # readings shed since the start (all sources)
        self._logged = 0.0

    def put(self, batch: ReadingBatch) -> None:
        """Queue ``batch``, waiting up to ``wait_s`` for room; shed it if none comes.

        A batch larger than the whole capacity is queued when the queue is empty (it
        came from one read of the port; splitting it would gain nothing).
        """
        n = len(batch)
        with self._cond:
            room = self._cond.wait_for(
                lambda: self._held == 0 or self._held + n <= self.capacity, self.wait_s
            )
            if room:
                self._items.append(batch)
                self._held += n
                self._cond.notify_all()
                return
            self.shed += n
        self._on_shed(batch)
        now = time.monotonic()
        if now - self._logged >= _LOG_EVERY_S:
            self._logged = now
            log.warning(
                "%s (%d reading(s) held); %d reading(s) shed since the start, each counted "
                "in its window's evidence (%s)",
                SHED_PROBLEM,
                self.capacity,
                self.shed,
                SHED_COUNTER,
            )

    def get(self, timeout: float) -> ReadingBatch:
        with self._cond:
            if not self._cond.wait_for(lambda: bool(self._items), timeout):
                raise queue.Empty
            return self._pop()

    def get_nowait(self) -> ReadingBatch:
        with self._cond:
            if not self._items:
                raise queue.Empty
            return self._pop()

    def empty(self) -> bool:
        with self._cond:
            return not self._items

    def _pop(self) -> ReadingBatch:
        batch = self._items.popleft()
        self._held -= len(batch)
        self._cond.notify_all()
        return batch
