"""SmolVLM2 -> ONNX exporter (install-time; never imported by the runtime)."""
