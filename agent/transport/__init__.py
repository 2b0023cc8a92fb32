"""Transport: MQTT out of the gateway.

In: signed attestations and status from ``agent.pipeline`` and ``agent.evidence``. Out:
messages on the broker (``publisher``: the outbox-backed, at-least-once publisher, its
topic tree and the broker URL), over TLS set up in one place (``mqtt_tls``, used by the
fleet tools and the collector too).
"""

__all__ = ["mqtt_tls", "publisher"]
