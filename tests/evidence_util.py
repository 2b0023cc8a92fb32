"""Make real attestation streams for the evidence tests (our own code, real keys)."""

from __future__ import annotations

from pathlib import Path

from agent.evidence.attester import Attester
from agent.evidence.claims import ConfigInForce, RiskResult, RuleEpisode, RuleResult
from agent.evidence.store import EvidenceStore
from agent.identity.keys import SigningKey
from agent.sources.reading import Reading

POLICY_DIGEST = "ab" * 32
MODEL_DIGEST = "cd" * 32
CONFIG = ConfigInForce("cold-chain", 3, POLICY_DIGEST, {"excursion": MODEL_DIGEST})


def readings(t0: int, n: int, base: float = 5.0) -> list[Reading]:
    return [Reading(t0 + 10 * i, t0 + 10 * i, 0, i, (base + i * 0.01, 50.0)) for i in range(n)]


def make_stream(
    db: Path,
    signer: SigningKey,
    device: str = "gw-1",
    windows: int = 5,
    per_window: int = 7,
    start_ms: int = 1_700_000_000_000,
    x5chain: tuple[bytes, ...] = (),
    config: ConfigInForce = CONFIG,
    retention_ms: int | None = None,
    rule: str = "temp-range",
    episode: bool = False,
) -> list[bytes]:
    """``windows`` signed attestations, one window per second, ``per_window`` readings each;
    window 2 violates ``rule`` (``episode``: listing it as an episode, closed in the window)."""
    store = EvidenceStore(db, device)
    att = Attester(
        device,
        signer,
        store,
        f"edgegov/f/{device}/attestation",
        x5chain=x5chain,
        retention_ms=retention_ms,
        sensors={"0": {"port": "/dev/ttyUSB0", "protocol": "framed"}},
    )
    out = []
    for w in range(windows):
        t0 = start_ms + w * 1000
        n = per_window + (w % 3)
        violated = 2 if w == 2 else 0
        item = att.attest(
            (t0, t0 + 1000),
            readings(t0, n, 9.0 if violated else 5.0),
            config,
            (
                RuleResult(
                    rule,
                    n,
                    violated,
                    0,
                    t0 if violated else None,
                    t0 + 10 if violated else None,
                    (RuleEpisode(t0, t0 + 10, 9.0),) if violated and episode else (),
                ),
            ),
            (
                RiskResult(
                    "excursion",
                    0.1 + 0.2 * (w == 2),
                    "CPUExecutionProvider",
                    ood=("max(temperature)",) if w == 2 else (),
                ),
            ),
            {"frames_ok": n, "crc_errors": 1 if w == 3 else 0},
            (),
        )
        out.append(item.payload)
    store.close()
    return out


def write(files_dir: Path, msgs: list[bytes]) -> Path:
    files_dir.mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(msgs):
        (files_dir / f"{i:04d}.cose").write_bytes(m)
    return files_dir
