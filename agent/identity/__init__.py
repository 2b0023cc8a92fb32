"""Identity: who signs.

In: key files (0600, permission-checked), PKCS#11 tokens, the fleet CA. Out: a signer
(``keys.SigningKey`` or ``pkcs11.Pkcs11Signer``) and public keys with their ``kid`` for
``agent.evidence``; device certificates and CSRs (``fleet_ca``); a new gateway's site
(``device_init``: ``edgegov init``).
"""

__all__ = ["device_init", "fleet_ca", "keys", "pkcs11"]
