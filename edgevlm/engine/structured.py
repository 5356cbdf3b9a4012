"""Structured answers: generation held to a list of choices, a JSON schema, a regular expression or a Lark
grammar by masking the logits at every step, so the answer is valid whatever the model would have preferred.

The grammar work is llguidance's (the engine ORT-GenAI uses): it compiles the constraint against the model's
token bytes and gives, per step, the bitmask of tokens that keep the answer completable; end-of-sequence is in
that mask only where the answer is complete. llguidance is imported when a constraint is first used, so plain
captioning pays nothing for it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import re
import threading
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConstraintError, InputError

# JSON as a model writes it and json.dumps prints it: ", " and ": ", no other whitespace. Flexible whitespace
# would let a model (above all a random-weights one) pad the answer with blanks until max_new_tokens; a schema's
# own "x-guidance" settings override these.
JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

# Bounds a JSON schema gets where it sets none of its own, so that no answer can run away: without them a small
# model writes the digits of an unbounded integer (or a number's fraction, or a string) until max_new_tokens and the
# answer is never complete. Each fits within the default 128 new tokens; a schema's own bound always wins
# (docs/python-api.md, "Structured answers").
DEFAULT_BOUNDS: dict[str, dict[str, Any]] = {
    "integer": {"minimum": -999_999_999, "maximum": 999_999_999},
    "number": {"minimum": -999_999_999, "maximum": 999_999_999, "multipleOf": 1e-6},
    "string": {"maxLength": 256},
    "array": {"maxItems": 32},
    "object": {"maxProperties": 32},  # only where it may have keys beyond its properties
}
# A bound is "set" when any of its spellings is there.
_SPELLINGS = {"minimum": ("minimum", "exclusiveMinimum"), "maximum": ("maximum", "exclusiveMaximum")}


@dataclass(frozen=True)
class Constraint:
    """What an answer must be. Build it with `Constraint.choices / .json_schema / .regex / .grammar` (or the
    `choices=`, `json_schema=`, `regex=`, `grammar=` options of ask/chat/caption); it is immutable and reusable.

    Choices and JSON answers may start with one space, as the model's own answers after "Assistant:" do; the
    value never includes it. A regex or a grammar matches the whole answer exactly.
    """

    kind: str  # "choices", "json_schema", "regex" or "grammar"
    compiled: str = field(repr=False)  # the grammar as llguidance takes it
    description: str = ""
    options: tuple[str, ...] = ()  # the choices
    target: Any = field(default=None, repr=False)  # dataclass / TypedDict / pydantic class the value is built as

    @classmethod
    def choices(cls, options: Sequence[str]) -> Constraint:
        if isinstance(options, str) or not isinstance(options, Sequence):
            raise ConstraintError("choices must be a list of strings, such as ['yes', 'no'].")
        options = tuple(dict.fromkeys(options))
        if not options:
            raise ConstraintError("the choice list is empty; give at least one choice.")
        if any(not isinstance(o, str) or not o for o in options):
            raise ConstraintError("every choice must be a non-empty string.")
        # One regex lexeme, not Lark alternatives: llguidance's parser caps a rule at 2,000 alternatives, its
        # lexer takes a list of 10,000 choices in a few milliseconds.
        pattern = "[ ]?(?:" + "|".join(_regex_literal(o) for o in options) + ")"
        shown = ", ".join(map(repr, options[:5])) + (f", ... ({len(options)} choices)" if len(options) > 5 else "")
        return cls._checked("choices", _lark(f"start: /{pattern}/"), f"one of [{shown}]", options=options)

    @classmethod
    def json_schema(cls, schema: Any) -> Constraint:
        """schema: a dict, JSON text, a path to a .json file, a dataclass, a TypedDict or a pydantic model class
        (the value is then an instance of it, or a dict for a TypedDict)."""
        schema, target = schema_of(schema)
        schema = bounded(_closed(schema))
        body = json.dumps({**schema, "x-guidance": {**JSON_STYLE, **schema.get("x-guidance", {})}})
        return cls._checked(
            "json_schema", _lark(f'start: " "? answer\nanswer: %json {body}'), "the JSON schema", target=target
        )

    @classmethod
    def regex(cls, pattern: str) -> Constraint:
        if not isinstance(pattern, str) or not pattern:
            raise ConstraintError("the regex is empty; give a pattern the whole answer must match.")
        llg = _llguidance()
        return cls._checked("regex", llg.LLMatcher.grammar_from_regex(pattern), f"the regex {_short(repr(pattern))}")

    @classmethod
    def grammar(cls, lark: str) -> Constraint:
        """A grammar in llguidance's Lark dialect (start rule `start`)."""
        if not isinstance(lark, str) or not lark.strip():
            raise ConstraintError("the grammar is empty; give a Lark grammar with a 'start' rule.")
        return cls._checked("grammar", _lark(lark), "the grammar")

    @classmethod
    def _checked(cls, kind: str, grammar: str, description: str, **kw: Any) -> Constraint:
        """Compile once without a tokenizer so a bad constraint fails before any image is read."""
        failed, messages = _llguidance().LLMatcher.validate_grammar_with_warnings(grammar)
        if failed:
            raise ConstraintError(f"{description} cannot be used: {_first_line(messages[0])}")
        return cls(kind, grammar, description, **kw)

    def parse(self, text: str) -> Any:
        """The value of a complete answer: the choice, the regex match, or the parsed JSON (built as the
        schema's class when one was given)."""
        if self.kind == "choices":
            return text if text in self.options else text[1:]
        if self.kind != "json_schema":
            return text
        value = json.loads(text)
        return value if self.target is None else build(self.target, value)


