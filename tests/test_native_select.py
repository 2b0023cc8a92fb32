"""The selector rule shared by every native/ module: compiled unless EDGEGOV_PURE is set
or the extension is missing; a missing extension is never a silent slowdown."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# Make `native.<compiled>` unimportable, as on a machine where it was never built.
_BLOCK = """
import importlib.abc, logging, sys
logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "native.{compiled}":
            raise ImportError("simulated: not built")
sys.meta_path.insert(0, Block())
import native.{selector} as s
print(s.IMPLEMENTATION)
"""

SELECTORS = [("policy", "_policy"), ("verify", "_verify"), ("frames", "_frames"),
             ("cbor_scan", "_cbor_scan"), ("features", "_features")]  # fmt: skip


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "EDGEGOV_PURE"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**base, **env}, check=True)  # fmt: skip


@pytest.mark.parametrize(("selector", "compiled"), SELECTORS)
def test_a_missing_extension_falls_back_and_says_so(selector, compiled):
    r = _run(_BLOCK.format(selector=selector, compiled=compiled))
    assert r.stdout.strip() == "python"
    assert f"native.{compiled} is not built" in r.stderr and "much slower" in r.stderr


@pytest.mark.parametrize(("selector", "compiled"), SELECTORS)
def test_built_extension_is_used_and_env_var_forces_the_twin_quietly(selector, compiled):
    code = f"import native.{selector} as s; print(s.IMPLEMENTATION)"
    assert _run(code).stdout.strip() == "cython"
    forced = _run(code, EDGEGOV_PURE="1")
    assert forced.stdout.strip() == "python" and "not built" not in forced.stderr
