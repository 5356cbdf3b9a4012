"""edgevlm: SmolVLM2 on edge hardware with ONNX Runtime (no PyTorch, no transformers).

    import edgevlm
    vlm = edgevlm.load("path/to/bundle")
    print(vlm.caption("photo.jpg").text)

`load`, `VLM` and `Result` are imported on first use (PEP 562): numpy and onnxruntime take ~0.3 s to import,
which a program that only checks the version or the errors should not pay.
"""

from typing import TYPE_CHECKING

from .errors import (
    ConstraintError,
    ContextLengthError,
    EdgeVLMError,
    ImageTooLargeError,
    IncompleteAnswerError,
    InputError,
    ModelError,
    OutputError,
    SourceError,
)
from .version import __version__

# Imported on first use (PEP 562); the TYPE_CHECKING block below names the same objects for type checkers and IDEs,
# and tests/test_layers.py checks that the two lists agree.
_LAZY = {
    "load": "vlm",
    "VLM": "vlm",
    "Engine": "engine.core",
    "EncodedImages": "engine.core",
    "Result": "records",
    "Segment": "records",
    "LiveCaption": "records",
    "Prompt": "engine.processor",
    "Processor": "engine.processor",
    "GenerationConfig": "engine.generate",
    "Generator": "engine.generate",
    "Frame": "engine.frame",
    "PushSource": "media.sources",
    "Trigger": "media.events",
    "Event": "records",
    "TileReuse": "engine.tile_reuse",
    "Constraint": "engine.structured",
    "Condition": "media.conditions",
}

if TYPE_CHECKING:
    from .engine.core import EncodedImages, Engine
    from .engine.frame import Frame
    from .engine.generate import GenerationConfig, Generator
    from .engine.processor import Processor, Prompt
    from .engine.structured import Constraint
    from .engine.tile_reuse import TileReuse
    from .media.conditions import Condition
    from .media.events import Trigger
    from .media.sources import PushSource
    from .records import Event, LiveCaption, Result, Segment
    from .vlm import VLM, load

__all__ = [
    "VLM",
    "Condition",
    "Constraint",
    "ConstraintError",
    "ContextLengthError",
    "EdgeVLMError",
    "EncodedImages",
    "Engine",
    "Event",
    "Frame",
    "GenerationConfig",
    "Generator",
    "ImageTooLargeError",
    "IncompleteAnswerError",
    "InputError",
    "LiveCaption",
    "ModelError",
    "OutputError",
    "Processor",
    "Prompt",
    "PushSource",
    "Result",
    "Segment",
    "SourceError",
    "TileReuse",
    "Trigger",
    "__version__",
    "load",
]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'edgevlm' has no attribute {name!r}")
