"""edgevlm's version, in a module of its own: the event records name it, and a module inside the package cannot
import the package's __init__ without an import cycle. pyproject.toml states the same number."""

__version__ = "0.1.0"
