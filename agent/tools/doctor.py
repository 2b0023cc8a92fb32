"""What ``edgegov doctor`` reports: this installation as an operator needs to see it.

Which edgegov is running and from where, on which Python and machine; which native
modules are compiled and which run as their pure-Python twins (and why); the
onnxruntime version and its execution providers; whether a ``mosquitto`` binary is
there (only the demo and the tests start one). Findings are what makes the agent run
degraded here: a native module that fell back without ``EDGEGOV_PURE`` asking for it,
or an onnxruntime that cannot be imported (risk models then give no score).
"""

from __future__ import annotations

import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from agent import __version__
from agent.tools.broker import find_mosquitto
from native import PURE_REQUESTED, ModuleStatus, format_native_status, native_status

__all__ = ["Diagnosis", "diagnose"]


@dataclass(frozen=True)
class Diagnosis:
    """One look at the installation; :meth:`to_json` is ``edgegov doctor --json``."""

    version: str
    location: str
    python: str
    python_executable: str
    system: str
    machine: str
    native: tuple[ModuleStatus, ...]
    pure_requested: bool
    onnxruntime: str | None
    providers: tuple[str, ...]
    onnxruntime_error: str | None
    mosquitto: str | None
    mosquitto_version: str | None
    findings: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "edgegov": {"version": self.version, "location": self.location},
            "python": {"version": self.python, "executable": self.python_executable},
            "platform": {"system": self.system, "machine": self.machine},
            "native": {
                "pure_requested": self.pure_requested,
                "compiled": sum(s.compiled for s in self.native),
                "modules": [s.to_json() for s in self.native],
            },
            "onnxruntime": {
                "version": self.onnxruntime,
                "providers": list(self.providers),
                "error": self.onnxruntime_error,
            },
            "mosquitto": {
                "found": self.mosquitto is not None,
                "path": self.mosquitto,
                "version": self.mosquitto_version,
            },
            "findings": list(self.findings),
        }

    def format(self) -> str:
        ort = (
            f"onnxruntime {self.onnxruntime}, providers: {', '.join(self.providers)}"
            if self.onnxruntime
            else f"onnxruntime: cannot be imported ({self.onnxruntime_error})"
        )
        mosq = (
            f"mosquitto: {self.mosquitto} ({self.mosquitto_version or 'version unknown'})"
            if self.mosquitto
            else "mosquitto: not found (only the demo and the tests start one)"
        )
        lines = [
            f"edgegov {self.version} in {self.location}",
            f"Python {self.python} ({self.python_executable})",
            f"platform: {self.system} {self.machine}",
            format_native_status(self.native),
            ort,
            mosq,
        ]
        lines += [f"finding: {f}" for f in self.findings] or ["no findings"]
        return "\n".join(lines)


def _mosquitto_version(binary: str) -> str | None:
    try:  # `mosquitto -h` prints "mosquitto version 2.0.11" first (and exits 3)
        out = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    first = (out.stdout or out.stderr).strip().splitlines()[:1]
    return first[0].removeprefix("mosquitto ").strip() if first else None


def diagnose() -> Diagnosis:
    """Look at this installation (loads the native modules and onnxruntime)."""
    status = native_status()
    findings = [
        f"{s.name}: {s.reason}; its pure-Python twin runs instead (much slower)"
        for s in status
        if not s.compiled and not PURE_REQUESTED
    ]
    ort_version: str | None = None
    providers: tuple[str, ...] = ()
    ort_error: str | None = None
    try:
        import onnxruntime

        ort_version = str(onnxruntime.__version__)
        providers = tuple(onnxruntime.get_available_providers())
    except Exception as e:  # ImportError, or a broken native library inside it
        ort_error = f"{type(e).__name__}: {e}"
        findings.append(f"onnxruntime cannot be imported ({ort_error}): risk models give no score")
    mosquitto = find_mosquitto()
    return Diagnosis(
        version=__version__,
        location=str(Path(__file__).resolve().parents[1]),  # the agent package
        python=platform.python_version(),
        python_executable=sys.executable,
        system=platform.system(),
        machine=platform.machine(),
        native=status,
        pure_requested=PURE_REQUESTED,
        onnxruntime=ort_version,
        providers=providers,
        onnxruntime_error=ort_error,
        mosquitto=mosquitto,
        mosquitto_version=_mosquitto_version(mosquitto) if mosquitto else None,
        findings=tuple(findings),
    )
