"""The selector rule shared by every native/ module: compiled unless EDGEGOV_PURE is set
or the extension is missing; a missing extension is never a silent slowdown."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Make some `native.<compiled>` modules unimportable, as on a machine where they were never
# built (ModuleNotFoundError) or where the file is there but does not load (ImportError).
_BLOCK = """
import importlib.abc, logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name in {missing!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        if name in {broken!r}:
            raise ImportError("simulated: undefined symbol")
sys.meta_path.insert(0, Block())
{imports}
"""


def _block(selectors, missing=(), broken=()):
    imports = "\n".join(f"import native.{s} as s; print(s.IMPLEMENTATION)" for s in selectors)
    return _BLOCK.format(missing=set(missing), broken=set(broken), imports=imports)


SELECTORS = [("policy", "_policy"), ("verify", "_verify"), ("frames", "_frames"),
             ("cbor_scan", "_cbor_scan"), ("features", "_features"),
             ("hashing", "_hashing")]  # fmt: skip


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "EDGEGOV_PURE"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**base, **env}, check=True)  # fmt: skip


@pytest.mark.parametrize(("selector", "compiled"), SELECTORS)
def test_a_missing_extension_falls_back_and_says_so(selector, compiled):
    r = _run(_block([selector], missing=[f"native.{compiled}"]))
    assert r.stdout.strip() == "python"
    assert "1 of 6 native modules fell back" in r.stderr, r.stderr
    assert f"native.{compiled} (not built)" in r.stderr and "much slower" in r.stderr


def test_fallbacks_are_said_once_per_process_naming_every_module():
    missing = ["native._policy", "native._frames", "native._features"]
    r = _run(_block([s for s, _ in SELECTORS], missing=missing, broken=["native._verify"]))
    assert r.stdout.split() == ["python", "python", "python", "cython", "python", "cython"]
    assert r.stderr.count("fell back to their pure-Python twins") == 1, r.stderr
    assert "4 of 6 native modules" in r.stderr
    for name in missing:
        assert f"{name} (not built)" in r.stderr
    assert "native._verify (cannot be loaded: simulated: undefined symbol)" in r.stderr
    assert "native._cbor_scan" not in r.stderr  # it was built and is used


def test_status_says_which_implementation_and_why():
    code = "import native; print(native.format_native_status())"
    table = _run(_block([], missing=["native._frames"]) + code).stdout
    assert "native modules: 5 of 6 compiled; 1 run as their pure-Python twins" in table
    assert "native._frames     pure twin (not built)" in table
    assert "native._policy     compiled" in table
    forced = _run(code, EDGEGOV_PURE="1")
    assert forced.stdout.count("pure twin (EDGEGOV_PURE is set)") == 6, forced.stdout
    assert "fell back" not in forced.stderr  # asked for: not a warning


@pytest.mark.parametrize(("selector", "compiled"), SELECTORS)
def test_built_extension_is_used_and_env_var_forces_the_twin_quietly(selector, compiled):
    code = f"import native.{selector} as s; print(s.IMPLEMENTATION)"
    assert _run(code).stdout.strip() == "cython"
    forced = _run(code, EDGEGOV_PURE="1")
    assert forced.stdout.strip() == "python" and "not built" not in forced.stderr
