"""The README's shell blocks, run as written: a README command that stops working fails CI.

Every command in a ```sh block is either run (in order, in one sandbox laid out like a
clone: ``.venv``, ``configs`` and ``firmware_bridge`` linked in, ``.venv/bin`` first on
PATH, a private Mosquitto standing in for ``localhost:1883``) or matched by one rule in
``NOT_RUN_HERE`` that says where else it is tested and why it cannot run here. A new
command that matches neither fails ``test_every_readme_command_is_classified``, so the
table cannot silently fall behind the README.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agent.tools.broker import MosquittoBroker, find_mosquitto

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
LINKED = (".venv", "configs", "firmware_bridge")  # what a command may use from the clone


@dataclass(frozen=True)
class Command:
    text: str  # one command, continuation lines joined
    line: int  # where it starts in README.md
    section: str  # the heading it is under

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.section}): {self.text}"


def readme_commands(path: Path = README) -> list[Command]:
    """Each command of each ```sh / ```bash / ```console block, in README order."""
    out: list[Command] = []
    section, fence, pending, start = "", None, "", 0
    for n, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if fence is None:
            if raw.startswith("#"):
                section = raw.lstrip("#").strip()
            m = re.match(r"^```(sh|bash|shell|console)\s*$", raw)
            if m:
                fence = m.group(1)
            continue
        if raw.startswith("```"):
            fence = None
            continue
        line = raw.rstrip()
        if not pending:
            start = n
            if not line.strip() or line.lstrip().startswith("#"):
                continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = " ".join((pending + line).split())
        pending = ""
        # drop a trailing comment (shlex knows quotes; the command itself is kept verbatim)
        words = shlex.split(text, comments=True)
        if words:
            cut = _strip_comment(text)
            out.append(Command(cut, start, section))
    return out


