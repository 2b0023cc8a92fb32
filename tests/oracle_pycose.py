"""Independent COSE_Sign1 verifier (pycose), run in its own venv by the tests.

stdin: <SubjectPublicKeyInfo PEM> "\n--\n" <hex of a tagged COSE_Sign1 per line>
Exit 0 and print one line per message if pycose verifies every signature; exit 1 otherwise.
"""

import sys

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pycose.headers import KID, Algorithm
from pycose.messages import Sign1Message

pem, _, hexmsg = sys.stdin.read().partition("\n--\n")
pub = serialization.load_pem_public_key(pem.encode())
if isinstance(pub, ed25519.Ed25519PublicKey):
    from pycose.keys.curves import Ed25519
    from pycose.keys.okp import OKPKey

    raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    key = OKPKey(crv=Ed25519, x=raw)
elif isinstance(pub, ec.EllipticCurvePublicKey):
    from pycose.keys.curves import P256
    from pycose.keys.ec2 import EC2Key

    nums = pub.public_numbers()
    key = EC2Key(crv=P256, x=nums.x.to_bytes(32, "big"), y=nums.y.to_bytes(32, "big"))
else:
    sys.exit("unsupported key type")
for n, line in enumerate(hexmsg.split()):
    msg = Sign1Message.decode(bytes.fromhex(line))
    msg.key = key
    if not msg.verify_signature():
        print(f"message {n}: signature INVALID", file=sys.stderr)
        sys.exit(1)
    alg = msg.get_attr(Algorithm).identifier
    print(f"pycose: message {n} signature valid, alg={alg}, kid={msg.get_attr(KID).hex()}")
