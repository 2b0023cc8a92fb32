"""Governance workflows around the evidence: the rest of the agile-governance cycle.

What enters: verified evidence (``agent.audit``), signed statements by people and labs
(explanations of deviations, calibration certificates: ``statements``), the trust file's
``people``, ``labs`` and ``sites`` (``people``), and a proposed policy change. What
leaves: each violation episode as a deviation with its explanation or "unexplained"
(``review``), the calibration cover of each required channel, a deterministic
evidence-quality score (``score``), all of it in ``audit verify`` and the report; and a
preview of what a proposed policy would have flagged differently over the readings
gateways recorded (``preview``, ``edgegov policy preview``), whose digest a signed fleet
release records. Modules are imported on use; nothing heavy is loaded here.
"""

from __future__ import annotations

__all__ = ["people", "preview", "review", "score", "statements"]