def _strip_comment(text: str) -> str:
    """``text`` without a trailing ``# comment`` (an unquoted '#' after whitespace)."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip()
    return text


# Commands that are not run by this file: (pattern, where they are tested / why not here).
# Each reason must name a test that exists (checked below) or a fact about this machine.
NOT_RUN_HERE: list[tuple[str, str]] = [
    (r"^make test$", "the command running this very test (.ci/run calls it)"),
    (r"^pip install \.$", "tests/test_install.py::test_wheel_from_sdist_runs_outside_the_tree"),
    (r"^pip install edgegov", "tests/test_install.py::test_wheel_from_sdist_runs_outside_the_tree"),
    (r"^pip wheel ", "tests/test_install.py::test_wheel_has_every_extension_and_no_march_native"),
    (
        r"^docker run .*binfmt|^pipx run cibuildwheel ",
        "needs Docker and QEMU, which CI lacks; it runs setup.py's build, as tests/test_install.py",
    ),
    (r"^\$EDITOR ", "interactive: the operator edits the config by hand"),
    (r"^(sudo )?edgegov run ", "tests/test_agent_e2e.py: the daemon through a real pty and broker"),
    (
        r"^install -m 0644 configs/systemd/edgegov\.sysusers |^systemd-sysusers$",
        "tests/test_service.py::test_sysusers_snippet_creates_the_user_in_dialout "
        "(systemd-sysusers --root on a scratch /etc: here it would add a user to this machine)",
    ),
    (
        r"^install -m 0644 configs/systemd/edgegov\.service |^systemctl |^journalctl ",
        "tests/test_service.py::test_systemd_analyze_verifies_the_unit_without_a_warning "
        "(CI has no systemd as PID 1; the notify and watchdog path: the tests beside it)",
    ),
    (r"^chown ", "changes ownership in /etc: root on a gateway, not in CI"),
    (
        r"^(\.venv/bin/)?edgegov bench fuzz",
        "tests/test_fuzz.py: the command (test_bench_fuzz_command_prints_the_counts_and_exits_by_"
        "them), a 1,500-case campaign with 15 CLI cases and a differential in the default suite, "
        "the 20,000-case one under the soak marker (make soak)",
    ),
    (
        r"^(\.venv/bin/)?edgegov bench faults",
        "tests/test_faults.py::test_bench_faults_prints_the_table_and_a_dead_sensor_is_not_evaluable"
        " (the command; the fixture beside it runs every short scenario once)",
    ),
]


def _not_run_reason(cmd: Command) -> str | None:
    for pattern, reason in NOT_RUN_HERE:
        if re.search(pattern, cmd.text):
            return reason
    return None


def _runnable(cmd: Command) -> bool:
    first = cmd.text.split()[0]
    return first in ("edgegov", ".venv/bin/edgegov", "make") and _not_run_reason(cmd) is None


def test_every_readme_command_is_classified() -> None:
    cmds = readme_commands()
    assert len(cmds) >= 10, f"found only {len(cmds)} README commands: is the parser broken?"
    stray = [str(c) for c in cmds if not _runnable(c) and _not_run_reason(c) is None]
    assert not stray, (
        "README commands neither run by tests/test_readme.py nor listed in NOT_RUN_HERE "
        "(add a rule naming where they are tested):\n  " + "\n  ".join(stray)
    )


def test_not_run_reasons_name_tests_that_exist() -> None:
    for _pattern, reason in NOT_RUN_HERE:
        m = re.match(r"(tests/[\w/]+\.py)(?:::(\w+))?", reason)
        if m is None:
            continue
        file = ROOT / m.group(1)
        assert file.is_file(), f"NOT_RUN_HERE names {m.group(1)}, which does not exist"
        if m.group(2):
            assert f"def {m.group(2)}(" in file.read_text(), (
                f"NOT_RUN_HERE names {reason}, which does not exist"
            )


def _make_recipe(target: str) -> list[str]:
    """The shell lines of a Makefile target, with $(VENV) spelled out."""
    lines, inside = [], False
    for raw in (ROOT / "Makefile").read_text().splitlines():
        if re.match(rf"^{re.escape(target)}:", raw):
            inside = True
            continue
        if inside:
            if raw.startswith("\t"):
                lines.append(raw.strip().lstrip("@-").replace("$(VENV)", ".venv"))
            elif raw.strip():
                break
    assert lines, f"Makefile has no recipe for {target}"
    return lines


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    if find_mosquitto() is None:
        pytest.fail("mosquitto is not installed; run the README's test command (make test)")
    box = tmp_path_factory.mktemp("readme")
    for name in LINKED:
        (box / name).symlink_to(ROOT / name)
    with MosquittoBroker(box / ".broker") as broker:
        env = {
            **os.environ,
            "PATH": f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
            "EDGEGOV_README_BROKER": broker.url,
        }
        env.pop("PYTHONPATH", None)
        yield box, env


def _rewrite(text: str, box: Path, env: dict[str, str]) -> str:
    """What differs from a real gateway: the broker's port and a writable /etc."""
    text = text.replace("mqtt://localhost:1883", env["EDGEGOV_README_BROKER"])
    return text.replace("/etc/edgegov", str(box / "etc-edgegov"))


_RUN = [c for c in readme_commands() if _runnable(c)]


@pytest.mark.parametrize("cmd", _RUN, ids=[f"L{c.line}" for c in _RUN])
def test_readme_command_runs_as_written(cmd: Command, sandbox: tuple[Path, dict[str, str]]) -> None:
    box, env = sandbox
    steps = _make_recipe(cmd.text.split()[1]) if cmd.text.startswith("make ") else [cmd.text]
    for step in steps:
        proc = subprocess.run(
            ["bash", "-c", _rewrite(step, box, env)],
            cwd=box,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert proc.returncode == 0, (
            f"{cmd}\n  step: {step}\n  exit {proc.returncode}\n"
            f"  stdout: {proc.stdout[-1500:]}\n  stderr: {proc.stderr[-3000:]}"
        )
