"""Developer tools that are not part of the installed packages: local test checkpoints (random weights with the
real architectures, or the real SmolLM2 text decoder) and the quantization-accuracy measurement. Run from the
repository root: `python -m tools.checkpoints ...`, `python -m tools.accuracy ...`."""
