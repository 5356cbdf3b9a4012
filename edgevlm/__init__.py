"""edgevlm: SmolVLM2 on edge hardware with ONNX Runtime (no PyTorch, no transformers).

    import edgevlm
    vlm = edgevlm.load("path/to/bundle")
    print(vlm.caption("photo.jpg").text)

`load`, `VLM` and `Result` are imported on first use (PEP 562): numpy and onnxruntime take ~0.3 s to import,
which a program that only checks the version or the errors should not pay.
"""
from .errors import (ConstraintError, ContextLengthError, EdgeVLMError, ImageTooLargeError, IncompleteAnswerError,
                     InputError, ModelError, OutputError, SourceError)

__version__ = "0.1.0"
_LAZY = {"load": "vlm", "VLM": "vlm", "Engine": "engine.core", "Result": "records", "Prompt": "engine.processor",
         "Processor": "engine.processor", "EncodedImages": "engine.core", "GenerationConfig": "engine.generate", "Generator": "engine.generate",
         "Frame": "engine.frame", "Segment": "records", "PushSource": "media.sources",
         "LiveCaption": "records", "Trigger": "media.live", "Constraint": "engine.structured",
         "Condition": "media.conditions"}
__all__ = [*_LAZY, "EdgeVLMError", "InputError", "ModelError", "ContextLengthError", "ConstraintError",
           "IncompleteAnswerError", "ImageTooLargeError", "OutputError", "SourceError", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'edgevlm' has no attribute {name!r}")
