"""python-tuf's ``FetcherInterface`` over retained MQTT messages.

python-tuf stays in charge of every check (signatures, thresholds, versions,
expiry, hashes, lengths); this only turns its URLs into topics and hands back
the retained payload. A missing message is reported as HTTP 404, which is what
ngclient expects for "no newer root" (TUF §5.3.4) and treats as a failure for
every other file.
"""

from __future__ import annotations

from collections.abc import Iterator

from tuf.api import exceptions
from tuf.ngclient import FetcherInterface

from agent.fleet._mqtt import FleetSession
from agent.transport.topics import TARGETS_URL, FleetTopics

__all__ = ["MqttFetcher"]


class MqttFetcher(FetcherInterface):
    """Reads ``mqtt:/metadata/…`` and ``mqtt:/targets/…`` from retained topics."""

    def __init__(self, metadata: FleetSession, targets: FleetSession, topics: FleetTopics) -> None:
        self.metadata = metadata  # capped at the largest metadata length
        self.targets = targets  # capped at the largest target length
        self.topics = topics
        self.fetched: list[str] = []  # topics read, in order (diagnostics and tests)

    def _fetch(self, url: str) -> Iterator[bytes]:
        topic = self.topics.for_url(url)
        self.fetched.append(topic)
        session = self.targets if url.startswith(TARGETS_URL) else self.metadata
        payload = session.read_retained(topic)
        if payload is None:
            raise exceptions.DownloadHTTPError(f"no retained message on {topic}", 404)
        return iter((payload,))
