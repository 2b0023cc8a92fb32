"""`edgegov init`: a device key (0600) and a config skeleton for a new gateway."""

from __future__ import annotations

import shlex
from pathlib import Path

from agent.errors import ConfigError
from agent.identity.fleet_ca import make_csr
from agent.identity.keys import generate_key, public_key_path

__all__ = ["init_device"]

_SKELETON = """\
# edgegov agent configuration for {device_id}. Relative paths are relative to this file.
device:
  id: {device_id}
  key: keys/device.key            # private key, mode 0600; never share it
  # cert: keys/device.pem         # device certificate from the fleet CA (see edgegov init's hint)
fleet: my-fleet
policy: policies/cold-chain.yaml  # copy one from configs/policies/, with the models/ it names
state_dir: state                  # evidence store and outbox (SQLite, WAL); as a systemd
                                  #   service (configs/systemd/): /var/lib/edgegov
sources:
  - port: /dev/ttyUSB0
    baud: 115200
    protocol: framed
output:
  mqtt:
    url: mqtt://127.0.0.1:1883
  # or, with no broker:  spool: spool
risk:
  providers: [CPUExecutionProvider]
  threads: 1
"""


def init_device(device_id: str, directory: Path, key_type: str = "ed25519") -> None:
    cfg = directory / "agent.yaml"
    if cfg.exists():
        raise ConfigError(f"{cfg} already exists; refusing to overwrite it")
    key = directory / "keys" / "device.key"
    signer = generate_key(key, key_type)
    csr = directory / "keys" / "device.csr"
    csr.write_bytes(make_csr(signer, device_id))
    cfg.write_text(_SKELETON.format(device_id=device_id))
    print(f"device key   {key} ({key_type}, mode 0600)")
    print(f"public key   {public_key_path(key)}  (give this to your auditors)")
    print(f"key id       {signer.kid.hex()}")
    cert = directory / "keys" / "device.pem"
    q = shlex.quote
    print(f"CSR          {csr}  (for a device certificate from the fleet CA:")
    print("               edgegov fleet ca init --dir fleet-ca    (once per fleet)")
    print(
        f"               edgegov fleet ca issue {q(str(csr))} --dir fleet-ca --out {q(str(cert))}"
    )
    print("             then set device.cert: keys/device.pem in the config)")
    print(
        f"config       {cfg}  (edit sources, policy and output, then: edgegov run --config {cfg})"
    )