def from_options(
    choices: Sequence[str] | None = None, json_schema: Any = None, regex: str | None = None, grammar: str | None = None
) -> Constraint | None:
    """The one constraint named by these keyword options (None when none is given)."""
    given = {
        k: v
        for k, v in (("choices", choices), ("json_schema", json_schema), ("regex", regex), ("grammar", grammar))
        if v is not None
    }
    if len(given) > 1:
        raise ConstraintError(f"give one constraint, not {' and '.join(given)}.")
    if not given:
        return None
    ((kind, value),) = given.items()
    return getattr(Constraint, kind)(value)


def _llguidance():
    try:
        import llguidance
    except ImportError:  # pragma: no cover - a dependency of edgevlm; only a broken install lacks it
        raise ConstraintError("structured answers need the llguidance package: pip install llguidance") from None
    return llguidance


def _lark(text: str) -> str:
    return _llguidance().LLMatcher.grammar_from_lark(text)


def _regex_literal(text: str) -> str:
    """`text` matched literally inside a Lark /regex/ (Rust regex syntax; `/` ends the Lark regex)."""
    return "".join("\\" + c if c in "\\.+*?()|[]{}^$#&-~/" else c for c in text)


def _first_line(message: str) -> str:
    """llguidance's message in one line: its first line (without the position in our wrapper grammar) and the
    regex engine's own "error: ..." line when there is one."""
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()] or ["unknown error"]
    head = re.sub(r"^at \d+\(\d+\): ", "", lines[0])
    detail = next((ln for ln in lines[1:] if ln.startswith("error:")), None)
    return f"{head} {detail[len('error:') :].strip()}" if detail else head


# ------------------------------------------------------------------------------------------ schemas from types
def schema_of(schema: Any) -> tuple[dict[str, Any], Any]:
    """(JSON schema dict, class to build values as or None) from what users pass as json_schema=."""
    if isinstance(schema, type) and hasattr(schema, "model_json_schema"):  # pydantic v2, without importing it
        return _closed(schema.model_json_schema()), schema
    if isinstance(schema, type) and (dataclasses.is_dataclass(schema) or typing.is_typeddict(schema)):
        return type_schema(schema), schema
    if isinstance(schema, os.PathLike) or (isinstance(schema, str) and schema.lstrip()[:1] not in ("{", "[")):
        schema = _json(_read_schema_file(Path(schema)), f"the JSON schema file {_short(str(schema))}")
    elif isinstance(schema, str):
        schema = _json(schema, "the JSON schema text")
    if not isinstance(schema, dict):
        raise ConstraintError(
            "a JSON schema must be a JSON object (a dict), a .json file holding one, a dataclass, "
            "a TypedDict or a pydantic model class."
        )
    return schema, None


