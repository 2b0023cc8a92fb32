"""A cursor over a composed YAML document: typed reads that know where they are.

:class:`YamlCursor` holds a file's label and text and reads typed values
(mappings with required and optional keys, lists, strings, ids, numbers,
integers) out of the nodes that ``yaml.compose`` built, so that every
rejection is a :class:`~agent.errors.PolicyError` naming the file, line,
column, field path (``rules[2].goal``) and reason. Mapping keys must be
strings, unknown and duplicate keys are refused. :meth:`YamlCursor.position`
maps an offset inside a scalar's value back to the file's line and column
(for the caret under a condition's syntax error), through quoting, escapes,
folding and block scalars.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import yaml

from agent.errors import PolicyError
from agent.policy.compiler import offset_to_line_col

__all__ = ["NUMERIC_TAGS", "STR_TAG", "YamlCursor"]

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_LINE_BREAK = re.compile(r"\r\n|[\r\n\x85\u2028\u2029]")  # YAML's line breaks


_TAG_NAMES = {
    "tag:yaml.org,2002:str": "a string",
    "tag:yaml.org,2002:int": "an integer",
    "tag:yaml.org,2002:float": "a number",
    "tag:yaml.org,2002:bool": "a boolean",
    "tag:yaml.org,2002:null": "null",
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:seq": "a list",
    "tag:yaml.org,2002:map": "a mapping",
}
STR_TAG = "tag:yaml.org,2002:str"
NUMERIC_TAGS = ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")


class YamlCursor:
    """A file's text plus helpers that read typed values out of its YAML nodes."""

    def __init__(self, label: str, text: str) -> None:
        self.label = label
        self.text = text
        self._construct = yaml.constructor.SafeConstructor()

    def error(self, node: yaml.Node, path: str, reason: str) -> PolicyError:
        m = node.start_mark
        return PolicyError(f"{self.label}:{m.line + 1}:{m.column + 1}: {path}: {reason}")

    def kind(self, node: yaml.Node) -> str:
        return _TAG_NAMES.get(node.tag, f"a value tagged {node.tag}")

    def mapping(
        self, node: yaml.Node, path: str, required: Sequence[str], optional: Sequence[str] = ()
    ) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode) or node.tag != "tag:yaml.org,2002:map":
            raise self.error(node, path, f"expected a mapping, got {self.kind(node)}")
        allowed = list(required) + list(optional)
        out: dict[str, yaml.Node] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode) or key.tag != STR_TAG:
                raise self.error(key, path, f"keys must be strings, got {self.kind(key)}")
            sub = f"{path}.{key.value}" if path else key.value
            if key.value in out:
                raise self.error(key, sub, "duplicate key")
            if key.value not in allowed:
                raise self.error(key, sub, f"unknown key (allowed: {', '.join(allowed)})")
            out[key.value] = value
        for name in required:
            if name not in out:
                raise self.error(node, path or "<top level>", f"missing required key '{name}'")
        return out

    def sequence(self, node: yaml.Node, path: str, *, nonempty: bool = False) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode) or node.tag != "tag:yaml.org,2002:seq":
            raise self.error(node, path, f"expected a list, got {self.kind(node)}")
        if nonempty and not node.value:
            raise self.error(node, path, "must not be empty")
        return list(node.value)

    def string(self, node: yaml.Node, path: str) -> str:
        if not isinstance(node, yaml.ScalarNode) or node.tag != STR_TAG:
            hint = " (quote it)" if isinstance(node, yaml.ScalarNode) else ""
            raise self.error(node, path, f"expected a string, got {self.kind(node)}{hint}")
        value = node.value.strip()
        if not value:
            raise self.error(node, path, "must not be empty")
        return str(value)

    def ident(self, node: yaml.Node, path: str) -> str:
        value = self.string(node, path)
        if not _ID.fullmatch(value):
            raise self.error(
                node,
                path,
                f"{value!r} is not a valid id (letters, digits, '.', '_', '-'; "
                "starts with a letter or digit; at most 64 characters)",
            )
        return value

    def number(self, node: yaml.Node, path: str) -> float:
        if not isinstance(node, yaml.ScalarNode) or node.tag not in NUMERIC_TAGS:
            raise self.error(node, path, f"expected a number, got {self.kind(node)}")
        value = float(self._construct.construct_object(node))
        if not math.isfinite(value):
            raise self.error(node, path, "must be a finite number")
        return value

    def integer(self, node: yaml.Node, path: str) -> int:
        if not isinstance(node, yaml.ScalarNode) or node.tag != "tag:yaml.org,2002:int":
            raise self.error(node, path, f"expected an integer, got {self.kind(node)}")
        return int(self._construct.construct_object(node))

    def position(self, node: yaml.ScalarNode, offset: int) -> tuple[int, int]:
        """File (line, column) of character ``offset`` of a scalar's value."""
        index = _source_index(node, self.text, offset)
        if index is None:
            return node.start_mark.line + 1, node.start_mark.column + 1
        return offset_to_line_col(self.text, index)


def _source_index(node: yaml.ScalarNode, text: str, offset: int) -> int | None:
    """Map an offset in a scalar's value to an index in the file text.

    Walks the raw scalar alongside its value: plain and quoted scalars fold
    line breaks into spaces and drop indentation, quoted ones add quote and
    escape characters, block scalars start on the line after their header.
    Returns None if the two cannot be aligned (then the caller points at the
    start of the scalar).
    """
    value, style = node.value, node.style
    p, end = node.start_mark.index, node.end_mark.index
    if style in ("'", '"'):
        p += 1
    elif style in ("|", ">"):
        m = _LINE_BREAK.search(text, p, end)
        p = m.end() if m else end
    positions: list[int] = []
    for ch in value[: offset + 1]:
        while True:
            if p >= end:
                return None
            r = text[p]
            if style == '"' and r == "\\":
                nxt = text[p + 1] if p + 1 < end else ""
                if nxt in ("\r", "\n"):  # escaped line break: joins the lines
                    p += 2
                    continue
                positions.append(p)
                p += {"x": 4, "u": 6, "U": 10}.get(nxt, 2)
                break
            if r == ch or (ch in " \n" and r in "\r\n"):  # same char, or a folded break
                positions.append(p)
                p += 1
                break
            if r in " \t\r\n" or (style == "'" and r == "'"):
                p += 1
                continue
            return None
    if offset < len(value):
        return positions[offset]
    return positions[-1] + 1 if positions else p
