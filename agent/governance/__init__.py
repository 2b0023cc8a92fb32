"""Governance workflows around the evidence: the rest of the agile-governance cycle.

What enters: verified evidence (``agent.audit``), signed statements by people and labs
(explanations of deviations, calibration certificates: ``statements``), and the trust
file's ``people``, ``labs`` and ``sites`` (``people``). What leaves: each violation
episode as a deviation with its explanation or "unexplained" (``deviations``), the
calibration cover of each required channel (``calibration``), a deterministic
evidence-quality score (``score``), all of it in ``audit verify`` and the report.
"""

from __future__ import annotations

__all__: list[str] = []
