"""MLflow runs as this project opens them: tagged with their kind and their process, ended
FAILED with the user's one-line error when they fail, and told apart from dead ones.

`stage_run` is how every stage opens its run: the run that `mlflow run` created for an entry
point (MLFLOW_RUN_ID), or a child of the active run when a stage calls another (a study's
trainings, analyses, comparison and predictions; a sweep's cells). `reap_dead_runs` (called as
every top-level stage starts, after its parameters were checked) ends as KILLED the runs of this
host whose process no longer exists.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
from pathlib import Path
from typing import Iterator

import mlflow
import sqlalchemy as sa
from mlflow import MlflowClient
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from .contract import ERROR, KIND, KINDS, NOTE, PROCESS_HOST, PROCESS_PID

__all__ = ["start_run", "stage_run", "log_params_once", "fail_run", "reap_dead_runs", "mark_dead_run", "first_line",
           "store_lock", "ensure_tracking_store", "process_alive", "held_by_another_live_process", "describe"]

PG_LOCK_KEY = 20210401  # pg_advisory_lock key of every store creation by this project


def first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


@contextlib.contextmanager
def store_lock(url: str) -> Iterator[None]:
    """Hold a lock that every process of this project takes to create a database store (and to
    register a version once per lineage, model_files.register): an
    flock on `<file>.lock` beside a SQLite file, an advisory lock on PostgreSQL; nothing for
    other URIs (an MLflow server creates its own store once, before it serves)."""
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        yield  # http://, file:, databricks: not a database this process creates
        return
    backend = parsed.get_backend_name()
    if backend == "sqlite" and parsed.database and parsed.database != ":memory:":
        lock = Path(parsed.database).with_name(Path(parsed.database).name + ".lock")
        with open(lock, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            yield
    elif backend == "postgresql":
        engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": PG_LOCK_KEY})
                try:
                    yield
                finally:
                    conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": PG_LOCK_KEY})
        finally:
            engine.dispose()
    else:
        yield


def ensure_tracking_store(uri: str | None = None) -> None:
    """Create the tracking store's schema if it is new, under `store_lock`, so that processes
    starting at once on a fresh store do not race on its creation. Cheap once it exists."""
    uri = uri or mlflow.get_tracking_uri()
    with store_lock(uri):
        MlflowClient(uri).search_experiments(max_results=1)


@contextlib.contextmanager
def start_run(**kwargs) -> Iterator[Run]:
    """mlflow.start_run, tagged with this process. If the block raises, the run ends FAILED with
    the error's first line as tag `error`."""
    with mlflow.start_run(**kwargs) as run:
        if not held_by_another_live_process(run):  # a data-parallel rank joining its launcher's run leaves it the launcher's
            mlflow.set_tags({PROCESS_HOST: socket.gethostname(), PROCESS_PID: str(os.getpid())})
        try:
            yield run
        except BaseException as err:
            mlflow.set_tag(ERROR, first_line(err)[:5000])
            raise


@contextlib.contextmanager
def stage_run(kind: str, run_name: str | None = None, params: dict | None = None,
              parent_run_id: str | None = None) -> Iterator[Run]:
    """The run of one stage: nested under the active run (or `parent_run_id`) if there is one,
    else the entry point's own run; tagged with its kind, its params logged once."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
    nested = parent_run_id is not None or mlflow.active_run() is not None
    if not nested:
        ensure_tracking_store()
        reap_dead_runs()
    with start_run(run_name=run_name, nested=nested, parent_run_id=parent_run_id) as run:
        mlflow.set_tag(KIND, kind)
        if run_name and not nested and run.info.run_name != run_name:
            MlflowClient().update_run(run.info.run_id, name=run_name)
        if params:
            log_params_once(params)
        yield run


def describe(text: str, run_id: str | None = None) -> None:
    """The run's description (the UI's Description box, MLflow's tag mlflow.note.content): what
    it did and with what, in a paragraph."""
    if run_id:
        MlflowClient().set_tag(run_id, NOTE, text)
    else:
        mlflow.set_tag(NOTE, text)


def log_params_once(params: dict) -> None:
    """Log params not already on the run: `mlflow run` logs declared ones itself, as strings it
    chose, and logging a key again with another spelling ("1" vs "1.0") is an error. Empty
    values (a setting left to its default) are not logged."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in existing and v != ""}  # "": not set
    if fresh:
        mlflow.log_params(fresh)


def fail_run(message: str) -> None:
    """End the failing run FAILED with `message` as tag `error`: the active run, else the run that
    `mlflow run` created for this entry point (an error raised before any stage opened it)."""
    active = mlflow.active_run()
    run_id = active.info.run_id if active else os.environ.get("MLFLOW_RUN_ID")
    if not run_id:
        return
    client = MlflowClient()
    try:
        client.set_tag(run_id, ERROR, message[:5000])
        client.set_terminated(run_id, status="FAILED")
    except MlflowException:
        pass  # the store itself is what failed: nothing more can be recorded
    if active:
        mlflow.end_run("FAILED")


def mark_dead_run(run_id: str) -> None:
    """A run that died without ending (SIGKILL, lost machine): stop it showing as RUNNING, unless
    the process it records still lives on this host (a run on another host cannot be checked)."""
    client = MlflowClient()
    try:
        run = client.get_run(run_id)
        if run.info.status == "RUNNING" and not held_by_another_live_process(run):
            client.set_terminated(run_id, status="KILLED")
    except MlflowException:
        pass  # deleted, or in another store: nothing to mark


def _other_process_of_this_host(run: Run) -> int | None:
    """The pid a run records (tags process.host, process.pid) when it is another process of this
    host; None when it is this process, another host's, or not recorded."""
    pid = run.data.tags.get(PROCESS_PID, "")
    if run.data.tags.get(PROCESS_HOST) != socket.gethostname() or not pid.isdigit() or int(pid) == os.getpid():
        return None
    return int(pid)


def held_by_another_live_process(run: Run) -> bool:
    """Whether the process a run records is another one of this host, and alive."""
    pid = _other_process_of_this_host(run)
    return pid is not None and process_alive(pid)


def reap_dead_runs() -> None:
    """Runs left RUNNING by a process of this host that no longer exists (SIGKILL, OOM, power)
    end as KILLED, so that no run shows as RUNNING forever."""
    host = socket.gethostname()
    try:
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"attributes.status = 'RUNNING' and tags.`{PROCESS_HOST}` = '{host}'")
    except MlflowException:
        return  # a store that cannot be searched yet (fresh, or unreachable): nothing to reap
    client = MlflowClient()
    for run in runs:
        pid = _other_process_of_this_host(run)
        if pid is not None and not process_alive(pid):
            client.set_terminated(run.info.run_id, status="KILLED")


def process_alive(pid: int) -> bool:
    """Whether a process of this host exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True
