"""Optuna studies shared by sweep workers: where they live, heartbeats, retries, and creation
that survives several workers racing to create the same study.

Storage: a database URL (PostgreSQL for workers on many machines), or, by default, Optuna's
journal file `journal:optuna.journal` in the working directory: the storage Optuna advises for
several processes of one machine, where SQLite is not. A dead worker: an RDB storage records
heartbeats, and a trial whose heartbeat stops for GRACE seconds is failed by the next worker to
start a trial and re-queued with the same parameters (RetryHeartbeatStaleTrialCallback); a
journal has no heartbeats, and workers of one machine see directly whether a trial's process
is alive (sweep.run_grid).
"""

from __future__ import annotations

import os
import random
import time
import warnings

import optuna
import sqlalchemy as sa
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend

from ..config import SWEEP_HEARTBEAT_SECONDS, SWEEP_MAX_RETRIES
from .tracking import store_lock

__all__ = ["STORAGE_ENV", "JOURNAL", "DEFAULT_STORAGE", "HEARTBEAT_SECONDS", "GRACE_SECONDS", "storage_url", "redact", "storage", "open_study"]

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retries

STORAGE_ENV = "WIDEDEEP_OPTUNA_STORAGE"
JOURNAL = "journal:"  # journal:PATH, an Optuna journal file
DEFAULT_STORAGE = f"{JOURNAL}optuna.journal"
HEARTBEAT_SECONDS = int(os.environ.get("WIDEDEEP_SWEEP_HEARTBEAT", str(SWEEP_HEARTBEAT_SECONDS)))
GRACE_SECONDS = 3 * HEARTBEAT_SECONDS


def storage_url(given: str = "") -> str:
    """The Optuna storage: `given`, else $WIDEDEEP_OPTUNA_STORAGE, else a journal file here."""
    return given or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def redact(url: str) -> str:
    """A storage URL safe to log or print: any password replaced by ***."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def storage(url: str) -> RDBStorage | JournalStorage:
    """The storage; a new database gets its tables under the project's store lock."""
    if url.startswith(JOURNAL):
        return JournalStorage(JournalFileBackend(url[len(JOURNAL):]))
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
