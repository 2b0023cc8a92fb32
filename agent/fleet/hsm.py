"""Fleet metadata signed inside a PKCS#11 token (HSM, TPM via tpm2-pkcs11, SoftHSM2).

A repository key named ``<name>`` is either ``keys/<name>.pem`` (a 0600 key file) or
``keys/<name>.pkcs11``, a small YAML reference to a key in a token::

    module: /usr/lib/softhsm/libsofthsm2.so
    token: fleet
    key: targets-1          # CKA_LABEL of the key pair
    pin_env: FLEET_HSM_PIN  # the PIN is read from this environment variable, never a file

The token signs; python-tuf sees an ordinary securesystemslib ``Signer`` with an
Ed25519 ``SSlibKey``, so thresholds, rotation and verification are unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from securesystemslib.signer import Signature, Signer, SSlibKey

from agent.errors import FleetError, KeyFileError
from agent.identity.keys import ALG_EDDSA

__all__ = ["Pkcs11TufSigner", "load_pkcs11_reference"]


class Pkcs11TufSigner(Signer):
    """A securesystemslib signer whose Ed25519 private key never leaves the token."""

    def __init__(self, module: str, token: str, label: str, pin: str) -> None:
        from agent.identity.pkcs11 import Pkcs11Signer

        self._token = Pkcs11Signer(module, token, pin, label)
        if self._token.alg != ALG_EDDSA:
            raise FleetError(f"PKCS#11 key {label!r}: fleet metadata keys must be Ed25519")
        key = self._token.public.key
        self._public = SSlibKey.from_crypto(key)

    @property
    def public_key(self) -> SSlibKey:
        return self._public

    def sign(self, payload: bytes) -> Signature:
        return Signature(self._public.keyid, self._token.sign(payload).hex())

    @classmethod
    def from_priv_key_uri(
        cls, priv_key_uri: str, public_key: Any, secrets_handler: Any = None
    ) -> Signer:
        raise NotImplementedError("load PKCS#11 fleet keys from a keys/<name>.pkcs11 file")


def load_pkcs11_reference(path: Path) -> Pkcs11TufSigner:
    """Open the token key a ``keys/<name>.pkcs11`` file points at."""
    try:
        ref = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise FleetError(f"{path}: cannot read the PKCS#11 key reference: {e}") from e
    if not isinstance(ref, dict):
        raise FleetError(f"{path}: expected a mapping with module, token, key, pin_env")
    missing = [k for k in ("module", "token", "key", "pin_env") if not isinstance(ref.get(k), str)]
    if missing:
        raise FleetError(f"{path}: missing or not text: {', '.join(missing)}")
    pin = os.environ.get(ref["pin_env"])
    if pin is None:
        raise FleetError(f"{path}: pin_env: environment variable {ref['pin_env']} is not set")
    try:
        return Pkcs11TufSigner(ref["module"], ref["token"], ref["key"], pin)
    except KeyFileError as e:
        raise FleetError(f"{path}: {e}") from e
