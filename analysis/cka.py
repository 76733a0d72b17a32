"""Public API, kept where notebooks import it: the CKA estimator lives in analysis/science/cka.py."""

from .science.cka import MinibatchCKA, cka, gram

__all__ = ["cka", "gram", "MinibatchCKA"]
