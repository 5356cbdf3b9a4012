"""The exceptions edgevlm raises for problems a user can fix.

Every message says what was wrong and what to do; the CLI prints it without a traceback and exits non-zero.
"""

from __future__ import annotations


class EdgeVLMError(Exception):
    """Base class: a problem with the user's input or environment, not a bug in edgevlm."""

    exit_code = 1


class ModelError(EdgeVLMError):
    """The model folder / bundle / hub id cannot be used (missing, incomplete, altered, unknown variant)."""

    exit_code = 3


class InputError(EdgeVLMError):
    """An image, prompt or argument cannot be used."""

    exit_code = 2


class ImageTooLargeError(InputError):
    """An image is over the pixel limit (checked from its header, before it is decoded)."""


class ContextLengthError(InputError):
    """The prompt (with its image tokens) does not fit in the model's context. The numbers ride along so that the
    CLI and the server can say what to change in their own terms (flags, request fields)."""

    def __init__(self, message: str = "", prompt_tokens: int = 0, max_new_tokens: int = 0, max_positions: int = 0):
        self.prompt_tokens, self.max_new_tokens, self.max_positions = prompt_tokens, max_new_tokens, max_positions
        super().__init__(message or self.told("split=False", "max_new_tokens"))  # the Python API's terms

    def told(self, fewer_tiles: str, length: str) -> str:
        """The message with the fixes named as `fewer_tiles` and `length` (e.g. '"detail": "low"', 'max_tokens')."""
        return (
            f"the prompt is {self.prompt_tokens} tokens (images included) and {self.max_new_tokens} new tokens "
            f"are asked for, over the model's context of {self.max_positions}. Use fewer or smaller images "
            f"({fewer_tiles}), a shorter prompt, or a lower {length}."
        )


class OutputError(InputError):
    """An output file cannot be written where asked (it is an input, a folder, read-only, or the disk is full)."""


class SourceError(InputError):
    """A live source cannot be opened, or it was lost and did not come back in time."""


class ConstraintError(InputError):
    """A constraint for a structured answer cannot be used (an empty choice list, an invalid schema or regex)."""


class IncompleteAnswerError(InputError):
    """A constrained answer ran out of tokens (max_new_tokens) or was cancelled before it was complete. The
    partial answer is in `.result` when there is one; its text is not valid for the constraint."""

    def __init__(self, message: str, result: object = None):
        super().__init__(message)
        self.result = result
