"""Continuity of the evidence across stops, crashes and storage faults (the agent's part).

In: the agent's state directory (the evidence store's journal of the open window, the
held-windows file, the policy evaluator's saved state). Out: an agent that continues
where the last run stopped, signs what it held, and says what it could not keep.
``agent.pipeline.runner.Agent`` takes these methods from :class:`ContinuityMixin`:

* the policy evaluator's state, checkpointed (``agent.pipeline.policy_state``) and brought
  to the signed digest at start (claim -70001/5 key 9);
* held windows (``agent.pipeline.held_windows``): saved when the store refuses writes
  and the agent must stop, signed first at the next start;
* the journal of the open window (``agent.evidence.journal``): flushed every
  ``FLUSH_S``, recovered after a crash into the first window of the next run;
* a storage fault while running: windows held in memory, an alert, a stop with the
  evidence at risk when the store is corrupt.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.config import AgentConfig
from agent.errors import (
    Error,
    StorageError,
    StoreCorruptError,
)
from agent.evidence.attester import Attester
from agent.evidence.claims import Restart
from agent.evidence.journal import FLUSH_S, Journal, SourceMark, last_rx_by_source
from agent.evidence.store import EvidenceStore, OutboxItem
from agent.identity.keys import Signer
from agent.pipeline.held_windows import FILE as HELD_FILE
from agent.pipeline.held_windows import (
    HeldWindows,
    decode_held,
    encode_held,
    save_held,
)
from agent.pipeline.intake import Intake
from agent.pipeline.policy_state import Checkpoints, replay_since
from agent.pipeline.service import Notifier
from agent.pipeline.window import Window
from agent.policy import PolicyBundle
from agent.policy.evaluator import Evaluator
from agent.risk.engine import RiskEngine
from agent.risk.onnx_model import RiskModel
from agent.sources import PortSource
from agent.sources.quality import merge_records
from agent.sources.reading import Reading, ReadingBatch
from agent.transport.publisher import Publisher

if TYPE_CHECKING:
    from agent.identity.pkcs11 import Pkcs11Signer
    from agent.pipeline.runner import AgentStats

__all__ = ["ContinuityMixin"]

log = logging.getLogger("edgegov.agent")


def _merged(records: list[Mapping[str, Any]]) -> dict[str, Any] | None:
    """One source's quality records of several windows as one (None: no records)."""
    if not records:
        return None
    out = dict(records[0])
    for rec in records[1:]:
        out = merge_records(out, rec)
    return out


def _reading_id(r: Reading) -> tuple[int, int, int, int]:
    """What tells one reading from another (its values may be NaN: not comparable)."""
    return (r.source, r.frame_seq, r.device_ms, r.received_ms)


