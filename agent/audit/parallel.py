"""``audit verify --jobs N``: a stream's signatures checked ahead in worker processes.

In: the raw bytes of a stream's messages, in delivery order, the :class:`TrustStore` and
the number of jobs. Out: a :class:`SignatureChecks`, which :mod:`agent.audit.verify` asks,
per message (by its position in the stream), for the kid of the trusted key whose
signature check it passed in a worker, or None; or no checks at all, where the stream is
too short for workers to pay off or no process can be started here.

A worker's answer only spares this process the signature arithmetic for the same bytes and
key; every finding is still decided in :mod:`agent.audit.verify`, in delivery order, so
``--jobs N`` gives the result of ``--jobs 1`` to the byte. This module knows nothing of
findings, chains or logs, and does not import the verifier.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor

from agent.audit.trust import TrustStore
from agent.evidence.cose import decode_sign1

__all__ = ["SignatureChecks"]

# Below this many distinct messages (about 50 ms of work for one process) workers do not
# pay: starting them takes about 15 ms by fork, and a fork server's first start 0.2 s.
_PARALLEL_MIN = 512
_CHUNK = 64  # messages per task: a few ms of work, so the workers soon run ahead


class SignatureChecks:
    """The signatures of a stream, checked ahead in ``jobs - 1`` worker processes and this one.

    The signature arithmetic is the largest part of an audit (about half of a message's
    time with libsodium, more with ES256) and the only part that needs nothing but the
    message; the chain, the findings and the analysis read the whole stream in delivery
    order, and handing parsed claims between processes costs as much as parsing them. So
    the workers do only what each message needs alone (:func:`_checked_kids`: decode,
    resolve the key, :meth:`Sign1.verify`) on chunks of the stream, and hand back, per
    message, the kid of the key it verified with, or None. What stays here (about 60 % of
    one job's time, with the analysis ``audit verify`` prints) bounds the speed-up,
    whatever the number of workers.

    This process runs the one verification path as with one job, skipping only the
    signature arithmetic a worker has done for the same bytes and key: a worker's verdict
    can spare work, never decide a finding, so ``--jobs N`` prints what ``--jobs 1``
    prints. A chunk no worker has started when this process reaches it is taken back and
    checked here: this process is the ``jobs``-th worker, the one that takes up the slack
    (``make -j`` counts the same way: ``--jobs 2`` on two cores is two busy processes).
    """

    def __init__(
        self,
        pool: ProcessPoolExecutor,
        chunks: list[Future[list[bytes | None]]],
        where: dict[int, tuple[int, int]],
    ) -> None:
        self._pool = pool
        self._chunks = chunks
        self._where = where  # message order -> (chunk, index in it)
        self._kids: list[list[bytes | None] | None] = []  # chunks decided, in order

    @classmethod
    def start(
        cls,
        raws: Sequence[bytes],
        trust: TrustStore,
        jobs: int,
    ) -> SignatureChecks | None:
        """Hand the first delivery of each distinct message (``raws``: the stream's bytes, in
        delivery order) to ``jobs - 1`` workers, in chunks in stream order; None when there
        are too few messages for workers to pay off."""
        seen: set[bytes] = set()
        todo: list[int] = []
        for order, raw in enumerate(raws):
            if raw not in seen:
                seen.add(raw)
                todo.append(order)
        if len(todo) < _PARALLEL_MIN:
            return None
        workers = min(jobs - 1, -(-len(todo) // _CHUNK))  # no more workers than chunks
        try:
            pool = ProcessPoolExecutor(
                workers, mp_context=_pool_context(), initializer=_start_worker, initargs=(trust,)
            )
        except (OSError, NotImplementedError):  # no processes or semaphores here (a sandbox)
            return None  # one process gives the same result, only later
        chunks: list[Future[list[bytes | None]]] = []
        where: dict[int, tuple[int, int]] = {}
        try:
            for i in range(0, len(todo), _CHUNK):
                orders = todo[i : i + _CHUNK]
                where.update((o, (len(chunks), j)) for j, o in enumerate(orders))
                chunks.append(pool.submit(_checked_kids, [raws[o] for o in orders]))
        except BaseException as e:
            pool.shutdown(wait=True, cancel_futures=True)
            if isinstance(e, OSError):  # a worker could not be started: as above
                return None
            raise
        return cls(pool, chunks, where)

    def kid(self, order: int) -> bytes | None:
        """For the message at ``order``: the kid its signature verified with in a worker,
        or None (not handed out, taken back, or it did not verify there: this process
        checks it, and finds out why)."""
        spot = self._where.get(order)
        if spot is None:
            return None
        chunk, j = spot
        while len(self._kids) <= chunk:
            self._kids.append(_verdicts(self._chunks[len(self._kids)]))
        kids = self._kids[chunk]
        return kids[j] if kids is not None else None

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def _verdicts(chunk: Future[list[bytes | None]]) -> list[bytes | None] | None:
    """A chunk's verdicts (waiting while a worker is on it), or None: not started yet (taken
    back: checked here), or its worker died (killed, out of memory: checked here too)."""
    if chunk.cancel():
        return None
    try:
        return chunk.result()
    except Exception:
        return None


def _pool_context() -> multiprocessing.context.BaseContext:
    """Fork where it is safe, else a fork server (else spawn, where neither exists).

    A fork starts a worker in milliseconds with the trust store already in memory, but a
    fork of a process with other threads may inherit a lock one of them held (Python 3.12
    warns of it): so only from a single-threaded process, counted by the kernel
    (``/proc/self/task``, C libraries' threads too: numpy's OpenBLAS starts some). Else the
    trust store travels pickled (:meth:`TrustStore.__reduce__`) to workers forked from a
    server that has imported this module once (about 0.2 s, then milliseconds a worker).
    """
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods:
        try:
            alone = len(os.listdir("/proc/self/task")) == 1
        except OSError:  # not Linux: no way to count threads, and fork is unsafe on macOS
            alone = False
        if alone:
            return multiprocessing.get_context("fork")
    if "forkserver" not in methods:
        return multiprocessing.get_context("spawn")
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # read when the server starts (once a process)
    return ctx


_worker_trust: TrustStore | None = None  # a worker process's copy of the trust store


def _start_worker(trust: TrustStore) -> None:
    global _worker_trust
    _worker_trust = trust


def _checked_kids(raws: list[bytes]) -> list[bytes | None]:
    """In a worker: for each message, the kid of the trusted key whose :meth:`Sign1.verify`
    it passes, else None.

    Anything that goes wrong is None, never an exception: this process then takes the
    message through the whole path itself and meets the problem just as one job would.
    """
    trust = _worker_trust
    out: list[bytes | None] = []
    for raw in raws:
        try:
            if trust is None:
                raise RuntimeError("worker started without a trust store")
            msg = decode_sign1(raw)
            key = trust.resolve(msg).key
            msg.verify(key)
            out.append(key.kid)
        except Exception:
            out.append(None)
    return out
