"""Build the Cython hot paths in native/.

Only the decision of which extensions to build lives here; metadata, packages and
package data are in pyproject.toml (and MANIFEST.in for the sdist). Each compiled
module has a pure-Python twin beside it (native/_<name>_py.py) that is used when the
extension is absent or when EDGEGOV_PURE=1 is set at run time, so the package works
where nothing could be compiled:

- ``EDGEGOV_PURE=1`` at build time builds no extension: a pure ``py3-none-any`` wheel.
- Without Cython, or when the C compiler is missing or fails on a module, the build
  goes on without that module and says so; at run time the agent logs (once) which
  modules run as pure twins, and ``edgegov --version`` / ``edgegov doctor`` show it.

Nothing here assumes x86: no ``-march=native``, so a wheel runs on every CPU of its
platform tag. ``native/_policy.pyx`` does its own CPU dispatch on x86-64 (GCC
``target_clones``, picked at load time); elsewhere the compiler's baseline is used.
"""

from __future__ import annotations

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

PURE = os.environ.get("EDGEGOV_PURE", "") not in ("", "0")

# Cython runs inside build_ext, per extension (setuptools' build_ext is Cython's when
# Cython is importable), so making the sdist needs no Cython and a .pyx that fails to
# compile is one more extension left to its twin.
_DIRECTIVES = {"language_level": 3, "boundscheck": False, "wraparound": False, "cdivision": True}
_NO_FMA = ["-O3", "-ffp-contract=off"]  # no FMA contraction: bit for bit with the pure twin


# -g0: Python's own CFLAGS carry -g; debug info would be ~80 % of the wheel on a gateway.
def _ext(name: str, args: list[str], libraries: tuple[str, ...] = ()) -> Extension:
    ext = Extension(
        f"native.{name}",
        [f"native/{name}.pyx"],
        extra_compile_args=[*args, "-g0"],
        libraries=list(libraries),
        optional=True,
    )
    ext.cython_directives = _DIRECTIVES  # type: ignore[attr-defined]
    return ext


EXTENSIONS = [
    _ext("_policy", _NO_FMA),
    _ext("_cbor_scan", ["-O3"]),
    _ext("_frames", ["-O3"]),
    _ext("_verify", ["-O3"]),
    _ext("_features", _NO_FMA),
    # OpenSSL's SHA-256 (libcrypto, which CPython's hashlib uses too); without its headers
    # (Debian: libssl-dev) this one is left to its twin. SHA256() is deprecated in OpenSSL 3
    # in favour of EVP, whose per-call fetch costs more than a 65-byte hash.
    _ext("_hashing", ["-O2", "-Wno-deprecated-declarations"], ("crypto",)),
]

_TWIN_NOTE = (
    "the pure-Python twin will be used instead (correct, but much slower). Install a C "
    "compiler and the Python headers (Debian: apt-get install gcc python3-dev) and "
    "reinstall to build it."
)


def _say(message: str) -> None:
    print(f"edgegov build: {message}", file=sys.stderr, flush=True)


class BuildExtOrTwin(build_ext):
    """Build every extension; one that does not compile leaves its pure twin in charge.

    (The extensions are ``optional``, so an editable install also skips what failed.)
    """

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except Exception as e:  # Cython's or the C compiler's errors, a missing compiler, ...
            _say(f"cannot build {ext.name} ({type(e).__name__}: {e}); {_TWIN_NOTE}")


def _extensions() -> list[Extension]:
    if PURE:
        _say("EDGEGOV_PURE is set: building no native extension (a pure wheel).")
        return []
    try:
        import Cython.Compiler.Main  # noqa: F401  (setuptools uses Cython only if this loads)
    except ImportError as e:
        _say(f"Cython is not available ({e}): building no native extension; {_TWIN_NOTE}")
        return []
    return EXTENSIONS


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExtOrTwin})
