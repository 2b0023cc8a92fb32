"""The ``self_tests:`` section of a policy bundle: read and validated into :class:`SelfTest`.

A self-test is declared once and runs on a schedule (``docs/self-tests.md``)::

    self_tests:
      - id: probes-agree          # redundant probes: |mean(a) - mean(b)| <= tolerance
        kind: redundant
        channels: [temperature, probe_b]
        tolerance: 0.5            # in the channels' unit
        every: 1h
        goal: keep-cold           # optional: the goal whose evidence it supports
      - id: ref-cell              # a reference: |mean(channel) - reference| <= tolerance
        kind: reference
        channel: ref_cell
        reference: 0.01
        tolerance: 0.1
        every: 1h

Every failure is a :class:`~agent.errors.PolicyError` naming file, line, column and
field (``self_tests[1].channel``), like the rest of the loader's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import yaml

from agent.policy.model import Channel, SelfTest
from agent.policy.yaml_cursor import YamlCursor

__all__ = ["read_self_tests"]

#: per kind: the keys it needs beside id, kind, tolerance, every; the keys it does not take
_KEYS = {
    "redundant": (("channels",), ("channel", "reference")),
    "reference": (("channel", "reference"), ("channels",)),
}


def read_self_tests(
    d: YamlCursor,
    node: yaml.Node,
    channels: Sequence[Channel],
    goal_ids: Sequence[str],
    inherited: Sequence[SelfTest],
    duration: Callable[[yaml.Node, str], int],
) -> list[SelfTest]:
    """The self-tests ``node`` declares (a layer's come after its baseline's ``inherited``).

    ``duration`` reads a duration field (the loader's: ``30s``, ``1h``; a bare number is
    refused). Raises PolicyError on the first problem.
    """
    by_name = {c.name: c for c in channels}
    seen = {t.id for t in inherited}
    out: list[SelfTest] = []
    for i, item in enumerate(d.sequence(node, "self_tests")):
        p = f"self_tests[{i}]"
        m = d.mapping(
            item,
            p,
            ("id", "kind", "tolerance", "every"),
            ("channels", "channel", "reference", "goal"),
        )
        kind = d.string(m["kind"], f"{p}.kind")
        if kind not in _KEYS:
            raise d.error(m["kind"], f"{p}.kind", f"{kind!r} is not one of {', '.join(_KEYS)}")
        needs, refuses = _KEYS[kind]
        for key in needs:
            if key not in m:
                raise d.error(item, p, f"missing required key '{key}' (a {kind} self-test)")
        for key in refuses:
            if key in m:
                raise d.error(m[key], f"{p}.{key}", f"not used by a {kind} self-test")
        tid = d.ident(m["id"], f"{p}.id")
        if tid in seen:
            raise d.error(m["id"], f"{p}.id", f"duplicate self-test id {tid!r}")
        seen.add(tid)
        if kind == "redundant":
            nodes = d.sequence(m["channels"], f"{p}.channels")
            if len(nodes) != 2:
                raise d.error(m["channels"], f"{p}.channels", "expected two channels: [a, b]")
            paths = [f"{p}.channels[{j}]" for j in range(2)]
        else:
            nodes, paths = [m["channel"]], [f"{p}.channel"]
        names = tuple(_channel(d, n, path, by_name) for n, path in zip(nodes, paths))
        if kind == "redundant":
            a, b = (by_name[n] for n in names)
            if a.name == b.name:
                raise d.error(m["channels"], f"{p}.channels", "compares a channel with itself")
            if a.unit != b.unit:
                raise d.error(
                    m["channels"],
                    f"{p}.channels",
                    f"{a.name} is in {a.unit}, {b.name} in {b.unit}: redundant channels "
                    "measure the same quantity in the same unit",
                )
        tolerance = d.number(m["tolerance"], f"{p}.tolerance")
        if not tolerance > 0:
            raise d.error(m["tolerance"], f"{p}.tolerance", f"must be > 0, got {tolerance:g}")
        every = duration(m["every"], f"{p}.every")
        if every <= 0:
            raise d.error(m["every"], f"{p}.every", "must be longer than 0")
        reference = d.number(m["reference"], f"{p}.reference") if kind == "reference" else None
        goal = None
        if "goal" in m:
            goal = d.string(m["goal"], f"{p}.goal")
            if goal not in goal_ids:
                raise d.error(
                    m["goal"], f"{p}.goal", f"unknown goal {goal!r}; declared goals: "
                    + ", ".join(goal_ids)
                )  # fmt: skip
        out.append(
            SelfTest(tid, kind, names, tolerance, every, reference, goal, item.start_mark.line + 1)
        )
    return out


def _channel(d: YamlCursor, node: yaml.Node, path: str, by_name: dict[str, Channel]) -> str:
    name = d.string(node, path)
    ch = by_name.get(name)
    if ch is None:
        raise d.error(
            node, path, f"unknown channel {name!r}; declared channels: {', '.join(by_name)}"
        )
    if ch.type != "double":
        raise d.error(node, path, f"channel {name!r} is a {ch.type}: a self-test compares numbers")
    return name
