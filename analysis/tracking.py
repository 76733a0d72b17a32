"""MLflow runs that can be told apart from dead ones.

Every run this project opens is tagged with the host and PID of the process doing the work;
`reap_dead_runs` (called as every entry point starts) ends as KILLED the runs of this host whose
process no longer exists, so a SIGKILLed job never shows as RUNNING forever.
"""

from __future__ import annotations

import contextlib
import os
import socket
from typing import Iterator

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException


@contextlib.contextmanager
def start_run(**kwargs) -> Iterator[Run]:
    """mlflow.start_run, tagged with this process (the run ends FAILED if the block raises)."""
    with mlflow.start_run(**kwargs) as run:
        mlflow.set_tags({"process.host": socket.gethostname(), "process.pid": str(os.getpid())})
        yield run



def reap_dead_runs() -> None:
    """Runs left RUNNING by a process of this host that no longer exists (SIGKILL, OOM, power)
    end as KILLED, so that no run shows as RUNNING forever."""
    host = socket.gethostname()
    try:
        runs = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                  filter_string=f"attributes.status = 'RUNNING' and tags.`process.host` = '{host}'")
    except MlflowException:
        return  # a store that cannot be searched yet (fresh, or unreachable): nothing to reap
    client = mlflow.MlflowClient()
    for run in runs:
        pid = int(run.data.tags.get("process.pid", "0"))
        if pid and pid != os.getpid() and not _alive(pid):
            client.set_terminated(run.info.run_id, status="KILLED")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True
