"""edgegov installed as a user installs it: sdist -> wheel -> fresh venv -> run from elsewhere.

Every other test runs from the editable install inside the source tree, which hides a
package or data file that the wheel lacks (issue 11: ``agent.sources`` was missing and
``pip install .`` gave an agent that could not start). Here:

1. the files git knows are copied out (what a fresh clone has) and an sdist is built
   from them with ``python -m build --sdist``;
2. a wheel is built from that sdist (so the sdist must carry all the build needs), and
   a second one with ``EDGEGOV_PURE=1`` at build time (no compiled module);
3. each wheel is installed into a new virtual environment (no system site-packages,
   dependencies from the package index; pip's cache makes repeat runs fast);
4. ``edgegov`` runs from a temporary directory with nothing of the source tree on its
   path: ``--version``, ``doctor --json``, ``--help`` of every command the installed
   parser has, ``policy check`` of every bundle the installed package ships, and the
   demo, whose evidence ``audit verify`` then checks.

Everything is built once per session; the pure-wheel half is marked ``slow`` but is part
of the default suite (CI runs it).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent import __version__
from agent.tools.broker import find_mosquitto
from native import COMPILED_MODULES
from native._select import FALLBACK_WARNING
from tests.conftest import ROOT

SHIPPED_DIRS = ("agent", "native", "firmware_bridge", "configs")
WHEEL_TOP_LEVEL = {*SHIPPED_DIRS, f"edgegov-{__version__}.dist-info"}
NATIVE = [f"native.{m}" for m in COMPILED_MODULES]


def _run(
    cmd: list[str | Path], *, expect: int | None = 0, timeout: float = 600, **kw: object
) -> subprocess.CompletedProcess[str]:
    """Run a command; an unexpected exit code fails with the command and its output."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, **kw)
    if expect is not None and r.returncode != expect:
        pytest.fail(
            f"{' '.join(map(str, cmd))} exited {r.returncode} (expected {expect})\n"
            f"--- stdout ---\n{r.stdout[-6000:]}\n--- stderr ---\n{r.stderr[-6000:]}"
        )
    return r


def _user_env(path_first: Path | None = None, **extra: str) -> dict[str, str]:
    """A user's environment: nothing pointing into this source tree or its venv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "EDGEGOV_PURE"}
    }
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and str(ROOT) not in p]
    env["PATH"] = os.pathsep.join(([str(path_first)] if path_first else []) + path)
    return {**env, **extra}


def _tree_files() -> list[str]:
    """The files a commit of this working tree holds (tracked or new, not ignored)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.fail(f"the install test lists the source files with git: {ROOT} is not a git "
                    "checkout, or git is not installed (apt-get install git)")  # fmt: skip
    out = _run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT)
    return sorted({f for f in out.stdout.split("\0") if f and (ROOT / f).is_file()})


@pytest.fixture(scope="session")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if importlib.util.find_spec("build") is None:
        pytest.fail("the 'build' package is missing from this venv: run 'make test', which "
                    "installs the [test] extra (it lists build)")  # fmt: skip
    return tmp_path_factory.mktemp("install")


@pytest.fixture(scope="session")
def sdist(work: Path) -> Path:
    clone = work / "clone"
    for rel in _tree_files():
        (clone / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, clone / rel, follow_symlinks=False)
    _run([sys.executable, "-m", "build", "--sdist", "--outdir", work / "dist", clone],
         env=_user_env())  # fmt: skip
    (path,) = (work / "dist").glob("edgegov-*.tar.gz")
    return path


@dataclass(frozen=True)
class Wheel:
    path: Path
    build_log: str

    def names(self) -> list[str]:
        with zipfile.ZipFile(self.path) as z:
            return z.namelist()


def _wheel_from_sdist(sdist: Path, out: Path, **env: str) -> Wheel:
    with tarfile.open(sdist) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(out / "src", filter="data")
        else:  # Python without extraction filters (before 3.10.12 / 3.11.4)
            tar.extractall(out / "src")
    (tree,) = (out / "src").iterdir()
    r = _run([sys.executable, "-m", "build", "--wheel", "--outdir", out / "dist", tree],
             env=_user_env(**env))  # fmt: skip
    (path,) = (out / "dist").glob("edgegov-*.whl")
    return Wheel(path, r.stdout + r.stderr)


@pytest.fixture(scope="session")
def compiled_wheel(sdist: Path, work: Path) -> Wheel:
    return _wheel_from_sdist(sdist, work / "compiled")


@pytest.fixture(scope="session")
def pure_wheel(sdist: Path, work: Path) -> Wheel:
    return _wheel_from_sdist(sdist, work / "pure", EDGEGOV_PURE="1")


