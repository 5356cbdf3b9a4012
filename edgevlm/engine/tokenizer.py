"""The model's tokenizer.json through the `tokenizers` library (no transformers), with streaming decode."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers.decoders import DecodeStream

from ..errors import ModelError

_BYTE_FALLBACK = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")


@functools.lru_cache(maxsize=1)
def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-to-printable-character table, inverted: the characters byte-level BPE vocabularies are
    written in, back to the bytes they stand for."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars


def _mentions(node, kind: str) -> bool:
    """Whether a pre-tokenizer/decoder tree of tokenizer.json contains a component of this type."""
    if isinstance(node, dict):
        return node.get("type") == kind or any(_mentions(v, kind) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, kind) for v in node)
    return False


class Tokenizer:
    def __init__(self, path: Path):
        try:
            self._tok = _HFTokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed files
            raise ModelError(f"{path} is not a valid tokenizer.json ({e}).") from None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def stream(self, ids: Iterable[int]) -> Iterator[str]:
        """Text pieces as tokens arrive; a multi-byte character is held back until it is complete."""
        stream = DecodeStream(skip_special_tokens=True)
        for i in ids:
            piece = stream.step(self._tok, i)
            if piece:
                yield piece

    def token_bytes(self, vocab_size: int) -> tuple[list[bytes], list[int]]:
        """The exact bytes each token id stands for (b"" past the tokenizer's vocabulary, up to the model's
        `vocab_size`), and the ids of special tokens: what constrained decoding matches grammars against.

        Decoding one id at a time loses bytes (a token can hold half of a UTF-8 character), so the bytes come
        from the vocabulary itself: byte-level BPE (GPT-2's alphabet, SmolLM2's tokenizer), or
        SentencePiece-style pieces (▁ for a space, <0xNN> byte fallback).
        """
        config = json.loads(self._tok.to_str())
        byte_level = _mentions(config.get("pre_tokenizer"), "ByteLevel") or _mentions(
            config.get("decoder"), "ByteLevel"
        )
        alphabet = _byte_level_alphabet()
        table = [b""] * max(vocab_size, self._tok.get_vocab_size(with_added_tokens=True))
        for piece, i in self._tok.get_vocab(with_added_tokens=False).items():
            if byte_level and all(c in alphabet for c in piece):
                table[i] = bytes(alphabet[c] for c in piece)
            elif m := _BYTE_FALLBACK.match(piece):
                table[i] = bytes([int(m.group(1), 16)])
            else:
                table[i] = piece.replace("▁", " ").encode("utf-8")
        special = []
        for i, added in self._tok.get_added_tokens_decoder().items():
            table[i] = added.content.encode("utf-8")
            if added.special:
                special.append(i)
        return table[:vocab_size], sorted(i for i in special if i < vocab_size)
