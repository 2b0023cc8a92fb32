"""Transport: MQTT out of the gateway, and the one MQTT boundary of edgegov.

In: signed attestations, status and alerts from ``agent.pipeline`` and ``agent.evidence``
(outbox rows). Out: messages on the broker, acknowledged back to the outbox on PUBACK.

* ``mqtt``: the one paho-mqtt 2.x client (``MqttClient``): ``BrokerURL``, TLS, the MQTT 5 or
  3.1.1 session, failover along a list of broker URLs, reason codes as ``TransportError``.
  The publisher, the fleet sessions (``agent.fleet``) and the auditor's collector
  (``agent.audit``) all dial through it.
* ``options``: the MQTT version as operators name it, and the ``--broker``/``--mqtt-version``
  options of the commands that dial a broker (no paho import).
* ``mqtt_tls``: the one client TLS context (a private CA, a client certificate and key).
* ``topics``: the one topic tree as value objects (``DeviceTopics``, ``FleetTopics``,
  subscription ``Filter``s): every topic on the wire is spelled there.
* ``publisher``: the outbox-backed, at-least-once ``MqttPublisher`` and the ``SpoolPublisher``.
"""

__all__ = ["mqtt", "mqtt_tls", "options", "publisher", "topics"]
