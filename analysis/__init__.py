"""widedeep: how ResNet representations change with width and depth (Nguyen, Raghu & Kornblith, 2021).

The Python API for notebooks (README, "Python API"), reachable from `import analysis` alone:
    analysis.cka.cka, analysis.cka.gram, analysis.cka.MinibatchCKA   the CKA estimator
    analysis.registry.load_model                                     a registered model, hooks working
    analysis.features.tapped                                         layer outputs by name
    analysis.blocks.find_blocks                                      the block detector
These modules load on first use, so `import analysis` stays cheap (no torch or mlflow until asked for).
Layers, bottom up: config, data, nets, device -> science, training, store -> stages -> entrypoints/.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("widedeep")
except PackageNotFoundError:  # run from a checkout that was never installed
    __version__ = "unknown"

API_MODULES = ("cka", "registry", "features", "blocks")
__all__ = ["__version__", *API_MODULES]


def __getattr__(name: str):
    if name in API_MODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
