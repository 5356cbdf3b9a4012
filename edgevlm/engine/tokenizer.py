"""The model's tokenizer.json through the `tokenizers` library (no transformers), with streaming decode."""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as _HFTokenizer
from tokenizers.decoders import DecodeStream

from ..errors import ModelError


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
