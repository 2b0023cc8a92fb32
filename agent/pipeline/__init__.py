"""Pipeline: the agent's loop, from readings to signed windows.

In: readings from ``agent.sources``, the config (``agent.config``), policy and risk
(``agent.policy``, ``agent.risk``). Out: closed windows (``window``) with rule results and
risk scores, handed to ``agent.evidence`` to sign and to ``agent.transport`` to publish.
``runner`` wires it together and runs it; ``reload`` applies a new config on SIGHUP;
``alerts`` raises what an operator must see; ``service`` speaks systemd's notify and
watchdog protocol; ``local_status`` reads the agent's state from its files (``edgegov status``).
"""

__all__ = ["alerts", "local_status", "reload", "runner", "service", "window"]
