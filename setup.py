"""Build the Cython hot paths in native/.

Only the decision of which extensions to build lives here; metadata is in
pyproject.toml. Each compiled module has a pure-Python twin beside it
(native/_<name>_py.py) that is used when the extension is absent or when
EDGEGOV_PURE=1 is set, so the package still works where no compiler is
available -- but `pip install .` on a machine with a C compiler builds them.
"""

from Cython.Build import cythonize
from setuptools import Extension, setup

EXTENSIONS = [
    Extension(
        "native._policy",
        ["native/_policy.pyx"],
        # no FMA contraction: results must match the pure twin bit for bit
        extra_compile_args=["-O3", "-ffp-contract=off"],
    ),
    Extension("native._cbor_scan", ["native/_cbor_scan.pyx"], extra_compile_args=["-O3"]),
    Extension("native._frames", ["native/_frames.pyx"], extra_compile_args=["-O3"]),
    Extension("native._verify", ["native/_verify.pyx"], extra_compile_args=["-O3"]),
    Extension(
        "native._features",
        ["native/_features.pyx"],
        # no FMA contraction: results must match the pure twin bit for bit
        extra_compile_args=["-O3", "-ffp-contract=off"],
    ),
]

setup(
    ext_modules=cythonize(
        EXTENSIONS,
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True},
    ),
)
