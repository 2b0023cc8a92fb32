"""`edgegov bench faults`: faults injected into the real agent, and what survived them.

Each scenario runs real processes: a Mosquitto with persistence, an emulated device
writing the framed protocol at 20 Hz to a pty (keeping a ledger of every frame it
numbers), the agent as a subprocess with 1 s windows, and a subscriber of our own that
keeps every delivery. It injects the fault, lets the agent catch up, stops it cleanly
and counts, per fault:

=========================  ==========================================================
attestations signed        in the agent's evidence store (read-only, after the stop)
delivered                  distinct (device, log, seq) the subscriber got
lost                       signed, never delivered
duplicated                 deliveries beyond the first (redeliveries: benign)
readings lost / declared   DATA frames the device numbered that are not in the signed
                           log / those the signed evidence declares not recorded
detected by audit verify   ``edgegov audit verify --json`` on the subscriber's copies:
                           the evidence verdict, restarts, degraded windows, findings
=========================  ==========================================================

The promise checked on every row (:attr:`FaultRow.problems` lists each breach): no
attestation lost, every lost reading declared in signed evidence (lost == declared,
exactly), no redelivery reported as a finding, and the fault visible to the auditor.
"""

from __future__ import annotations

import tempfile
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from agent.tools.bench.faults.measure import Attestations, AuditView
from agent.tools.bench.faults.scenarios import (
    KILL_SEED,
    broker_outage,
    clock_step,
    dead_sensor,
    kill_9,
    serial_faults,
)
from agent.tools.bench.faults.storage import CORRUPTIONS, corrupt_state, corruption, disk_full
from agent.tools.bench.faults.table import COLUMNS, FaultRow, format_table

__all__ = ["COLUMNS", "SCENARIOS", "FaultRow", "format_table", "run_faults"]

Runner = Callable[[Path, bool], list[FaultRow]]

#: scenario name -> runner(workdir, quick); the order is the table's
SCENARIOS: dict[str, Runner] = {
    "broker-outage": broker_outage,
    "kill-9": kill_9,
    "serial": serial_faults,
    "disk-full": disk_full,
    "clock": clock_step,
    "corrupt-state": corrupt_state,
    "dead-sensor": dead_sensor,
}


def _failed(name: str, e: BaseException) -> FaultRow:
    """A scenario that could not run to the end is a row that says so, not a crash."""
    tail = "".join(traceback.format_exception_only(type(e), e)).strip()
    return FaultRow(
        scenario=name,
        fault=f"{name} (did not complete)",
        iterations=0,
        attestations=Attestations(0, 0, 0, 0, 0, 0),
        readings=None,
        audit=AuditView(-1),
        detected="not measured",
        problems=[f"the scenario failed: {tail[-800:]}"],
    )


Unit = Callable[[Path], list[FaultRow]]


def _units(name: str, quick: bool, seed: int) -> list[tuple[str, Unit]]:
    """A scenario as units that may run side by side: (subdirectory, unit(workdir))."""
    if name == "kill-9":
        return [(name, lambda wd: kill_9(wd, quick, seed))]
    if name == "corrupt-state":  # each kind of damage on its own gateway
        return [(f"{name}/{how}", partial(corruption, how=how)) for how in CORRUPTIONS]
    runner = SCENARIOS[name]
    return [(name, lambda wd: runner(wd, quick))]


def run_faults(
    names: list[str] | None = None,
    quick: bool = False,
    workdir: Path | None = None,
    jobs: int = 1,
    seed: int = KILL_SEED,
) -> list[FaultRow]:
    """Run the scenarios (default: all), ``jobs`` units at a time; rows in
    :data:`SCENARIOS` order. Files go to ``workdir`` (default: a temporary directory,
    removed after); ``seed`` picks the moments of the kills.

    Raises:
        ValueError: an unknown scenario name.
    """
    chosen = list(SCENARIOS) if names is None else names
    unknown = [n for n in chosen if n not in SCENARIOS]
    if unknown:
        known = ", ".join(SCENARIOS)
        raise ValueError(f"unknown fault scenario(s) {', '.join(unknown)}; known: {known}")
    units = [(name, sub, fn) for name in chosen for sub, fn in _units(name, quick, seed)]
    with tempfile.TemporaryDirectory(prefix="edgegov-faults-") as tmp:
        base = workdir if workdir is not None else Path(tmp)

        def one(unit: tuple[str, str, Unit]) -> list[FaultRow]:
            name, sub, fn = unit
            try:
                return fn(base / sub)
            except Exception as e:  # reported in the table, the others still run
                return [_failed(name, e)]

        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            results = list(pool.map(one, units))
    return [r for rows in results for r in rows]
