"""Which implementation the selector modules use: the compiled ones or their pure-Python twins.

One rule for every ``native/<name>.py`` selector: the Cython module is used unless
``EDGEGOV_PURE`` is set (to anything but ``0``) or it is not built (or cannot be loaded).
The first selector imported decides for all of them at once (:func:`native_status`), so
a fallback is logged once per process, naming every module that fell back: the twins
are 30-100x slower, and an operator should know the gateway is running without its
compiled hot paths. A fallback that ``EDGEGOV_PURE`` asked for is not logged.
``edgegov --version`` and ``edgegov doctor`` print the same table
(:func:`format_native_status`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
from dataclasses import dataclass

__all__ = [
    "COMPILED_MODULES",
    "FALLBACK_WARNING",
    "PURE_REQUESTED",
    "ModuleStatus",
    "compiled_available",
    "format_native_status",
    "native_status",
]

PURE_REQUESTED = os.environ.get("EDGEGOV_PURE", "") not in ("", "0")

COMPILED_MODULES = ("_policy", "_verify", "_frames", "_cbor_scan", "_features", "_hashing")
"""Every Cython module in ``native/`` (``setup.py`` builds these), by its short name."""

FALLBACK_WARNING = "fell back to their pure-Python twins"
"""The words the one fallback warning always contains (tests count them)."""


@dataclass(frozen=True)
class ModuleStatus:
    """Which implementation of one compiled module this process uses, and why."""

    name: str
    """The compiled module, e.g. ``native._policy``."""
    compiled: bool
    """True if the compiled module is the one in use."""
    reason: str
    """Why its pure twin is used instead (``""`` when compiled): ``EDGEGOV_PURE is set``,
    ``not built`` or ``cannot be loaded: ...``."""
    path: str | None
    """The extension file, where one is installed."""

    def to_json(self) -> dict[str, object]:
        return {
            "module": self.name,
            "implementation": "cython" if self.compiled else "python",
            "reason": self.reason or None,
            "path": self.path,
        }


def _probe(short: str) -> ModuleStatus:
    name = f"native.{short}"
    if PURE_REQUESTED:  # do not even load it: the variable may be set to avoid a bad build
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        built = spec is not None and spec.origin is not None
        reason = "EDGEGOV_PURE is set" + ("" if built else "; also not built")
        return ModuleStatus(name, False, reason, spec.origin if built and spec else None)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as e:
        if e.name != name:  # the extension is there but needs something that is not
            return ModuleStatus(name, False, f"cannot be loaded: {e}", None)
        return ModuleStatus(name, False, "not built", None)
    except ImportError as e:  # wrong platform, undefined symbol, a build out of step
        return ModuleStatus(name, False, f"cannot be loaded: {e}", None)
    return ModuleStatus(name, True, "", getattr(module, "__file__", None))


@functools.cache
def native_status() -> tuple[ModuleStatus, ...]:
    """Decide, once per process, which implementation each compiled module uses.

    Loads every compiled module that is not overridden, and logs one warning naming all
    that fell back for a reason other than ``EDGEGOV_PURE``.
    """
    status = tuple(_probe(short) for short in COMPILED_MODULES)
    fell_back = [s for s in status if not s.compiled and not PURE_REQUESTED]
    if fell_back:
        logging.getLogger("edgegov.native").warning(
            "%d of %d native modules %s, which are much slower: %s. Reinstall with a C "
            "compiler and the Python headers present (Debian: apt-get install gcc "
            "python3-dev) to build them; 'edgegov doctor' shows this again.",
            len(fell_back),
            len(status),
            FALLBACK_WARNING,
            ", ".join(f"{s.name} ({s.reason})" for s in fell_back),
        )
    return status


def compiled_available(name: str) -> bool:
    """True if ``native.<name>`` should be used (built, loadable, and not overridden)."""
    for s in native_status():
        if s.name == f"native.{name}":
            return s.compiled
    raise ValueError(f"{name!r} is not one of the compiled modules {COMPILED_MODULES}")


def format_native_status(status: tuple[ModuleStatus, ...] | None = None) -> str:
    """The table ``edgegov --version`` prints: one line per module, then a summary."""
    status = native_status() if status is None else status
    width = max(len(s.name) for s in status)
    lines = [
        f"  {s.name:<{width}}  " + ("compiled" if s.compiled else f"pure twin ({s.reason})")
        for s in status
    ]
    n = sum(s.compiled for s in status)
    head = f"native modules: {n} of {len(status)} compiled"
    if n < len(status):
        head += f"; {len(status) - n} run as their pure-Python twins (slower)"
    return "\n".join([head, *lines])