@dataclass(frozen=True)
class Installed:
    """A wheel installed into its own venv, run from a directory outside the tree."""

    kind: str  # "compiled" or "pure"
    wheel: Wheel
    venv: Path
    home: Path

    def env(self) -> dict[str, str]:
        return _user_env(self.venv / "bin")

    def python(self, code: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return _run([self.venv / "bin" / "python", "-c", code], cwd=self.home, env=self.env(),
                    **kw)  # fmt: skip

    def edgegov(self, *args: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
        return _run([self.venv / "bin" / "edgegov", *args], cwd=self.home, env=self.env(),
                    **kw)  # fmt: skip


def _install(wheel: Wheel, where: Path, kind: str) -> Installed:
    venv, home = where / "venv", where / "home"
    home.mkdir(parents=True)
    _run([sys.executable, "-m", "venv", venv])  # not --system-site-packages
    _run([venv / "bin" / "python", "-m", "pip", "install", "--quiet", wheel.path],
         cwd=home, env=_user_env(venv / "bin"))  # fmt: skip
    return Installed(kind, wheel, venv, home)


@pytest.fixture(scope="session", params=["compiled", pytest.param("pure", marks=pytest.mark.slow)])
def installed(request: pytest.FixtureRequest, work: Path) -> Installed:
    wheel = request.getfixturevalue(f"{request.param}_wheel")
    return _install(wheel, work / f"venv-{request.param}", request.param)


# -- the sdist and the wheels ------------------------------------------------------------------


def test_the_sdist_carries_everything_a_wheel_is_built_from(sdist: Path):
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    needed = {"setup.py", "pyproject.toml", "MANIFEST.in", "README.md"}
    needed |= {f for f in _tree_files() if f.startswith(tuple(f"{d}/" for d in SHIPPED_DIRS))}
    assert not needed - names, f"missing from the sdist: {sorted(needed - names)}"
    assert any(n.endswith(".pyx") for n in names)
    generated = [n for n in names if re.fullmatch(r"native/.*\.(c|so)|.*\.pyc", n)]
    assert not generated, f"build products in the sdist: {generated}"


@pytest.mark.parametrize("kind", ["compiled", pytest.param("pure", marks=pytest.mark.slow)])
def test_the_wheel_holds_every_module_and_data_file_of_the_tree(kind, request):
    wheel: Wheel = request.getfixturevalue(f"{kind}_wheel")
    names = set(wheel.names())
    expected = {f for f in _tree_files() if f.split("/", 1)[0] in SHIPPED_DIRS}
    assert expected, "git lists no file under the shipped directories"
    assert not expected - names, f"in the tree but not in the wheel: {sorted(expected - names)}"
    assert {n.split("/", 1)[0] for n in names} == WHEEL_TOP_LEVEL
    unexpected = [n for n in names if "__pycache__" in n or re.fullmatch(r"native/.*\.c", n)]
    assert not unexpected, f"build leftovers in the wheel: {unexpected}"


def test_wheel_has_every_extension_and_no_march_native(compiled_wheel):
    names = compiled_wheel.names()
    for module in COMPILED_MODULES:
        built = [n for n in names if re.fullmatch(rf"native/{module}\.[^/]*\.so", n)]
        assert built, f"native/{module} is not compiled into {compiled_wheel.path.name}"
    assert not compiled_wheel.path.name.endswith("-none-any.whl")
    assert "-ffp-contract=off" in compiled_wheel.build_log  # the compile lines are in the log
    assert "-march=native" not in compiled_wheel.build_log  # a wheel runs on every CPU of its tag


@pytest.mark.slow
def test_edgegov_pure_at_build_time_makes_a_pure_wheel(pure_wheel):
    assert pure_wheel.path.name == f"edgegov-{__version__}-py3-none-any.whl"
    assert not [n for n in pure_wheel.names() if n.endswith(".so")]
    assert "EDGEGOV_PURE is set: building no native extension" in pure_wheel.build_log


@pytest.mark.slow
def test_without_a_c_compiler_the_build_says_so_and_ships_the_twins(sdist, work, pure_wheel):
    wheel = _wheel_from_sdist(sdist, work / "no-cc", CC=str(work / "no-such-cc"))
    for name in NATIVE:
        assert f"cannot build {name}" in wheel.build_log, wheel.build_log[-3000:]
    assert "pure-Python twin will be used instead" in wheel.build_log
    # the same files as the pure wheel: every twin, no extension
    assert sorted(n for n in wheel.names() if ".dist-info/" not in n) == sorted(
        n for n in pure_wheel.names() if ".dist-info/" not in n
    )


# -- the installed package, run from outside the tree ------------------------------------------


def test_the_installed_package_is_the_one_that_runs(installed: Installed):
    r = installed.python("import agent, native, sys; print(agent.__file__); print(native.__file__);"
                         " print('\\n'.join(sys.path))")  # fmt: skip
    agent_file, native_file, *path = r.stdout.splitlines()
    site = installed.venv / "lib"
    for f in (agent_file, native_file):
        assert Path(f).is_relative_to(site), f"{f} is not from the installed wheel"
    assert not [p for p in path if p and Path(p).resolve().is_relative_to(ROOT)], path


def test_version_says_which_native_modules_are_compiled(installed: Installed):
    r = installed.edgegov("--version")
    lines = r.stdout.splitlines()
    assert lines[0] == f"edgegov {__version__}"
    for name in NATIVE:
        (line,) = [x for x in lines if x.split()[:1] == [name]]
        if installed.kind == "compiled":
            assert line.split()[1:] == ["compiled"], r.stdout
        else:
            assert "pure twin (not built)" in line, r.stdout
    if installed.kind == "pure":  # said once, on stderr, naming every module
        assert r.stderr.count(FALLBACK_WARNING) == 1, r.stderr
        assert all(f"{name} (not built)" in r.stderr for name in NATIVE), r.stderr
    else:
        assert FALLBACK_WARNING not in r.stderr


def test_doctor_reports_the_installation(installed: Installed):
    r = installed.edgegov("doctor", "--json", expect=0 if installed.kind == "compiled" else 1)
    d = json.loads(r.stdout)
    assert d["edgegov"]["version"] == __version__
    assert Path(d["edgegov"]["location"]).is_relative_to(installed.venv)
    assert d["python"]["version"] == ".".join(map(str, sys.version_info[:3]))
    assert d["platform"]["machine"] and d["platform"]["system"] == "Linux"
    modules = {m["module"]: m for m in d["native"]["modules"]}
    assert sorted(modules) == sorted(NATIVE)
    if installed.kind == "compiled":
        assert d["native"]["compiled"] == len(NATIVE) and d["findings"] == []
        assert all(Path(m["path"]).is_relative_to(installed.venv) for m in modules.values())
    else:
        assert d["native"]["compiled"] == 0
        assert all(m["implementation"] == "python" and m["reason"] == "not built"
                   for m in modules.values())  # fmt: skip
        assert len(d["findings"]) == len(NATIVE)
    assert d["onnxruntime"]["version"] and "CPUExecutionProvider" in d["onnxruntime"]["providers"]
    assert d["mosquitto"]["found"] is (find_mosquitto() is not None)


# Every command path of the installed parser, then `main([*path, "--help"])` for each.
_HELP_ALL = """
import argparse, contextlib, io, json
from agent.cli import _parser, main

def paths(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,)
                yield from paths(sub, prefix + (name,))

results = []
for path in paths(_parser()):
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main([*path, "--help"])
        except SystemExit as e:
            code = e.code
    results.append({"command": list(path), "code": code, "output": out.getvalue()})
print(json.dumps(results))
"""


def test_every_command_has_help(installed: Installed):
    top = installed.edgegov("--help").stdout
    assert top.startswith("usage: edgegov")
    results = json.loads(installed.python(_HELP_ALL).stdout)
    commands = {" ".join(r["command"]) for r in results}
    # the discovery is real: a few commands every edgegov has
    assert {"demo", "doctor", "run", "emulate", "policy check", "audit verify"} <= commands
    for r in results:
        name = " ".join(r["command"])
        assert r["code"] in (0, None), f"edgegov {name} --help exited {r['code']}: {r['output']}"
        assert r["output"].startswith(f"usage: edgegov {name}"), r["output"][:500]
        if len(r["command"]) == 1:
            assert r["command"][0] in top  # listed by the top-level help


def test_every_shipped_policy_bundle_checks(installed: Installed):
    code = ("import importlib.resources as r; "
            "print('\\n'.join(str(p) for p in (r.files('configs') / 'policies').iterdir() "
            "if p.name.endswith('.yaml')))")  # fmt: skip
    bundles = sorted(Path(p) for p in installed.python(code).stdout.split())
    in_tree = sorted(p.name for p in (ROOT / "configs" / "policies").glob("*.yaml"))
    assert [b.name for b in bundles] == in_tree and in_tree
    for bundle in bundles:
        assert bundle.is_relative_to(installed.venv)
        r = installed.edgegov("policy", "check", bundle)
        assert bundle.name in r.stdout


def test_wheel_from_sdist_runs_outside_the_tree(installed: Installed):
    """The demo, then `audit verify` of what it made: the whole path, from the wheel."""
    out = installed.home / "demo"
    r = installed.edgegov("demo", "--seconds", "6", "--out", out, timeout=180)
    assert not (installed.home / "demo-out").exists()
    if installed.kind == "pure":
        assert r.stderr.count(FALLBACK_WARNING) == 1, r.stderr
        assert all(f"{name} (not built)" in r.stderr for name in NATIVE), r.stderr
    else:
        assert FALLBACK_WARNING not in r.stderr, r.stderr
    assert list((out / "attestations").rglob("*.cose")), r.stdout
    installed.edgegov(
        "audit", "verify", out / "attestations", "--key", out / "device" / "device.pub.pem"
    )
