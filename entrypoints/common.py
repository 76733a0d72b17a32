"""What every entry point shares: the run it logs to, and one-line errors that fail that run."""

from __future__ import annotations

import sys
from typing import Callable

import mlflow
from mlflow.entities import RunStatus

from analysis.tracking import reap_dead_runs

# Errors that mean "bad input or bad data": reported in one line, no traceback.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, FloatingPointError, RuntimeError)


def run_main(main: Callable[[], None]) -> int:
    """Call `main`; on a user error print it in one line, mark the active run FAILED, exit 2.
    First, runs of this host whose process died without ending them are marked KILLED."""
    try:
        reap_dead_runs()
        main()
    except USER_ERRORS as err:
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        print(f"error: {message}", file=sys.stderr)
        if mlflow.active_run():
            mlflow.set_tag("error", message[:5000])
            mlflow.end_run(RunStatus.to_string(RunStatus.FAILED))
        return 2
    return 0


def log_params_once(params: dict) -> None:
    """Log params not already on the run: `mlflow run` logs declared ones itself, as strings it
    chose, and logging a key again with another spelling ("1" vs "1.0") is an error."""
    run = mlflow.active_run()
    existing = mlflow.get_run(run.info.run_id).data.params
    fresh = {k: v for k, v in params.items() if k not in existing}
    if fresh:
        mlflow.log_params(fresh)

