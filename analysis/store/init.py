"""Create the stores once, before many processes start against them:

    python -m analysis.store.init                      # the tracking store of MLFLOW_TRACKING_URI
    python -m analysis.store.init --optuna "$WIDEDEEP_OPTUNA_STORAGE"   # and a sweep's Optuna storage

Processes of this project create a missing store under a lock (`tracking.store_lock`), but
`mlflow run` opens the tracking store itself before any project code runs, and several `mlflow
run` commands started at once on a fresh database race on its schema. Run this once first (the
README's scale-out recipe does; `sweep -P mode=setup` does the same for its stores).
"""

from __future__ import annotations

import argparse
import sys

import mlflow

from .studies import redact, storage, storage_url
from .tracking import ensure_tracking_store

__all__ = ["init_stores", "main"]


def init_stores(tracking_uri: str | None = None, optuna_url: str | None = None) -> list[str]:
    """Create the tracking store (and the Optuna storage, if given) if new; returns what is ready."""
    uri = tracking_uri or mlflow.get_tracking_uri()
    ensure_tracking_store(uri)
    ready = [f"tracking store {redact(uri)}"]
    if optuna_url:
        storage(optuna_url)
        ready.append(f"Optuna storage {redact(optuna_url)}")
    return ready


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tracking_uri", default="", help="default: MLFLOW_TRACKING_URI, else MLflow's default store")
    p.add_argument("--optuna", default="", help="an Optuna storage URL to create as well ('env': $WIDEDEEP_OPTUNA_STORAGE)")
    args = p.parse_args(argv)
    optuna_url = storage_url() if args.optuna == "env" else args.optuna
    for line in init_stores(args.tracking_uri or None, optuna_url or None):
        print(f"ready: {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
