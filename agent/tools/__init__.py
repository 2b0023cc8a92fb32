"""Tools beside the agent: ``demo`` (the main job on an embedded default), ``doctor``
(what this installation has), ``broker`` (a private Mosquitto for the demo and tests) and
``bench`` (the benchmarks, the fault suite and the verifier's fuzz campaign)."""

__all__ = ["bench", "broker", "demo", "doctor"]
