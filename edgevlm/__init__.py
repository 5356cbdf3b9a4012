"""edgevlm: SmolVLM2 on edge hardware with ONNX Runtime (no PyTorch, no transformers).

    import edgevlm
    vlm = edgevlm.load("path/to/bundle", variant="q4")
    print(vlm.caption("photo.jpg").text)
"""
from .errors import ContextLengthError, EdgeVLMError, InputError, ModelError
from .model import VLM, Result, load

__version__ = "0.1.0"
__all__ = ["load", "VLM", "Result", "EdgeVLMError", "InputError", "ModelError", "ContextLengthError", "__version__"]
