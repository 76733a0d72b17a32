"""Sweeps: the width x depth x seed x data-fraction grid, and a learning-rate search, with Optuna.

Grid. Optuna's GridSampler walks the grid; its sampler seed is fixed, so every worker started
with the same storage and study name draws from the same grid and together they cover it. Each
cell trains through analysis.train_run (exactly as `train` does: same checkpoints, logging and
registration) in an MLflow run nested under the worker's sweep run. Idempotent:
- a cell whose training is already registered (same config, store and experiment) is not
  trained again, whichever sweep or worker registered it;
- a trial that draws a cell another worker is training is pruned; one that draws a completed
  cell (GridSampler can hand the last points out twice) returns that cell's result.
A dead worker: RDB storage records heartbeats; a trial whose heartbeat stops is failed by the
next worker to start a trial and re-queued with the same cell (RetryHeartbeatStaleTrialCallback), and
the re-run resumes from the dead run's last epoch checkpoint when it shares the cache dir.

Search. TPE over lr and weight decay for one architecture, each trial scored on a validation
split carved from the training subset (never the test set), with median pruning per epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import os
import random
import time
import warnings
from typing import Callable

import mlflow
import optuna
import sqlalchemy as sa
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

from .config import TrainConfig
from .data import load_dataset
from .train_run import mark_dead_run, registered_version, train_and_register
from .training import train
from .tracking import start_run

# A worker silent for GRACE seconds is presumed dead; its trial is failed and re-queued.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats, retries

HEARTBEAT_SECONDS = int(os.environ.get("WIDEDEEP_SWEEP_HEARTBEAT", "30"))
GRACE_SECONDS = 3 * HEARTBEAT_SECONDS
MAX_RETRIES = 2
GRID_SAMPLER_SEED = 0  # the same in every worker, or grid points are missed


@dataclasses.dataclass(frozen=True)
class Grid:
    depths: tuple[int, ...]
    widths: tuple[float, ...]
    seeds: tuple[int, ...]
    data_fractions: tuple[float, ...]

    @classmethod
    def parse(cls, depths: str, widths: str, seeds: str, data_fractions: str) -> "Grid":
        def values(text: str, kind, name: str) -> tuple:
            try:
                out = tuple(dict.fromkeys(kind(v) for v in text.split(",") if v.strip()))
            except ValueError:
                raise ValueError(f"{name}={text!r} is not a comma-separated list of {kind.__name__}s, e.g. 20,56") from None
            if not out:
                raise ValueError(f"{name} is empty; give at least one value")
            return out

        grid = cls(values(depths, int, "depths"), values(widths, float, "widths"), values(seeds, int, "seeds"),
                   values(data_fractions, float, "data_fractions"))
        for depth in grid.depths:
            for width in grid.widths:
                for fraction in grid.data_fractions:
                    TrainConfig(depth=depth, width=width, data_fraction=fraction)  # every cell valid, before anything runs
        return grid

    def search_space(self) -> dict[str, list]:
        return {"depth": list(self.depths), "width": list(self.widths), "seed": list(self.seeds),
                "data_fraction": list(self.data_fractions)}

    @property
    def size(self) -> int:
        return math.prod(len(v) for v in self.search_space().values())


def default_study_name(grid: Grid, base: TrainConfig) -> str:
    """Same grid and settings -> same name, so workers started with the same command share it."""
    blob = json.dumps([grid.search_space(), dataclasses.asdict(base)], sort_keys=True, default=str)
    return "sweep-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


def redact(url: str) -> str:
    """A storage URL safe to log or print: any password replaced by ***."""
    try:
        return sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        return url


def storage(url: str) -> RDBStorage:
    return RDBStorage(
        url,
        heartbeat_interval=HEARTBEAT_SECONDS,
        grace_period=GRACE_SECONDS,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRIES),
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


def grid_study(url: str, name: str, grid: Grid) -> optuna.Study:
    return open_study(url, name, sampler=optuna.samplers.GridSampler(grid.search_space(), seed=GRID_SAMPLER_SEED))


def _same_cell(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in ("depth", "width", "seed", "data_fraction"))


def grid_objective(grid: Grid, base: TrainConfig, parent_run_id: str) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        cell = {k: trial.suggest_categorical(k, v) for k, v in grid.search_space().items()}
        config = dataclasses.replace(base, **cell)
        trials = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
        for other in trials.values():
            if other.number == trial.number or not _same_cell(other.params, cell):
                continue
            if other.state == optuna.trial.TrialState.RUNNING:
                raise optuna.TrialPruned(f"cell {cell} is being trained by trial {other.number}")
            if other.state == optuna.trial.TrialState.COMPLETE:
                trial.set_user_attr("duplicate_of", other.number)
                return other.value
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[trial.number])
        if retried is not None and "mlflow_run_id" in trials[retried].user_attrs:
            mark_dead_run(trials[retried].user_attrs["mlflow_run_id"])
        experiment_id = mlflow.get_run(parent_run_id).info.experiment_id
        done = registered_version(config, experiment_id)
        if done is not None:
            trial.set_user_attr("registered", f"models:/{done.name}/{done.version}")
            return float(done.tags.get("test_accuracy", "nan"))
        label = f"d{config.depth}-w{config.width:g}-s{config.seed}-f{config.data_fraction:g}"
        with start_run(run_name=label, nested=True, parent_run_id=parent_run_id) as run:
            trial.set_user_attr("mlflow_run_id", run.info.run_id)
            mlflow.set_tags({"widedeep.kind": "train", "sweep.trial": str(trial.number), "sweep.study": trial.study.study_name})
            mlflow.log_params(dataclasses.asdict(config))
            result, version = train_and_register(config, progress=False)
        trial.set_user_attr("registered", f"models:/{version.name}/{version.version}")
        return result.final["test_accuracy"]

    return objective


def run_grid(study: optuna.Study, grid: Grid, base: TrainConfig, parent_run_id: str) -> None:
    """Take cells until the grid is covered (GridSampler stops the study then). A rerun of a
    finished grid returns at once."""
    done = [t.params for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    cells = [dict(zip(grid.search_space(), values)) for values in itertools.product(*grid.search_space().values())]
    if all(any(_same_cell(d, c) for d in done) for c in cells):
        return
    study.optimize(grid_objective(grid, base, parent_run_id), n_trials=grid.size * (MAX_RETRIES + 2),
                   catch=(), gc_after_trial=True)


def search_objective(base: TrainConfig, parent_run_id: str, val_fraction: float) -> Callable[[optuna.Trial], float]:
    """lr and weight decay for one architecture, scored on a held-out part of the training subset."""
    data = load_dataset(base.dataset, base.data_dir or None)

    def objective(trial: optuna.Trial) -> float:
        config = dataclasses.replace(
            base,
            lr=trial.suggest_float("lr", 1e-3, 0.5, log=True),
            weight_decay=trial.suggest_float("weight_decay", 1e-5, 1e-3, log=True),
            val_fraction=val_fraction,
        )
        def report(epoch: int, metrics: dict) -> None:
            mlflow.log_metrics(metrics, step=epoch)
            trial.report(metrics["val_accuracy"], epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        pruned = None
        with start_run(run_name=f"search-{trial.number}", nested=True, parent_run_id=parent_run_id):
            mlflow.set_tags({"widedeep.kind": "search", "sweep.trial": str(trial.number)})
            mlflow.log_params(dataclasses.asdict(config))
            try:
                result = train(config, data, on_epoch=report, progress=False)
            except optuna.TrialPruned as err:
                mlflow.set_tag("pruned", str(err))  # a pruned trial ends FINISHED, not FAILED
                pruned = err
        if pruned is not None:
            raise pruned
        return result.final["val_accuracy"]

    return objective
