"""Pipeline: the agent's loop, from readings to signed windows.

In: readings from ``agent.sources``, the config (``agent.config``), policy and risk
(``agent.policy``, ``agent.risk``). Out: closed windows (``window``) with rule results and
risk scores, handed to ``agent.evidence`` to sign and to ``agent.transport`` to publish.
``evaluate`` is the one per-window step (mask, risk, rules, summary) the agent and
``edgegov audit replay`` share; ``runner`` wires it together and runs it, with
``continuity`` (the journal of the open window, the policy state, windows the evidence
store refused, kept in ``held_windows`` until they can be signed) and ``reload`` (a new
config on SIGHUP, a new bundle from the fleet); ``alerts`` raises what an operator must
see; ``service`` speaks systemd's notify and watchdog protocol; ``local_status`` reads
the agent's state from its files (``edgegov status``).
"""

__all__ = [
    "alerts",
    "continuity",
    "evaluate",
    "held_windows",
    "local_status",
    "reload",
    "runner",
    "service",
    "window",
]
