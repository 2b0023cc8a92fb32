"""Atomic activation of a verified fleet configuration on the gateway.

Layout under ``{state_dir}/fleet/``::

    configs/<id>/            one complete config: policies/, models/, manifest.json
    current -> configs/<id>  the config in force (a symlink, switched atomically)
    staging/<id>.<pid>/      work in progress; removed at the next start

Order (a crash at any point leaves the old or the new config in force, never
a mix): write every file into a private staging directory and fsync it;
rename the directory into ``configs/`` (same file system, atomic); point a new
symlink at it and ``rename(2)`` it over ``current`` (atomic); fsync the
directory. ``manifest.json`` is written last inside the staging directory, so
a config directory without one is incomplete and never chosen.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.errors import FleetError

if TYPE_CHECKING:
    from agent.policy import PolicyBundle

__all__ = [
    "ActiveConfig",
    "ConfigStore",
    "TufVersions",
    "UnassignedModel",
    "fleet_dir",
    "read_current",
    "unassigned_models",
]


@dataclass(frozen=True)
class TufVersions:
    """Versions of the trusted top-level metadata a config was activated under."""

    root: int
    timestamp: int
    snapshot: int
    targets: int

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class ActiveConfig:
    """A config in force: where its files are and what TUF said about them."""

    directory: Path
    config_version: int
    assignment: str  # target name of the assignment document
    assignment_sha256: str
    policy: str  # target name
    tuf: TufVersions
    targets: Mapping[str, str] = field(default_factory=dict)  # target name -> sha256 hex
    activated_ms: int = 0

    @property
    def policy_path(self) -> Path:
        return staged_path(self.directory, self.policy, "policy")

    def manifest(self) -> dict[str, Any]:
        return {
            "config_version": self.config_version,
            "assignment": self.assignment,
            "assignment_sha256": self.assignment_sha256,
            "policy": self.policy,
            "tuf": self.tuf.as_dict(),
            "targets": dict(sorted(self.targets.items())),
            "activated_ms": self.activated_ms,
        }

    @classmethod
    def from_manifest(cls, directory: Path, m: Mapping[str, Any]) -> ActiveConfig:
        return cls(
            directory,
            int(m["config_version"]),
            str(m["assignment"]),
            str(m["assignment_sha256"]),
            str(m["policy"]),
            TufVersions(**{k: int(v) for k, v in m["tuf"].items()}),
            {str(k): str(v) for k, v in m["targets"].items()},
            int(m["activated_ms"]),
        )


def staged_path(directory: Path, target_name: str, kind: str) -> Path:
    """Where a target of ``kind`` lives inside a config directory."""
    sub = "policies" if kind == "policy" else "models"
    return directory / sub / target_name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class UnassignedModel:
    """A model a policy declares that its assignment does not provide where the gateway
    looks for it (``models/<file>`` beside ``policies/`` in the config directory)."""

    id: str
    file: str  # where the staged policy points, relative to the config directory
    sha256: str
    target: str | None  # a target name that would provide it; None: no name can

    def describe(self) -> str:
        return f"model {self.id} ({self.file}, sha256 {self.sha256[:16]}…)"

    def remedy(self) -> str:
        """What the fleet manager must do about it."""
        if self.target is None:
            return (
                "the policy must name its models as ../models/<file>: a gateway stages "
                "them in models/ beside policies/"
            )
        return (
            f"add the model file as target {self.target} "
            f"(`edgegov fleet add {self.target} FILE`, sha256 {self.sha256[:16]}…) "
            f"and assign it (`edgegov fleet assign … --model {self.target}`)"
        )


def unassigned_models(
    bundle: PolicyBundle,
    directory: Path,
    models: Iterable[str],
    files: Mapping[str, tuple[str, int]],
) -> list[UnassignedModel]:
    """The models ``bundle`` (loaded from ``directory``'s staged layout) declares that
    the assigned ``models`` (target name -> ``files[name]`` = (sha256, length)) do not
    provide at the path the policy names. The one check both the fleet manager
    (``fleet assign``) and the gateway (before activation) make."""
    where = {
        staged_path(directory, m, "model").resolve(): files[m][0] for m in models if m in files
    }
    models_dir = (directory / "models").resolve()
    out = []
    for ref in bundle.models:
        path = ref.path.resolve()
        if where.get(path) == ref.sha256:
            continue
        target = f"models/{path.name}" if path.parent == models_dir else None
        out.append(
            UnassignedModel(ref.id, os.path.relpath(path, directory.resolve()), ref.sha256, target)
        )
    return out


def fleet_dir(state_dir: Path) -> Path:
    """Where a gateway keeps its fleet state (TUF metadata, configs): ``{state_dir}/fleet``."""
    return Path(state_dir) / "fleet"


def read_current(root: Path) -> ActiveConfig | None:
    """The config in force under ``root``, re-checked against its manifest; None if none.

    Reads only (``edgegov status`` uses it); :meth:`ConfigStore.current` is the same.
    """
    try:
        target = root / os.readlink(root / "current")
    except FileNotFoundError:
        return None
    try:
        return ActiveConfig.from_manifest(
            target, json.loads((target / "manifest.json").read_bytes())
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise FleetError(f"{target}: config in force has no valid manifest: {e}") from e


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ConfigStore:
    """The gateway's configs on disk (see the module docstring)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.configs = self.root / "configs"
        self.staging = self.root / "staging"
        self.current_link = self.root / "current"
        for d in (self.configs, self.staging):
            d.mkdir(parents=True, exist_ok=True)
        for leftover in self.staging.iterdir():  # a crash mid-staging; never in force
            shutil.rmtree(leftover, ignore_errors=True)

    def current(self) -> ActiveConfig | None:
        """The config in force, re-checked against its manifest; None if there is none."""
        return read_current(self.root)

    def new_staging(self, name: str) -> Path:
        d = self.staging / f"{name}.{os.getpid()}"
        shutil.rmtree(d, ignore_errors=True)
        (d / "policies").mkdir(parents=True)
        (d / "models").mkdir()
        return d

    def write(self, path: Path, data: bytes) -> None:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def activate(self, staged: Path, config: ActiveConfig) -> ActiveConfig:
        """Commit a staged directory (all files verified and written) and switch to it."""
        # A fresh name per activation: a config activated again (after a crash, or
        # switching back) never collides with a directory that is or was in force.
        final = self.configs / f"v{config.config_version}-{secrets.token_hex(8)}"
        cfg = replace(config, directory=final)
        self.write(staged / "manifest.json", json.dumps(cfg.manifest(), indent=2).encode())
        for sub in ("policies", "models", "."):
            _fsync_dir(staged / sub)
        os.rename(staged, final)
        _fsync_dir(self.configs)
        link = self.root / f"current.{os.getpid()}.tmp"
        if link.is_symlink():
            link.unlink()
        os.symlink(f"configs/{final.name}", link)
        os.replace(link, self.current_link)  # the switch (rename(2) is atomic)
        _fsync_dir(self.root)
        self._prune(keep={final.name})
        return cfg

    def _prune(self, keep: set[str], retain: int = 3) -> None:
        """Drop old configs, keeping the current one and the newest few."""
        dirs = sorted(self.configs.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
        for d in dirs[retain:]:
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