def bounded(schema: Any) -> Any:
    """`schema` with DEFAULT_BOUNDS added wherever a value of an open-ended type has no bound of that kind (an enum
    or a const is finite already; a schema's own "x-guidance" is left alone)."""
    if isinstance(schema, list):
        return [bounded(v) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: v if k == "x-guidance" else bounded(v) for k, v in schema.items()}
    if "enum" in out or "const" in out:
        return out
    kinds = out.get("type")
    for kind in [kinds] if isinstance(kinds, str) else kinds if isinstance(kinds, list) else []:
        if kind == "object" and out.get("additionalProperties", True) is False:
            continue  # closed: its properties are all it can have
        bounds = DEFAULT_BOUNDS.get(kind, {}) if isinstance(kind, str) else {}
        for key, value in bounds.items():
            if not any(spelling in out for spelling in _SPELLINGS.get(key, (key,))):
                out[key] = value
    return out


def _closed(schema: Any) -> Any:
    """Objects without an additionalProperties rule get `false`, as in OpenAI's strict mode: left open, a small
    model spends its tokens inventing keys (pydantic drops unknown keys anyway). An answer to the closed schema is
    valid for the open one too; `"additionalProperties": true` keeps an object open."""
    if isinstance(schema, dict):
        schema = {k: _closed(v) for k, v in schema.items()}
        if schema.get("type") == "object" and "properties" in schema:
            schema.setdefault("additionalProperties", False)
    elif isinstance(schema, list):
        schema = [_closed(v) for v in schema]
    return schema


MAX_SCHEMA_BYTES = 4 << 20  # a schema is a few kB; a bigger file is a mistake (the wrong file, a device)


def _read_schema_file(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_SCHEMA_BYTES + 1)
    except OSError as e:
        raise ConstraintError(f"cannot read the JSON schema file {_short(str(path))} ({e.strerror}).") from None
    if len(data) > MAX_SCHEMA_BYTES:
        raise ConstraintError(
            f"the JSON schema file {_short(str(path))} is over {MAX_SCHEMA_BYTES >> 20} MB; is it the right file?"
        )
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConstraintError(f"the JSON schema file {_short(str(path))} is not UTF-8 text.") from None


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConstraintError(f"{what} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}).") from None
    except RecursionError:
        raise ConstraintError(f"{what} is nested too deeply to be a usable schema.") from None


_SCALARS = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}