class ContinuityMixin:
    """The agent's continuity across stops, crashes and storage faults (module docstring)."""

    if TYPE_CHECKING:  # what the agent (agent.pipeline.runner.Agent) provides
        config: AgentConfig
        stats: AgentStats
        notifier: Notifier
        signer: Signer | Pkcs11Signer
        store: EvidenceStore
        attester: Attester
        publisher: Publisher
        policy: PolicyBundle
        evaluator: Evaluator
        risk: RiskEngine
        sources: list[PortSource]
        journal: Journal | None
        _queue: Intake
        _started_ms: int
        _in_force_ms: int | None
        _next_flush: float
        _storage_problem: str | None
        _journal_problem: str | None
        _unsigned: list[tuple[Window, dict[str, Any]]]
        _taken_seqs: list[int | None]
        _carry: tuple[Window, Window] | None
        _state_after: dict[int, str]
        _checkpoints: Checkpoints
        models: list[RiskModel]
        _staged: int | None
        _held_file: Path | None
        _recovered: set[int]
        _fatal: StoreCorruptError | None
        _lost: str | None

        def stop(self) -> None: ...
        def window_bounds(self, now_ms: int, not_before: int | None = None) -> tuple[int, int]: ...
        def _attest(self, window: Window, health: dict[str, Any]) -> OutboxItem: ...
        def _drain(self, window: Window, nxt: Window | None = None) -> None: ...
        def _publish(self, item: OutboxItem) -> None: ...
        def _service_status(self) -> str: ...
        def _status(self) -> dict[str, Any]: ...
        def _use_policy(self, bundle: PolicyBundle) -> None: ...

    def _new_evaluator(self, bundle: PolicyBundle) -> Evaluator:
        """An evaluator for ``bundle``, continuing its saved state (windows, durations), or
        the state after the last window evaluated if that one is not signed yet."""
        ev = bundle.evaluator()
        files = self._checkpoints
        files.saved_ms = None  # another plan: checkpoint its first signed window
        try:
            if self._state_after:  # held, unsigned: the checkpoint is older than they are
                ev.restore(self.evaluator.snapshot())
                return ev
            cp = files.load(files.path)
            ev.restore(cp.snapshot)
            files.saved_ms = cp.after_ms
            log.info("policy state restored from %s", files.path)
        except FileNotFoundError:
            pass
        except (OSError, ValueError, Error) as e:
            log.warning("policy state in %s not used (%s); windows and durations start empty",
                        files.path, e)  # fmt: skip
        return ev

    def _stage_policy_state(self, window: Window) -> str | None:
        """The digest of the evaluator's state after ``window``, which the commit that signs
        it records (``agent.evidence.journal``; None: not known); the state itself is saved
        just before that commit when a checkpoint is due (``agent.pipeline.policy_state``).

        Killed between the two, the next start finds the state of the signed log in the
        previous file (:meth:`_continue_signed_state`).
        """
        digest = self._state_after.get(window.start_ms)
        if digest is None:  # read back from the held file: the state restored is after the last
            later = any(w.start_ms in self._recovered for w, _ in self._unsigned[1:])
            if self._state_after or later:
                return None
            digest = self.evaluator.state_digest()
        files = self._checkpoints
        if (
            self._staged != window.start_ms  # a retried commit: staged already
            and files.due(window.end_ms)
            and digest == self.evaluator.state_digest()  # not evaluated past it yet
        ):
            files.save(self.evaluator.snapshot(), window.end_ms)
            self._staged = window.start_ms
        return digest

    def _checkpoint_now(self, after_ms: int) -> None:
        """At a stop: save the evaluator's state after the last window (which ended at
        ``after_ms``), unless a window it is after is not signed (held): a checkpoint never
        runs ahead of the signed log but by the window being committed."""
        if not self._state_after:
            self._checkpoints.save(self.evaluator.snapshot(), after_ms)

    def _continue_signed_state(self, signed: str | None) -> None:
        """Continue from the policy state after the last signed window (digest ``signed``,
        recorded by its commit): a checkpoint at it, or one before it and the windows
        signed since evaluated again from the stored readings."""
        if signed is None or self.evaluator.state_digest() == signed:
            return
        files = self._checkpoints
        for path in (files.path, files.prev):
            try:
                cp = files.load(path)
                ev = self.policy.evaluator()
                ev.restore(cp.snapshot)
                if cp.after_ms is None:
                    raise Error("the checkpoint does not say which window it follows")
                n = replay_since(
                    ev, cp.after_ms, signed, self.store.path, self.policy, self.models,
                    self.signer.public,
                )  # fmt: skip
            except (OSError, ValueError, Error) as e:
                log.debug("%s not used: %s", path, e)
                continue
            self.evaluator = ev
            files.save(ev.snapshot(), self.store.last_window_end())
            log.warning(
                "policy state rebuilt: %s, then %d signed window(s) evaluated again from the "
                "stored readings, gives the state after the last signed window",
                path.name,
                n,
            )
            return
        log.warning(
            "the policy state in %s is not the one after the last signed window; windows and "
            "durations continue from it (audit replay shows where the state differs)",
            files.path,
        )

    # -- windows the store refused -------------------------------------------------
    def _save_held(self) -> None:
        """At stop: write the windows the store refused to ``held-windows.cbor`` (signed,
        fsynced; a full disk gives up the reserve), or count them as lost."""
        if not self._unsigned:
            return
        n, readings = len(self._unsigned), sum(w.n for w, _ in self._unsigned)
        state_dir = self.config.state_dir
        held = HeldWindows(
            self.config.device_id,
            self.store.state.origin,
            self.policy.digest,
            self.evaluator.snapshot(),
            list(self._unsigned),
        )
        try:
            path = save_held(state_dir, encode_held(held, self.signer))
        except (OSError, Error) as e:
            self._lost = (
                f"{n} window(s) with {readings} reading(s) are LOST: the evidence store "
                f"refused them ({self._storage_problem}) and {state_dir / HELD_FILE} could "
                f"not be written ({e})"
            )
            log.error(
                "%s",
                self._lost,
                extra={
                    "device": self.config.device_id,
                    "windows_lost": n,
                    "readings_lost": readings,
                },
            )
            return
        log.warning(
            "the evidence store refused writes: %d window(s) with %d reading(s) saved to %s; "
            "the next start signs them first",
            n,
            readings,
            path,
            extra={"device": self.config.device_id, "windows_held": n, "readings_held": readings},
        )

    def _resume_held(self, recovered: Sequence[Reading]) -> Sequence[Reading]:
        """Sign the windows the last run held when it stopped, before any new window.

        They carry their own results (the evaluator moved past them then), and the
        evaluator continues from the state saved with them. A file that is not this
        agent's (signature), or whose windows were evaluated under another policy or
        overlap the log, is set aside as ``held-windows.cbor.unsigned-<time>`` and its
        windows are named as not signed.

        Returns ``recovered`` (the journal's readings of the last run) without those the
        held windows hold: the journal may have them too (a store that refused writes
        also refused the mark of a clean stop), and a reading is signed once.
        """
        path = self.config.state_dir / HELD_FILE
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return recovered
        except OSError as e:
            log.error("cannot read %s (%s); the windows in it are not signed", path, e)
            return recovered
        held: HeldWindows | None = None
        try:
            held = decode_held(data, self.signer.public, *self._policy_shape())
            problem = self._held_problem(held)
            if problem is None:  # the evaluator continues from the state saved with them
                self.evaluator.restore(held.state_after)
        except StorageError as e:
            problem = str(e)
        except (ValueError, Error) as e:  # signed by this agent, so not expected
            problem = f"the policy state saved with its windows does not load ({e})"
            self._use_policy(self.policy)  # back to the state it had before
        if problem is not None:
            aside = path.with_name(f"{HELD_FILE}.unsigned-{int(time.time())}")
            try:
                os.replace(path, aside)
            except OSError as e:
                raise StorageError(f"{path}: {problem}, and it cannot be moved aside: {e}") from e
            count = f"{len(held.windows)} window(s) with {held.readings} reading(s)" if held else ""
            log.error(
                "%s: %s; its windows %sare NOT signed; kept as %s",
                path,
                problem,
                f"({count}) " if count else "",
                aside.name,
            )
            return recovered
        assert held is not None
        for w, _ in held.windows:  # the risk features' look-back, as if they had been stored
            cols = w.columns
            self.policy.mask_invalid(cols)
            self.risk.history.append(w.timestamps, cols)
        self.risk.history.trim()
        self._recovered = {w.start_ms for w, _ in held.windows}
        self._held_file = path
        log.warning(
            "signing %d window(s) with %d reading(s) that the last run held when it stopped "
            "(the evidence store refused writes), from %s",
            len(held.windows),
            held.readings,
            path,
            extra={"windows_held": len(held.windows), "readings_held": held.readings},
        )
        self._unsigned[:0] = held.windows
        self._sign_held()
        return self._not_held(recovered, held)

    def _policy_shape(self) -> tuple[int, list[str]]:
        """What a held window's results are read with: the policy's channels and rules."""
        return len(self.policy.channels), [r.id for r in self.policy.rules]

    def _not_held(self, recovered: Sequence[Reading], held: HeldWindows) -> list[Reading]:
        """``recovered`` without the readings ``held`` has (the restart claim counts the rest)."""
        ids = {_reading_id(r) for w, _ in held.windows for r in w.records}
        kept = [r for r in recovered if _reading_id(r) not in ids]
        dropped = len(recovered) - len(kept)
        restart = self.attester.restart
        if dropped and restart is not None:
            self.attester.restart = dataclasses.replace(
                restart, recovered_readings=max(0, restart.recovered_readings - dropped)
            )
            log.info("%d reading(s) recovered from the journal are in the held windows", dropped)
        return kept

    def _held_problem(self, held: HeldWindows) -> str | None:
        """Why the windows of ``held`` cannot be signed by this agent now (None: they can)."""
        last_end = self.store.last_window_end()
        if held.device_id != self.config.device_id:
            return f"it holds windows of device {held.device_id}"
        if held.policy_digest != self.policy.digest:
            return (
                f"its windows were evaluated under policy digest {held.policy_digest[:16]}, "
                f"the agent now runs {self.policy.id} v{self.policy.version} "
                f"({self.policy.digest[:16]})"
            )
        if held.windows and last_end is not None and held.windows[0][0].start_ms < last_end:
            return "its windows start before the end of the last window signed in this log"
        return None

    # -- the journal of the open window (agent.evidence.journal) ----------------------------------
    def _begin_journal(self) -> Sequence[Reading]:
        """Read what the last run left, continue each source from its mark, and give the
        attester the restart claim for this process's first attestation. Returns the
        readings of the window the last run was in when it was killed."""
        last_end = self.store.last_window_end()
        self.journal = Journal(
            self.store,
            [(s.name, s.protocol) for s in self.config.sources],
            [c.name for c in self.policy.channels],
        )
        try:
            rec = self.journal.begin(self._started_ms, self._held_to_sign())
        except StorageError as e:
            log.error("%s; the open window is not journaled in this run", e)
            self.journal = None
            self.attester.restart = Restart(self._started_ms, last_end, False, (), 0, None)
            return []
        for s in self.sources:
            m = rec.marks.get(s.cfg.name)
            if m is not None:
                s.resume(m.last_seq)
                if m.pending is not None:
                    s.ledger.restore(m.pending)
        self._taken_seqs = [s.last_seq for s in self.sources]
        self._continue_signed_state(rec.signed_state)
        r = rec.restart
        self.attester.restart = r
        down = f"{r.down_ms / 1000:.1f} s since the last signed window"
        if r.last_end_ms is None:
            pass
        elif r.clean:
            log.info("restart after a clean stop; %s", down)
        else:
            log.warning(
                "the last run did not stop cleanly (killed, crashed or lost power); %s; "
                "%d reading(s) of the window it was in recovered from the journal; the "
                "first attestation says so (claim -70001/12)",
                down,
                r.recovered_readings,
                extra={"recovered_readings": r.recovered_readings, "down_ms": r.down_ms},
            )
        return rec.readings

    def _held_to_sign(self) -> tuple[int, dict[str, int]] | None:
        """The end of the windows in the held file that :meth:`_resume_held` will sign, and
        each source's last reading in them (None: no such file, or it will not be signed)."""
        try:
            data = (self.config.state_dir / HELD_FILE).read_bytes()
            held = decode_held(data, self.signer.public, *self._policy_shape())
            if not held.windows or self._held_problem(held) is not None:
                return None
        except (OSError, StorageError):
            return None
        names = [s.name for s in self.config.sources]
        rx = last_rx_by_source([r for w, _ in held.windows for r in w.records], len(names))
        last = {names[i]: t for i, t in enumerate(rx) if t is not None}
        return held.windows[-1][0].end_ms, last

    def _first_window(self, recovered: Sequence[Reading]) -> Window:
        """The first window of this run. After a crash it holds the readings recovered from
        the journal and starts where the last signed window ended, so the window the last
        run was in continues in it. After waiting for the first signed fleet config it
        starts when that config took force (the sources opened then), so its readings and
        the switch it declares are in it however long the sources took to open."""
        last_end = self.store.last_window_end()
        start, end = self.window_bounds(int(time.time() * 1000), last_end)
        if self._in_force_ms is not None and self._in_force_ms < start:
            start = max(self._in_force_ms, last_end or 0)
        if recovered:
            start = last_end if last_end is not None else min(r.received_ms for r in recovered)
        window = Window(start, end, len(self.policy.channels))
        window.add_batch(ReadingBatch.of(recovered, window.n_channels))
        window.journaled = window.n  # they are in the journal already
        return window

    def _held_here(self) -> list[tuple[Window, dict[str, Any]]]:
        """Windows the store refused that this run closed (not read back from a held file)."""
        return [(w, h) for w, h in self._unsigned if w.start_ms not in self._recovered]

    def _journal_flush(self, window: Window) -> None:
        """Journal the readings received since the last flush and each source's mark.

        The marks are taken and the queue drained with every source's ``stream_lock``
        held, so they account for exactly the readings written with them.
        """
        self._next_flush = time.monotonic() + FLUSH_S
        journal = self.journal
        held = self._held_here()
        if journal is None or (
            self._queue.empty() and all(w.n == w.journaled for w in (window, *(w for w, _ in held)))
        ):
            return
        now = int(time.time() * 1000)
        with ExitStack() as locks:
            for s in self.sources:
                locks.enter_context(s.stream_lock)
            self._drain(window)
            peeks = [s.ledger.peek(now) for s in self.sources]
            seqs = [s.last_seq for s in self.sources]
        windows = [w for w, _ in held] + [window]
        rows = [(w.start_ms, w.records[w.journaled : w.n]) for w in windows]
        pending = [_merged([h["sources"][i] for _, h in held]) for i in range(len(self.sources))]
        marks = self._marks(
            seqs, [peek if p is None else merge_records(p, peek) for p, peek in zip(pending, peeks)]
        )
        try:
            journal.write(rows, marks)
        except StorageError as e:
            if self._journal_problem != str(e):
                log.warning("%s; the open window is not journaled until it can be", e)
            self._journal_problem = str(e)
            return
        self._journal_problem = None
        for w in windows:
            w.journaled = w.n

    def _marks(
        self, seqs: Sequence[int | None], pending: Sequence[Mapping[str, Any] | None]
    ) -> list[SourceMark]:
        """Each source's mark: frames accounted for up to ``seqs``, ``pending`` not signed."""
        return [
            SourceMark(s.cfg.name, s.cfg.protocol, seqs[i], pending[i] or None)
            for i, s in enumerate(self.sources)
        ]

    def _journal_commit(
        self, window: Window, state_after: str | None
    ) -> Callable[[sqlite3.Connection], None] | None:
        """The journal's part of the commit that signs ``window`` (the first held one):
        it leaves the journal, the marks say what the windows still held account for, and
        ``state_after`` is the policy state digest after it (agent.evidence.journal). Windows read
        back from the held file are not the journal's: only the state is recorded."""
        if self.journal is None:
            return None
        if window.start_ms in self._recovered:
            return self.journal.on_commit(window.end_ms, (), None, state_after=state_after)
        later = [h for w, h in self._held_here() if w is not window]
        pending = [_merged([h["sources"][i] for h in later]) for i in range(len(self.sources))]
        seqs = self._taken_seqs or [None] * len(self.sources)
        carry = None
        if self._carry is not None and self._carry[0] is window and self._carry[1].n:
            nxt = self._carry[1]
            carry = (nxt.start_ms, nxt.records[: nxt.n])
        marks = self._marks(seqs, pending)
        return self.journal.on_commit(window.end_ms, window.records, marks, carry, state_after)

    def _journal_stopped(self) -> None:
        """At a stop with everything signed (or saved to the held file): a clean stop."""
        if self.journal is None or self._fatal is not None or self._lost is not None:
            return
        seqs = self._taken_seqs or [None] * len(self.sources)
        marks = self._marks(seqs, [None] * len(self.sources))
        try:
            self.journal.clean_stop(int(time.time() * 1000), marks)
        except StorageError as e:
            log.warning("%s; the next start will report this stop as not clean", e)

    def _sign_held(self) -> None:
        """Sign the held windows in order, until the store refuses one."""
        while self._unsigned:
            w, h = self._unsigned[0]
            try:
                item = self._attest(w, h)
            except StorageError as e:
                self._storage_failed(e)
                return
            self._unsigned.pop(0)
            self.stats.attestations += 1
            self.stats.last_seq = item.seq
            self._publish(item)
        self._storage_problem = None  # every held window is signed and stored now
        if self._held_file is not None:  # the windows read back from it are signed now
            self._held_file.unlink(missing_ok=True)
            log.info("the held windows are signed; %s removed", self._held_file.name)
            self._held_file = None
        self.notifier.status(self._service_status())

    def _storage_failed(self, e: StorageError) -> None:
        """The store refused a write (disk full, I/O error): hold the window, say so loudly.

        A corrupt store is not retried: the agent alerts and stops (the held windows go
        to ``held-windows.cbor``; the start check then refuses the store).
        """
        corrupt = isinstance(e, StoreCorruptError)
        first = self._storage_problem is None or (corrupt and self._fatal is None)
        self._storage_problem = str(e)
        if isinstance(e, StoreCorruptError) and self._fatal is None:
            self._fatal = e
            self.stop()
        log.error(
            "%s; %d window(s) held in memory, %s",
            e,
            len(self._unsigned),
            "the agent stops" if corrupt else "retried at the next window",
            extra={
                "device": self.config.device_id,
                "reason": str(e),
                "windows_held": len(self._unsigned),
            },
        )
        self.notifier.status(self._service_status())
        if first:
            self.publisher.publish_alert(
                {
                    "event": "storage_corrupt" if corrupt else "storage_error",
                    "device": self.config.device_id,
                    "reason": str(e),
                    "windows_held": len(self._unsigned),
                }
            )
            self.publisher.publish_status(self._status())
