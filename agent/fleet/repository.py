"""The fleet manager's side: a TUF repository on disk, published over MQTT.

Layout of a repository directory::

    repository.json        fleet name, topic prefix, expiry per role
    keys/<role>-<n>.pem    Ed25519 private keys (0600), one file per key
    metadata/              every version of every role (``{N}.{role}.json``) and
                           the latest (``{role}.json``); ``timestamp.json`` only
    targets/<sha256>       target contents, content-addressed

Roles (TUF §2.1) and what they mean here:

* ``root`` (offline, threshold), ``targets`` (the image repository: the hash
  and length of every policy bundle and ONNX model the fleet may run),
  ``snapshot`` and ``timestamp`` (online, short expiry).
* Delegated targets roles ``device-<id>`` and ``group-<g>``, signed by the
  ``director`` keys (Uptane's director repository folded into one TUF
  repository). Each delegates exactly one path, ``assignments/devices/<id>.json``
  or ``assignments/groups/<g>.json``: the assignment document saying which
  policy and models that gateway must run, with their hashes and lengths. A
  gateway installs only when that document and the top-level targets agree
  (Uptane "full verification" in spirit; see ``agent.fleet.client``).

Snapshot and timestamp carry hashes and lengths of what they name (TUF §4.4,
§4.6 optional fields), so a file from another release under the right name
and version is refused (mix-and-match).

Built on ``tuf.repository.Repository`` (python-tuf's editing base class) and
``securesystemslib`` ``CryptoSigner``; keys live in PEM files, or in a PKCS#11
token that a ``keys/<name>.pkcs11`` reference points at (``agent.fleet.hsm``).

Before anything is published, :meth:`FleetRepository.verified_messages` runs
python-tuf's own client (``tuf.ngclient.Updater``) over the exact bytes to be
published, from ``1.root.json``, as a gateway would; only what it fetched and
accepted is published.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from securesystemslib.signer import CryptoSigner, Key, Signer, SSlibKey
from tuf.api import exceptions as tuf_errors
from tuf.api.metadata import (
    DelegatedRole,
    Delegations,
    Metadata,
    MetaFile,
    Root,
    Snapshot,
    TargetFile,
    Targets,
    Timestamp,
)
from tuf.api.serialization.json import JSONSerializer
from tuf.ngclient import FetcherInterface, Updater
from tuf.repository import Repository

from agent.errors import Error, FleetError, RepositoryInvalid
from agent.fleet.activation import staged_path, unassigned_models
from agent.transport.topics import METADATA_URL, TARGETS_URL, FleetTopics, check_target_name

__all__ = [
    "DEFAULT_EXPIRY_DAYS",
    "TOP_ROLES",
    "Assignment",
    "FleetRepository",
    "assignment_name",
]

TOP_ROLES = ("root", "targets", "snapshot", "timestamp")
DIRECTOR = "director"  # key set for the per-device / per-group assignment roles
DEFAULT_EXPIRY_DAYS = {
    "root": 365.0,
    "targets": 90.0,
    "director": 30.0,
    "snapshot": 7.0,
    "timestamp": 1.0,
}
_SERIALIZER = JSONSerializer(compact=True)


def assignment_name(*, device: str | None = None, group: str | None = None) -> str:
    """Target name of the assignment document of a device or a group."""
    if (device is None) == (group is None):
        raise ValueError("give exactly one of device, group")
    kind, who = ("devices", device) if device is not None else ("groups", group)
    assert who is not None
    return check_target_name(f"assignments/{kind}/{who}.json")


def _role_for(*, device: str | None = None, group: str | None = None) -> str:
    return f"device-{device}" if device is not None else f"group-{group}"


@dataclass(frozen=True)
class Assignment:
    """What one gateway (or a group) must run; the content of an assignment target."""

    config_version: int
    policy: str  # target name
    models: tuple[str, ...]  # target names
    files: dict[str, tuple[str, int]]  # target name -> (sha256 hex, length)

    def to_bytes(self) -> bytes:
        doc = {
            "config_version": self.config_version,
            "policy": self.policy,
            "models": list(self.models),
            "files": {n: {"sha256": h, "length": ln} for n, (h, ln) in sorted(self.files.items())},
        }
        return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> Assignment:
        """Parse a (TUF-verified) assignment; FleetError names what is wrong."""
        try:
            doc = json.loads(data)
            files = {str(n): (str(f["sha256"]), int(f["length"])) for n, f in doc["files"].items()}
            a = cls(int(doc["config_version"]), str(doc["policy"]), tuple(doc["models"]), files)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise FleetError(f"{where}: not an assignment document ({e!r})") from e
        for name in (a.policy, *a.models):
            if name not in a.files:
                raise FleetError(f"{where}: {name} has no sha256/length entry")
        return a


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(microsecond=0)


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class FleetRepository(Repository):
    """A TUF repository for one fleet, kept in a directory (see the module docstring)."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        try:
            self.settings: dict[str, Any] = json.loads((self.dir / "repository.json").read_text())
        except FileNotFoundError as e:
            raise FleetError(
                f"{self.dir}: not a fleet repository (run `edgegov fleet init`)"
            ) from e
        except (OSError, ValueError) as e:
            raise FleetError(f"{self.dir}/repository.json: unreadable: {e}") from e
        self.topics = FleetTopics(self.settings["prefix"], self.settings["fleet"])
        self.expiry_days: dict[str, float] = {**DEFAULT_EXPIRY_DAYS, **self.settings["expiry"]}
        self._loaded: dict[str, Signer] = {}  # key name -> signer (a token key opens once)

    # -- creation -------------------------------------------------------------------
    @classmethod
    def init(
        cls,
        directory: Path,
        fleet: str,
        *,
        prefix: str = "edgegov",
        keys: dict[str, int] | None = None,
        thresholds: dict[str, int] | None = None,
        expiry_days: dict[str, float] | None = None,
    ) -> FleetRepository:
        """Create keys and the first root/targets/snapshot/timestamp.

        ``keys`` and ``thresholds`` are per role (``root``, ``targets``,
        ``snapshot``, ``timestamp``, ``director``); the default is one key each
        with threshold 1.
        """
        directory = Path(directory)
        if (directory / "repository.json").exists():
            raise FleetError(f"{directory}: a fleet repository exists already")
        FleetTopics(prefix, fleet)  # validates the names
        nkeys = {r: 1 for r in (*TOP_ROLES, DIRECTOR)} | (keys or {})
        thr = {r: 1 for r in (*TOP_ROLES, DIRECTOR)} | (thresholds or {})
        for role, t in thr.items():
            if not 1 <= t <= nkeys[role]:
                raise FleetError(f"{role}: threshold {t} needs 1..{nkeys[role]} keys")
        for sub in ("keys", "metadata", "targets"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(directory / "keys", 0o700)
        settings = {
            "fleet": fleet,
            "prefix": prefix,
            "expiry": {**DEFAULT_EXPIRY_DAYS, **(expiry_days or {})},
            "director_threshold": thr[DIRECTOR],
        }
        _write_atomic(directory / "repository.json", json.dumps(settings, indent=2).encode())
        repo = cls(directory)
        root = Root(expires=_now() + timedelta(days=repo.expiry_days["root"]))
        root.consistent_snapshot = True
        for role in (*TOP_ROLES, DIRECTOR):
            for i in range(1, nkeys[role] + 1):
                key = repo.new_key(f"{role}-{i}")
                if role != DIRECTOR:
                    root.add_key(key, role)
            if role != DIRECTOR:
                root.roles[role].threshold = thr[role]
        root.version = 0  # close() bumps it to 1
        repo.close("root", Metadata(root))
        with repo.edit("targets"):
            pass
        repo.release()
        return repo

    # -- keys -------------------------------------------------------------------------
    def new_key(self, name: str) -> SSlibKey:
        """Generate an Ed25519 key ``keys/<name>.pem`` (0600) and return its public part."""
        path = self.dir / "keys" / f"{name}.pem"
        if path.exists():
            raise FleetError(f"{path}: key exists already")
        priv = Ed25519PrivateKey.generate()
        pem = priv.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write_atomic(path, pem, 0o600)
        return SSlibKey.from_crypto(priv.public_key())

    def _key_names(self, pattern: str = "*") -> list[str]:
        keys = self.dir / "keys"
        return sorted(p.stem for ext in (".pem", ".pkcs11") for p in keys.glob(pattern + ext))

    def _signers(self) -> dict[str, Signer]:
        signers = (self.signer(n) for n in self._key_names())
        return {s.public_key.keyid: s for s in signers}

    def public_keys(self, prefix: str) -> list[Key]:
        """Public keys of the key files named ``<prefix>-*`` (``.pem`` or ``.pkcs11``)."""
        return [self.signer(n).public_key for n in self._key_names(f"{prefix}-*")]

    def signer(self, name: str) -> Signer:
        """The signer of ``keys/<name>.pem``, or of the token key ``keys/<name>.pkcs11``
        points at (see agent/fleet/hsm.py); loaded once per repository object."""
        if name not in self._loaded:
            self._loaded[name] = self._load_signer(name)
        return self._loaded[name]

    def _load_signer(self, name: str) -> Signer:
        token_ref = self.dir / "keys" / f"{name}.pkcs11"
        if token_ref.exists():
            from agent.fleet.hsm import load_pkcs11_reference

            return load_pkcs11_reference(token_ref)
        path = self.dir / "keys" / f"{name}.pem"
        try:
            priv = serialization.load_pem_private_key(path.read_bytes(), None)
        except (OSError, ValueError) as e:
            raise FleetError(f"{path}: cannot load the key: {e}") from e
        if not isinstance(priv, Ed25519PrivateKey):
            raise FleetError(f"{path}: not an Ed25519 private key")
        return CryptoSigner(priv, SSlibKey.from_crypto(priv.public_key()))

    def rotate(self, role: str, add: Iterable[str], remove: Iterable[str], threshold: int) -> int:
        """New root version: key files ``add`` (created if missing) replace ``remove``
        for ``role``; signed by the old and the new root keys (TUF §5.3.4).
        Returns the new root version."""
        with self.edit_root() as root:
            for name in add:
                known = any(
                    (self.dir / "keys" / f"{name}{ext}").exists() for ext in (".pem", ".pkcs11")
                )
                key = self.signer(name).public_key if known else self.new_key(name)
                root.add_key(key, role)
            for name in remove:
                root.revoke_key(self.signer(name).public_key.keyid, role)
            root.roles[role].threshold = threshold
            version = root.version + 1
        return version

    def signers_for(self, role: str, signed: Any) -> list[Signer]:
        """Every signer we hold for ``role``: for root, the keys of this and the
        previous root version (TUF §5.3.4: a new root is signed by both thresholds)."""
        signers = self._signers()
        if role == "root":
            ids = set(signed.roles["root"].keyids)
            if signed.version > 1:
                prev = self._load(f"{signed.version - 1}.root.json")
                assert isinstance(prev.signed, Root)
                ids |= set(prev.signed.roles["root"].keyids)
        elif role in ("targets", "snapshot", "timestamp"):
            ids = set(self.root().roles[role].keyids)
        else:
            parent = self.targets()
            assert parent.delegations is not None and parent.delegations.roles is not None
            ids = set(parent.delegations.roles[role].keyids)
        return [signers[k] for k in sorted(ids) if k in signers]

    # -- tuf.repository.Repository ------------------------------------------------------
    def _load(self, filename: str) -> Metadata[Any]:
        return Metadata.from_bytes((self.dir / "metadata" / filename).read_bytes())

    def open(self, role: str) -> Metadata[Any]:
        path = self.dir / "metadata" / f"{role}.json"
        if path.exists():
            return Metadata.from_bytes(path.read_bytes())
        signed: Any
        if role == "timestamp":
            signed = Timestamp(snapshot_meta=self.snapshot_info)
        elif role == "snapshot":
            signed = Snapshot(meta=self.targets_infos)
        elif role == "root":
            signed = Root()
        else:
            signed = Targets()
        signed.version = 0
        return Metadata(signed)

    def close(self, role: str, md: Metadata[Any]) -> None:
        md.signed.version += 1
        kind = role if role in TOP_ROLES else DIRECTOR
        md.signed.expires = _now() + timedelta(days=self.expiry_days[kind])
        md.signatures.clear()
        signers = self.signers_for(role, md.signed)
        if not signers:
            raise FleetError(f"no private key for role {role} in {self.dir / 'keys'}")
        for signer in signers:
            md.sign(signer, append=True)
        data = md.to_bytes(_SERIALIZER)
        meta = self.dir / "metadata"
        if role != "timestamp":
            _write_atomic(meta / f"{md.signed.version}.{role}.json", data)
        _write_atomic(meta / f"{role}.json", data)

    def _metafile(self, role: str) -> MetaFile:
        data = (self.dir / "metadata" / f"{role}.json").read_bytes()
        version = Metadata.from_bytes(data).signed.version
        return MetaFile(version, len(data), {"sha256": hashlib.sha256(data).hexdigest()})

    @property
    def targets_infos(self) -> dict[str, MetaFile]:
        return {f"{r}.json": self._metafile(r) for r in ["targets", *self.delegated_roles()]}

    @property
    def snapshot_info(self) -> MetaFile:
        return self._metafile("snapshot")

    # -- fleet operations ----------------------------------------------------------------
    def delegated_roles(self) -> list[str]:
        d = self.targets().delegations
        return sorted(d.roles) if d is not None and d.roles else []

    def add_target(
        self, name: str, data: bytes, kind: str, custom: Mapping[str, Any] | None = None
    ) -> TargetFile:
        """Store ``data`` content-addressed and list it in the top-level targets.

        ``custom``: more of what the signed targets metadata says of it, beside its kind
        (``preview``: the digest of the policy preview the approver saw, issue 16).
        """
        check_target_name(name)
        if name.startswith("assignments/"):
            raise FleetError(f"{name}: assignments/ is reserved for assignment documents")
        tf = self._store(name, data, kind)
        tf.unrecognized_fields["custom"]["edgegov"].update(custom or {})
        with self.edit_targets() as targets:
            targets.targets[name] = tf
        return tf

    def _store(self, name: str, data: bytes, kind: str) -> TargetFile:
        tf = TargetFile.from_data(name, data, ["sha256"])
        tf.unrecognized_fields["custom"] = {"edgegov": {"kind": kind}}
        _write_atomic(self.dir / "targets" / tf.hashes["sha256"], data)
        return tf

    def _files(self, names: Iterable[str]) -> dict[str, tuple[str, int]]:
        """(sha256, length) of each named target; FleetError for one not added."""
        listed = self.targets().targets
        files = {}
        for n in names:
            if n not in listed:
                raise FleetError(f"{n}: not a target of this repository (run `fleet add` first)")
            files[n] = (listed[n].hashes["sha256"], listed[n].length)
        return files

    def check_assignment(self, policy: str, models: Iterable[str] = ()) -> None:
        """Before signing: what a gateway checks before it activates this assignment.

        The policy loads where the gateway stages it, and every model it declares is
        assigned (same digest, at the path the policy names). FleetError says what to add.
        """
        from agent.policy import load_policy  # the policy compiler: only when assigning

        models = tuple(models)
        files = self._files((policy, *models))
        with tempfile.TemporaryDirectory(prefix="edgegov-assign-") as tmp:
            staged = staged_path(Path(tmp), policy, "policy")
            staged.parent.mkdir()
            staged.write_bytes(self.blob(files[policy][0]))
            try:
                bundle = load_policy(staged)
            except Error as e:
                raise FleetError(f"{policy}: {str(e).replace(str(staged), policy)}") from e
            missing = unassigned_models(bundle, Path(tmp), models, files)
        if missing:
            raise FleetError(
                "; ".join(
                    f"{policy} declares {m.describe()}, which this assignment lacks: {m.remedy()}"
                    for m in missing
                )
            )

    def assign(
        self,
        policy: str,
        models: Iterable[str] = (),
        *,
        device: str | None = None,
        group: str | None = None,
    ) -> Assignment:
        """Sign (as director) what a device or group must run; the config version increases.

        Signs what it is given (see :meth:`check_assignment`, which ``fleet assign`` runs)."""
        models = tuple(models)
        files = self._files((policy, *models))
        role = _role_for(device=device, group=group)
        name = assignment_name(device=device, group=group)
        self._delegate(role, name)
        previous = self.targets(role).targets.get(name)
        version = 1
        if previous is not None:
            old = Assignment.from_bytes(self.blob(previous.hashes["sha256"]), name)
            version = old.config_version + 1
        assignment = Assignment(version, policy, models, files)
        tf = self._store(name, assignment.to_bytes(), "assignment")
        with self.edit_targets(role) as t:
            t.targets = {name: tf}
        return assignment

    def _delegate(self, role: str, path: str) -> None:
        if role in self.delegated_roles():
            return
        keys = self.public_keys(DIRECTOR)
        with self.edit_targets() as targets:
            if targets.delegations is None:
                targets.delegations = Delegations({}, roles={})
            assert targets.delegations.roles is not None
            targets.delegations.keys.update({k.keyid: k for k in keys})
            threshold = int(self.settings["director_threshold"])
            targets.delegations.roles[role] = DelegatedRole(
                role, [k.keyid for k in keys], threshold, True, [path]
            )
        with self.edit_targets(role):
            pass

    def blob(self, sha256: str) -> bytes:
        return (self.dir / "targets" / sha256).read_bytes()

    def release(self) -> tuple[int, int]:
        """New snapshot (if targets changed) and timestamp; returns their versions."""
        self.do_snapshot()
        self.do_timestamp(force=True)
        return self.snapshot().version, self.timestamp().version

    # -- publishing -------------------------------------------------------------------------
    def messages(self) -> list[tuple[str, bytes]]:
        """Every retained message of the current release: targets, metadata, timestamp last."""
        out = []
        for role_targets in ["targets", *self.delegated_roles()]:
            for name, tf in self.targets(role_targets).targets.items():
                sha = tf.hashes["sha256"]
                out.append((self.topics.target(name, sha), self.blob(sha)))
        meta = self.dir / "metadata"
        versioned = sorted(
            (p for p in meta.glob("*.*.json") if p.name.split(".")[0].isdigit()),
            key=lambda p: (p.name.split(".", 1)[1] == "root.json", int(p.name.split(".")[0])),
        )
        out += [(self.topics.metadata(p.name), p.read_bytes()) for p in versioned]
        out.append((self.topics.timestamp, (meta / "timestamp.json").read_bytes()))
        return out

    def verified_messages(self) -> list[tuple[str, bytes]]:
        """The messages to publish, verified first as a gateway verifies them.

        python-tuf's client (``Updater``) runs over exactly these bytes, trusting only
        ``1.root.json``: the root chain with each version's thresholds, timestamp,
        snapshot and targets (signatures, thresholds, versions, expiry, the hashes and
        lengths each names), every delegated assignment role, and the hash and length of
        every target. What it did not need (older snapshot and targets versions) is left
        out. RepositoryInvalid names the file and what failed; nothing is published then.
        """
        messages = self.messages()
        fetcher = _LocalFetcher(dict(messages), self.topics)
        try:
            anchor = (self.dir / "metadata" / "1.root.json").read_bytes()
        except OSError as e:
            raise RepositoryInvalid(f"metadata/1.root.json: unreadable: {e}") from e
        with tempfile.TemporaryDirectory(prefix="edgegov-verify-") as tmp:
            (Path(tmp) / "metadata").mkdir()
            (Path(tmp) / "targets").mkdir()
            try:
                updater = Updater(
                    f"{tmp}/metadata", METADATA_URL, f"{tmp}/targets", TARGETS_URL, fetcher,
                    bootstrap=anchor,
                )  # fmt: skip
                updater.refresh()
                for role in ["targets", *self.delegated_roles()]:
                    for name in self.targets(role).targets:
                        info = updater.get_targetinfo(name)  # loads and checks the role
                        if info is None:
                            raise RepositoryInvalid(
                                f"{name}: listed by role {role}, but not found by a client "
                                "(delegation paths or snapshot do not lead to it)"
                            )
                        updater.download_target(info, f"{tmp}/targets/target")
            except (tuf_errors.RepositoryError, tuf_errors.DownloadError, ValueError) as e:
                where = fetcher.fetched[-1] if fetcher.fetched else "metadata"
                text = f"{type(e).__name__}: {e}"
                if e.__cause__ is not None:
                    text += f" ({e.__cause__})"
                raise RepositoryInvalid(
                    f"{where.removeprefix(self.topics.tuf + '/')}: {text}; nothing published"
                ) from e
        verified = {self.topics.metadata("1.root.json"), *fetcher.fetched}  # the anchor too
        return [(t, p) for t, p in messages if t in verified]


class _LocalFetcher(FetcherInterface):
    """python-tuf's fetcher over the messages about to be published (topic -> bytes)."""

    def __init__(self, messages: dict[str, bytes], topics: FleetTopics) -> None:
        self.messages = messages
        self.topics = topics
        self.fetched: list[str] = []

    def _fetch(self, url: str) -> Iterator[bytes]:
        topic = self.topics.for_url(url)
        self.fetched.append(topic)
        payload = self.messages.get(topic)
        if payload is None:  # ngclient: "no newer root" for the next root version
            raise tuf_errors.DownloadHTTPError(f"{topic}: not in the repository", 404)
        return iter((payload,))
