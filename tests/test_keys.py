"""Device keys: created 0600, refused when too open, never printed."""

from __future__ import annotations

import os
import stat

import pytest

from agent.errors import KeyFileError
from agent.identity.keys import generate_key, load_public_key, load_signer, public_key_path


def test_new_key_is_0600_and_loads_back_with_the_same_kid(tmp_path):
    path = tmp_path / "keys" / "device.key"
    s = generate_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_signer(path).kid == s.kid
    assert load_public_key(public_key_path(path)).kid == s.kid


def test_key_readable_by_others_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "device.key"
    generate_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(KeyFileError, match=r"mode 0644.*chmod 600"):
        load_signer(path)


def test_existing_key_is_never_overwritten(tmp_path):
    path = tmp_path / "device.key"
    generate_key(path)
    before = path.read_bytes()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        generate_key(path)
    assert path.read_bytes() == before


def test_signer_repr_does_not_leak_key_material(tmp_path):
    s = generate_key(tmp_path / "device.key")
    assert "PRIVATE" not in repr(s) and s.kid.hex() in repr(s)


def test_missing_key_says_how_to_create_one(tmp_path):
    with pytest.raises(KeyFileError, match="edgegov init"):
        load_signer(tmp_path / "nope.key")
