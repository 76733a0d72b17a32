"""Optuna studies in an RDB storage shared by sweep workers: heartbeats, retries, and creation
that survives several workers racing to create the same study.

A dead worker: the storage records heartbeats; a trial whose heartbeat stops for GRACE seconds
is failed by the next worker to start a trial and re-queued with the same parameters
(RetryHeartbeatStaleTrialCallback).
"""

from __future__ import annotations

import os
import random
import time
import warnings

import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from ..config import SWEEP_HEARTBEAT_SECONDS, SWEEP_MAX_RETRIES
from .tracking import store_lock

__all__ = ["STORAGE_ENV", "HEARTBEAT_SECONDS", "GRACE_SECONDS", "storage_url", "redact", "storage", "open_study"]

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retries

STORAGE_ENV = "WIDEDEEP_OPTUNA_STORAGE"
DEFAULT_STORAGE = "sqlite:///optuna.db"
HEARTBEAT_SECONDS = int(os.environ.get("WIDEDEEP_SWEEP_HEARTBEAT", str(SWEEP_HEARTBEAT_SECONDS)))
GRACE_SECONDS = 3 * HEARTBEAT_SECONDS


def storage_url(given: str = "") -> str:
    """The Optuna storage: `given`, else $WIDEDEEP_OPTUNA_STORAGE, else optuna.db here."""
    return given or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def redact(url: str) -> str:
    """A storage URL safe to log or print: any password replaced by ***."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def storage(url: str) -> RDBStorage:
    """The storage, its tables created under the project's store lock if it is new."""
    with store_lock(url):
        return RDBStorage(
            url,
            heartbeat_interval=HEARTBEAT_SECONDS,
            grace_period=GRACE_SECONDS,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=SWEEP_MAX_RETRIES),
            engine_kwargs={"pool_pre_ping": True} if not url.startswith("sqlite") else None,
        )


def open_study(url: str, name: str, direction: str = "maximize", sampler=None, pruner=None, attempts: int = 6) -> optuna.Study:
    """Create or load a study, retrying the races of several workers creating one at once
    (a fresh SQLite file races on schema creation; any backend on the study row)."""
    for attempt in range(attempts):
        try:
            return optuna.create_study(storage=storage(url), study_name=name, direction=direction, sampler=sampler,
                                       pruner=pruner, load_if_exists=True)
        except (sa.exc.OperationalError, sa.exc.IntegrityError, optuna.exceptions.DuplicatedStudyError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random() * 2**attempt)
    raise AssertionError("unreachable")
