"""Fleet configuration errors (a subtree of :class:`agent.errors.Error`).

::

    Error
    +-- FleetError                 fleet repository or client: bad input, unusable state
        +-- TrustRootError         the gateway's configured trust root is unusable
        +-- ConfigRejected         a signed config was refused; .exit_code = 1 (a finding)
        +-- RepositoryInvalid      the repository's metadata do not verify; .exit_code = 1
"""

from __future__ import annotations

from agent.errors import Error

__all__ = ["ConfigRejected", "FleetError", "RepositoryInvalid", "TrustRootError"]


class FleetError(Error):
    """The fleet repository or the fleet client cannot do what was asked."""


class TrustRootError(FleetError):
    """The fleet trust root a gateway is configured with is missing or not a root."""


class RepositoryInvalid(FleetError):
    """The repository's metadata or targets do not verify as a gateway would verify them
    (``edgegov fleet publish`` refuses to publish); a finding, exit code 1."""

    exit_code = 1


class ConfigRejected(FleetError):
    """Fleet configuration was refused (TUF verification, assignment, staging).

    ``reason`` is the short operator-readable text that goes into the
    ``rejected`` ack on ``…/config/ack``.
    """

    exit_code = 1

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
