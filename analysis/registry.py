"""Public API, kept where notebooks import it: registered models live in analysis/store/
(model_files.py loads them; lookup.py finds them)."""

from .nets import registered_name
from .store.lookup import resolve_version, uris_matching
from .store.model_files import LoadedModel, load_model

__all__ = ["load_model", "LoadedModel", "resolve_version", "registered_name", "uris_matching"]
