"""Layered bundles: an overriding rule may tighten an inherited one, never loosen it.

A layer (a site policy extending a corporate one extending a regulatory
baseline) may override an inherited rule by giving one with the same id. The
override is accepted only if it is *provably* at least as strict:

* same goal; severity not lower; ``for`` not longer; clear ``for`` not
  shorter;
* its condition implies the baseline's (whenever the new one holds, the old
  one holds, so every reading the baseline calls a violation still is one),
  and its effective clear condition implies the baseline's (a violation is
  not cleared earlier).

Implication is decided syntactically, which is sound but not complete:
``A && B`` implies ``A``; ``A`` implies ``A || B``; ``&&``/``||`` compose
part-wise; a comparison of the same expression with a literal implies the
baseline's when its threshold is at least as tight (``x <= 7.5`` implies
``x <= 8.0``, ``x < 8.0`` implies ``x <= 8.0``). Anything else is refused
with an explanation saying how to write the override so that it is provable:
keep the baseline's condition as a conjunct.
"""

from __future__ import annotations

from typing import Any

from agent.errors import PolicyError
from agent.policy.parser import Binary, ConditionError, Expr, Int, Number, parse

__all__ = ["check_override", "implies"]

_RANK = {"info": 0, "warning": 1, "critical": 2}


def _literal(e: Expr) -> float | None:
    if isinstance(e, Number):
        return e.value
    if isinstance(e, Int):
        return float(e.value)
    return None


def _threshold_implies(a: Binary, b: Binary) -> bool:
    """``a`` and ``b`` compare the same expression with a literal; does a imply b?"""
    if a.left != b.left:
        return False
    ca, cb = _literal(a.right), _literal(b.right)
    if ca is None or cb is None:
        return False
    upper = {"<", "<="}
    lower = {">", ">="}
    if a.op in upper and b.op in upper:
        # x < ca (or <=) implies x <= cb when ca <= cb; x < cb needs ca < cb unless a is strict
        return ca < cb or (ca == cb and (a.op == "<" or b.op == "<="))
    if a.op in lower and b.op in lower:
        return ca > cb or (ca == cb and (a.op == ">" or b.op == ">="))
    if a.op == "==" and b.op in upper | lower | {"=="}:
        return {"<": ca < cb, "<=": ca <= cb, ">": ca > cb, ">=": ca >= cb, "==": ca == cb}[b.op]
    return False


def implies(a: Expr, b: Expr, depth: int = 0) -> bool:
    """Whether condition ``a`` provably implies ``b`` (sound, not complete)."""
    if depth > 64:
        return False
    if a == b:
        return True
    if (
        isinstance(a, Binary)
        and a.op == "&&"
        and (implies(a.left, b, depth + 1) or implies(a.right, b, depth + 1))
    ):
        return True
    if isinstance(b, Binary) and b.op == "&&":
        return implies(a, b.left, depth + 1) and implies(a, b.right, depth + 1)
    if (
        isinstance(b, Binary)
        and b.op == "||"
        and (implies(a, b.left, depth + 1) or implies(a, b.right, depth + 1))
    ):
        return True
    if isinstance(a, Binary) and a.op == "||":
        return implies(a.left, b, depth + 1) and implies(a.right, b, depth + 1)
    if isinstance(a, Binary) and isinstance(b, Binary):
        return _threshold_implies(a, b)
    return False


def _parse(text: str) -> Expr | None:
    try:
        return parse(text)
    except ConditionError:
        return None  # reported by the compiler with a caret


def check_override(label: str, new: Any, old: Any) -> None:
    """Refuse an override of ``old`` that is not provably at least as strict.

    Raises:
        PolicyError: naming the rule, both files and what loosens.
    """
    where = f"{label}:{new.line}: rule {new.id!r} overrides the rule from {old.origin}"
    problems = []
    if new.goal != old.goal:
        problems.append(f"it moves the rule from goal {old.goal!r} to {new.goal!r}")
    if _RANK[new.severity] < _RANK[old.severity]:
        problems.append(f"it lowers the severity from {old.severity} to {new.severity}")
    if new.for_ms > old.for_ms:
        problems.append(
            f"its 'for' ({new.for_ms} ms) is longer than the baseline's ({old.for_ms} ms)"
        )
    if new.clear_ms < old.clear_ms:
        problems.append(
            f"its clear 'for' ({new.clear_ms} ms) is shorter than the baseline's "
            f"({old.clear_ms} ms)"
        )
    a, b = _parse(new.condition), _parse(old.condition)
    if a is not None and b is not None and not implies(a, b):
        problems.append(
            f"its condition `{new.condition.strip()}` does not provably imply the baseline's "
            f"`{old.condition.strip()}`, so it could accept readings the baseline rejects "
            f"(write it as `({old.condition.strip()}) && ...` or tighten a threshold)"
        )
    ca = _parse(new.clear_condition or new.condition)
    cb = _parse(old.clear_condition or old.condition)
    if ca is not None and cb is not None and not implies(ca, cb):
        problems.append(
            "its clear condition does not provably imply the baseline's, so a violation "
            "could end earlier"
        )
    if problems:
        raise PolicyError(
            f"{where}, but a layer may only tighten an inherited rule: " + "; ".join(problems)
        )
