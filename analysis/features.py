"""Public API, kept where notebooks import it: layers by name live in analysis/nets/forward.py."""

from .nets.forward import stream, tapped

__all__ = ["tapped", "stream"]