def type_schema(tp: Any) -> dict[str, Any]:
    """A JSON schema for a Python type: dataclasses and TypedDicts (nested), str/int/float/bool/None, lists,
    tuples, dict[str, T], Optional/Union, Literal and Enum."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp in _SCALARS:
        return {"type": _SCALARS[tp]}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"enum": [m.value for m in tp]}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        return {"anyOf": [type_schema(a) for a in args]}
    if origin in (list, Sequence, tuple) and (origin is not tuple or len(args) == 2 and args[1] is Ellipsis):
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    if origin is tuple:
        return {
            "type": "array",
            "prefixItems": [type_schema(a) for a in args],
            "minItems": len(args),
            "maxItems": len(args),
        }
    if origin is dict and (not args or args[0] is str):
        return {"type": "object", "additionalProperties": type_schema(args[1]) if args else {}}
    if isinstance(tp, type) and (dataclasses.is_dataclass(tp) or typing.is_typeddict(tp)):
        hints = typing.get_type_hints(tp)
        if dataclasses.is_dataclass(tp):
            required = [
                f.name
                for f in dataclasses.fields(tp)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ]
        else:
            required = [k for k in hints if k in getattr(tp, "__required_keys__", hints)]
        return {
            "type": "object",
            "properties": {k: type_schema(v) for k, v in hints.items()},
            "required": required,
            "additionalProperties": False,
        }
    raise ConstraintError(
        f"cannot make a JSON schema for the type {tp!r}; use str, int, float, bool, lists, "
        f"dicts, Literal, Enum, Optional, dataclasses or TypedDicts, or pass a schema dict."
    )


def build(tp: Any, value: Any) -> Any:
    """A parsed JSON value as an instance of `tp` (dataclasses and enums rebuilt, nested; the rest as parsed)."""
    if hasattr(tp, "model_validate"):
        return tp.model_validate(value)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp)
        return tp(**{k: build(hints[k], v) for k, v in value.items()})
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return tp(value)
    if origin in (list, Sequence) and args and isinstance(value, list):
        return [build(args[0], v) for v in value]
    if origin in (typing.Union, types.UnionType):
        for a in args:  # the first member the value fits as (dataclass members take dicts)
            if a is type(None) and value is None:
                return None
            if isinstance(a, type) and dataclasses.is_dataclass(a) and isinstance(value, dict):
                return build(a, value)
    return value


# ------------------------------------------------------------------------------------- per-model token masks
class Grammars:
    """A model's side of constrained decoding: its token bytes in llguidance's form (built once, ~0.3 s for
    SmolVLM2's 49k tokens, on the first constrained answer) and a matcher per answer."""

    def __init__(self, tokenizer: Any, vocab_size: int, eos_ids: Sequence[int]):
        self._tokenizer, self.vocab_size, self.eos_ids = tokenizer, vocab_size, list(eos_ids)
        self._ll_tokenizer = None
        self._lock = threading.Lock()

    def ll_tokenizer(self):
        with self._lock:
            if self._ll_tokenizer is None:
                llg = _llguidance()
                table, special = self._tokenizer.token_bytes(self.vocab_size)
                self._ll_tokenizer = llg.LLTokenizer(
                    llg.TokenizerWrapper(_TokenTable(table, special, self.eos_ids[0], self._tokenizer)),
                    n_vocab=self.vocab_size,
                    eos_token=self.eos_ids,
                )
            return self._ll_tokenizer

    def start(self, constraint: Constraint) -> ConstrainedAnswer:
        llg = _llguidance()
        matcher = llg.LLMatcher(self.ll_tokenizer(), constraint.compiled, log_level=0)
        if matcher.is_error():
            raise ConstraintError(f"{constraint.description} cannot be used: {_first_line(matcher.get_error())}")
        return ConstrainedAnswer(constraint, matcher, self.vocab_size)


@dataclass
class _TokenTable:
    """What llguidance.TokenizerWrapper reads: token bytes, special ids, and an encoder for its own use."""

    tokens: list[bytes]
    special_token_ids: list[int]
    eos_token_id: int
    tokenizer: Any
    bos_token_id: int | None = None

    def __call__(self, text: str | bytes) -> list[int]:
        if isinstance(text, bytes):
            text = text.decode("utf-8", errors="replace")
        return self.tokenizer.encode(text, add_special_tokens=False)


class ConstrainedAnswer:
    """One answer's constraint state: masks each step's logits (a logits processor, applied after the caller's
    processors and before temperature/top-k/top-p) and follows the tokens picked."""

    def __init__(self, constraint: Constraint, matcher: Any, vocab_size: int):
        self.constraint, self._matcher, self.vocab_size = constraint, matcher, vocab_size
        self._mask = np.full((vocab_size + 31) // 32, -1, dtype=np.int32)

    def allowed(self) -> np.ndarray:
        """A bool per token id: may it come next?"""
        self._matcher.unsafe_compute_mask_ptr(self._mask.ctypes.data, self._mask.nbytes)
        return np.unpackbits(self._mask.view(np.uint8), bitorder="little", count=self.vocab_size).view(bool)

    def __call__(self, new_tokens: Sequence[int], scores: np.ndarray) -> np.ndarray:
        scores[~self.allowed()[: scores.shape[-1]]] = -np.inf
        return scores

    def consume(self, token: int) -> None:
        if not self._matcher.consume_token(token):  # cannot happen for a token the mask allowed
            raise InputError(
                f"token {token} does not fit {self.constraint.description} ({_first_line(self._matcher.get_error())})."
            )

    @property
    def complete(self) -> bool:
        """The answer so far is a whole valid answer (it may still go on)."""
        return self._matcher.is_accepting()

    @property
    def finished(self) -> bool:
        """Nothing but end-of-sequence can follow: the answer is complete and cannot be extended."""
        return self._matcher.is_stopped()
