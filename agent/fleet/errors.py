"""Fleet configuration errors (a subtree of :class:`agent.errors.Error`).

::

    Error
    +-- FleetError                 fleet repository or client: bad input, unusable state
        +-- ConfigRejected         a signed config was refused; .exit_code = 1 (a finding)
"""

from __future__ import annotations

from agent.errors import Error

__all__ = ["ConfigRejected", "FleetError"]


class FleetError(Error):
    """The fleet repository or the fleet client cannot do what was asked."""


class ConfigRejected(FleetError):
    """Fleet configuration was refused (TUF verification, assignment, staging).

    ``reason`` is the short operator-readable text that goes into the
    ``rejected`` ack on ``…/config/ack``.
    """

    exit_code = 1

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
