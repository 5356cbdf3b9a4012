"""Conditions on a structured answer's value, for triggers: `person == true`, `count >= 2 and zone == "door"`.

A deliberately small form (no eval, nothing to escape from): conditions `PATH OP VALUE` joined by `and` / `or`
(`and` binds tighter). PATH is a dotted path into the value (`person`, `box.count`, `items.0`) or `value` for
the whole answer (choices and regex answers); OP is one of == != >= <= > <; VALUE is a JSON literal (true,
false, null, 3, 2.5, "a b") or a bare word, read as a string. A path that is missing, or a comparison between
a number and a string, is simply false.
"""

from __future__ import annotations

import json
import operator
import re
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..errors import InputError

_OPS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_COND = re.compile(r"^\s*([A-Za-z_][\w-]*(?:\.[\w-]+)*)\s*(==|!=|>=|<=|>|<)\s*([^=<>!\s].*?)\s*$")
_MISSING = object()


@dataclass(frozen=True)
class _Comparison:
    path: tuple[str, ...]
    op: str
    expected: Any

    def holds(self, value: Any) -> bool:
        actual = _lookup(value, self.path)
        if actual is _MISSING:
            return False
        try:
            return bool(_OPS[self.op](actual, self.expected))
        except TypeError:  # "3" > 2: not comparable, so not a match
            return False


class Condition:
    """A parsed condition; `Condition("count >= 2")(value)` tells whether a value meets it."""

    def __init__(self, text: str):
        if not isinstance(text, str) or not text.strip():
            raise InputError("the condition is empty; write one like 'person == true' or 'count >= 2'.")
        self.text = text
        self._any_of = [[self._parse(c) for c in _split(alt, "and")] for alt in _split(text.strip(), "or")]

    @staticmethod
    def _parse(cond: str) -> _Comparison:
        m = _COND.match(cond)
        if not m:
            raise InputError(
                f"cannot read the condition {cond.strip()!r}: write FIELD OP VALUE with OP one of "
                f"== != >= <= > < (e.g. 'person == true', 'count >= 2', 'value == yes')."
            )
        path, op, raw = m.groups()
        try:
            expected = json.loads(raw)
        except json.JSONDecodeError:
            expected = raw
        parts = tuple(path.split("."))
        return _Comparison(parts[1:] if parts[0] == "value" else parts, op, expected)

    def __call__(self, value: Any) -> bool:
        return any(all(c.holds(value) for c in conds) for conds in self._any_of)

    def __repr__(self) -> str:
        return f"Condition({self.text!r})"


_QUOTED = re.compile(r'"(?:[^"\\]|\\.)*"')


def _split(text: str, word: str) -> list[str]:
    """`text` cut at ` word ` outside double-quoted strings: `zone == "cat or dog"` is one comparison."""
    quoted = [m.span() for m in _QUOTED.finditer(text)]
    if text.count('"') - sum(text[a:b].count('"') for a, b in quoted):
        raise InputError(
            f"the condition {text.strip()!r} has a quote that is not closed; write strings as "
            f'"text" (a backslash escapes a quote inside).'
        )
    pieces, start = [], 0
    for m in re.finditer(rf"\s+{word}\s+", text):
        if not any(a < m.start() < b for a, b in quoted):
            pieces.append(text[start : m.start()])
            start = m.end()
    return pieces + [text[start:]]


def _lookup(value: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if isinstance(value, dict):
            value = value.get(key, _MISSING)
        elif isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif hasattr(value, key) and not key.startswith("_"):  # dataclass and pydantic values
            value = getattr(value, key)
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value.value if isinstance(value, Enum) else value
