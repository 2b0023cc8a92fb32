"""TLS for every MQTT client edgegov runs: the agent's publisher, fleet sessions, the collector.

One function builds the client :class:`ssl.SSLContext` from the operator's files, so the
three paho clients check a broker the same way: the broker's certificate must verify
(``CERT_REQUIRED``) and name the host we dialled; ``ca`` replaces the system's CAs (a private
fleet CA); ``cert`` and ``key`` present a client certificate (mutual TLS). A file that cannot
be used is a :class:`~agent.errors.ConfigError` naming it, raised before any connection.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from agent.errors import ConfigError

__all__ = ["TlsFiles", "client_context", "explain_tls_failure"]


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for an ``mqtts://`` connection; all optional."""

    ca: Path | None = None  # CA certificate(s) the broker's certificate must chain to
    cert: Path | None = None  # client certificate (mutual TLS)
    key: Path | None = None  # its private key (default: inside the certificate file)

    @classmethod
    def given(cls, ca: str | None, cert: str | None, key: str | None) -> TlsFiles | None:
        """The files a command line gave (``--ca/--cert/--key``); None if it gave none."""
        paths = [Path(p) if p else None for p in (ca, cert, key)]
        return cls(*paths) if any(paths) else None


def client_context(files: TlsFiles | None = None) -> ssl.SSLContext:
    """A client context for an MQTT broker over TLS (pass it to paho's ``tls_set_context``).

    Raises:
        ConfigError: a file is missing or unusable (the message names it), or a key is
            given without its certificate.
    """
    f = files or TlsFiles()
    if f.key is not None and f.cert is None:
        raise ConfigError(f"client key {f.key}: given without its client certificate")
    try:
        # no cafile: the system's CAs (load_default_certs); with one: that file alone
        ctx = ssl.create_default_context(
            ssl.Purpose.SERVER_AUTH, cafile=str(f.ca) if f.ca is not None else None
        )
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"CA certificate {f.ca}: cannot load it: {_reason(e)}") from e
    if f.cert is not None:
        try:
            ctx.load_cert_chain(str(f.cert), str(f.key) if f.key is not None else None)
        except (OSError, ssl.SSLError) as e:
            raise ConfigError(
                f"client certificate {f.cert}"
                + (
                    f" with key {f.key}: cannot load them: {_reason(e)}"
                    if f.key is not None
                    else f": cannot load it: {_reason(e)} (no key given, and none in that file?)"
                )
            ) from e
    return ctx


def explain_tls_failure(e: BaseException, files: TlsFiles | None) -> str:
    """What a failed TLS handshake most likely means, for an operator ('' if not TLS)."""
    f = files or TlsFiles()
    if isinstance(e, ssl.SSLCertVerificationError):
        against = f"the CA certificate {f.ca}" if f.ca else "the system's CA certificates"
        return (
            f"the broker's certificate does not verify against {against} "
            f"({e.verify_message}); give the CA that issued it"
        )
    if isinstance(e, ssl.SSLError):
        if f.cert is None:
            return (
                f"the broker ended the TLS handshake ({_reason(e)}); a broker with mutual TLS "
                "needs a client certificate and key"
            )
        return f"the broker ended the TLS handshake ({_reason(e)}); is {f.cert} issued by its CA?"
    return ""


def _reason(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError) and e.reason:
        return str(e.reason)
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)
