"""Governance workflows: what a fleet manager does with evidence before changing the fleet.

In: the evidence gateways already collected (their evidence stores), trust anchors, and
a proposed change (a policy bundle). Out: documents an approver reads and a signed fleet
release can point at by digest. ``preview`` replays a proposed policy bundle over the
stored readings and says what it would have flagged differently (``edgegov policy
preview``). Modules are imported on use; nothing heavy is loaded here.
"""

__all__ = ["preview"]
