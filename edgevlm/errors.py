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


class ContextLengthError(InputError):
    """The prompt (with its image tokens) does not fit in the model's context."""


class OutputError(InputError):
    """An output file cannot be written where asked (it is an input, a folder, read-only, or the disk is full)."""
