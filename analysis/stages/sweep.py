"""The sweep stage: the width x depth x seed x data-fraction grid, or a learning-rate search, with
Optuna, on one machine (several worker processes) or many (same storage and study name).

Grid. Optuna's GridSampler walks the grid; its sampler seed is fixed, so every worker started with
the same storage and study name draws from the same grid and together they cover it. Each cell is
a train stage (train.train_stage: same checkpoints, logging and registration as `train`) in a run
nested under the worker's sweep run. Idempotent:
- a cell whose training is already registered (same config, store and experiment) is not
  trained again, whichever sweep or worker registered it;
- a trial that draws a cell another worker is training is pruned; one that draws a completed
  cell (GridSampler can hand the last points out twice) returns that cell's result.
A dead worker's trial is failed and re-queued by the next worker (store/studies.py), and the
re-run resumes from the dead run's last epoch checkpoint when it shares the cache dir.

Packs (`pack` > 1): the seeds of each (depth, width, data fraction) are drawn in groups of `pack`
(the grid's `seed` becomes `seeds`, e.g. "0,1,2,3"), and each group trains as one pack
(stages/pack.py), its models recorded and registered as lone trainings; seeds already registered
are left out of the pack. `auto` picks the size (training.sizing.auto_pack_size).

Search. TPE over lr and weight decay for one architecture, each trial scored on a validation
split carved from the training subset (never the test set), with median pruning per epoch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import socket
import sys
import time
from typing import Callable

import mlflow
import optuna
import torch
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from ..config import SWEEP_MAX_RETRIES, Grid, TrainConfig, grid_cells
from ..store import contract as c
from ..store.studies import GRACE_SECONDS, HEARTBEAT_SECONDS, open_study, redact, storage
from ..store.tracking import describe, first_line, log_params_once, mark_dead_run, process_alive, stage_run
from ..store.versions import VersionInfo
from ..training import settings, train
from .pack import train_pack_stage
from .train import cell_label, registered_version

__all__ = ["MODES", "SweepWork", "default_study_name", "grid_space", "grid_study", "run_grid", "work", "sweep_stage"]

MODES = ("grid", "search", "setup")
WORKER_ATTR = "worker"  # trial user attr: host:pid of the process training the cell
GRID_SAMPLER_SEED = 0  # the same in every worker, or grid points are missed
HELPER_START_SECONDS = 300  # the longest the sweep waits for its helper processes to start before it works alone


@dataclasses.dataclass(frozen=True)
class SweepWork:
    """One worker's share of a sweep, as data: the helper processes of a sweep receive it whole
    (pickled by multiprocessing), so they train exactly what the sweep was given."""

    mode: str
    grid: Grid
    base: TrainConfig  # every setting of the cells but their depth, width, seed and data fraction
    url: str  # the Optuna storage
    name: str  # the study
    parent_run_id: str  # the sweep run the cells nest under
    tracking_uri: str
    n_trials: int = 20  # search mode: trials per worker
    val_fraction: float = 0.1  # search mode: held-out share of the training subset
    pack: int = 1  # grid mode: seeds of a cell trained together


def grid_space(grid: Grid, pack: int = 1) -> dict[str, list]:
    """What Optuna's GridSampler walks: the grid's own space, or with `pack` > 1 its seeds in groups
    of `pack` ("0,1,2,3"), one trial per group."""
    space = grid.search_space()
    if pack <= 1:
        return space
    seeds = [str(s) for s in space.pop("seed")]
    groups = [",".join(seeds[i : i + pack]) for i in range(0, len(seeds), pack)]
    return {"depth": space["depth"], "width": space["width"], "seeds": groups, "data_fraction": space["data_fraction"]}


def cell_configs(cell: dict, base: TrainConfig) -> list[TrainConfig]:
    """The trainings of one trial's cell: one, or one per seed of its pack."""
    if "seeds" not in cell:
        return [dataclasses.replace(base, **cell)]
    shared = {k: v for k, v in cell.items() if k != "seeds"}
    return [dataclasses.replace(base, **shared, seed=int(s)) for s in cell["seeds"].split(",")]


def default_study_name(grid: Grid, base: TrainConfig, pack: int = 1) -> str:
    """Same grid, settings and pack size -> same name, so workers started with the same command share it."""
    blob = json.dumps([grid_space(grid, pack), dataclasses.asdict(base)], sort_keys=True, default=str)
    return "sweep-" + hashlib.sha256(blob.encode()).hexdigest()[:10]


def grid_study(url: str, name: str, grid: Grid, pack: int = 1) -> optuna.Study:
    return open_study(url, name, sampler=optuna.samplers.GridSampler(grid_space(grid, pack), seed=GRID_SAMPLER_SEED))


def _same_cell(a: dict, b: dict) -> bool:
    return all(a.get(k) == b.get(k) for k in b)


def grid_objective(grid: Grid, base: TrainConfig, parent_run_id: str, pack: int = 1) -> Callable[[optuna.Trial], float]:
    def objective(trial: optuna.Trial) -> float:
        cell = {k: trial.suggest_categorical(k, v) for k, v in grid_space(grid, pack).items()}
        trials = {t.number: t for t in trial.study.get_trials(deepcopy=False)}
        for other in trials.values():
            if other.number == trial.number or not _same_cell(other.params, cell):
                continue
            if other.state == optuna.trial.TrialState.RUNNING:
                raise optuna.TrialPruned(f"cell {cell} is being trained by trial {other.number}")
            if other.state == optuna.trial.TrialState.COMPLETE:
                trial.set_user_attr("duplicate_of", other.number)
                return other.value
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        retried = RetryHeartbeatStaleTrialCallback.retried_trial_number(trials[trial.number])
        if retried is not None and "mlflow_run_id" in trials[retried].user_attrs:
            mark_dead_run(trials[retried].user_attrs["mlflow_run_id"])
        experiment_id = mlflow.get_run(parent_run_id).info.experiment_id
        configs = cell_configs(cell, base)
        done = {config.seed: registered_version(config, experiment_id) for config in configs}
        accuracies = {seed: VersionInfo.from_tags(v.tags).test_accuracy for seed, v in done.items() if v is not None}
        uris = [c.model_uri(v.name, v.version) for v in done.values() if v is not None]
        todo = [config for config in configs if done[config.seed] is None]
        if todo:  # a pack of the seeds not registered yet (or the one training of the cell)
            outcomes = train_pack_stage(todo, parent_run_id=parent_run_id, progress=False,
                                        tags={c.SWEEP_TRIAL: str(trial.number), c.SWEEP_STUDY: trial.study.study_name},
                                        on_run=lambda run_id: trial.set_user_attr("mlflow_run_id", run_id))
            for config, outcome in zip(todo, outcomes):  # every one registered, or it raised
                accuracies[config.seed] = outcome.result.final["test_accuracy"]
                uris.append(outcome.uri)
        trial.set_user_attr("registered", ",".join(uris))
        scores = [a for a in accuracies.values() if a is not None]
        return sum(scores) / len(scores) if scores else float("nan")

    return objective


def run_grid(study: optuna.Study, grid: Grid, base: TrainConfig, parent_run_id: str, pack: int = 1) -> None:
    """Take cells until every cell of the grid is complete, whoever completes it. A rerun of a
    finished grid returns at once.

    GridSampler stops a worker once every cell has been handed out, which is not the same as done:
    a cell can be held by another worker, live or dead, or have failed. So the worker goes on:
    cells held by others are waited for (a dead worker's trial is failed once its heartbeat is
    GRACE_SECONDS stale and re-queued, then taken here); failed cells are queued again and
    trained here, and a failure of the training itself ends this worker with an error."""
    objective = grid_objective(grid, base, parent_run_id, pack)
    cells = grid_cells(grid_space(grid, pack))
    sampled = False
    waited = False
    while True:
        held = _unfinished_cells(study, cells)
        if not held:
            return
        idle = [cell for cell, states in held if not states & {TrialState.RUNNING, TrialState.WAITING}]
        queued = any(TrialState.WAITING in states for _, states in held)
        if sampled:
            for cell in idle:  # failed (and out of automatic retries), or never drawn
                study.enqueue_trial(cell, skip_if_exists=False)
        if not sampled or idle or queued:
            sampled = True
            study.optimize(objective, n_trials=len(cells) * (SWEEP_MAX_RETRIES + 2), catch=(), gc_after_trial=True)
            continue
        if not waited:
            waited = True
            labels = ", ".join(cell_label(config) for cell, _ in held for config in cell_configs(cell, base))
            print(f"waiting for {len(held)} cell(s) held by other workers ({labels}); a dead worker's cell is taken over "
                  f"at once if it ran on this machine, else once its heartbeat is {GRACE_SECONDS} s stale", file=sys.stderr)
        optuna.storages.fail_stale_trials(study)  # re-queues a dead worker's cell (RetryHeartbeatStaleTrialCallback)
        _requeue_dead_here(study)
        time.sleep(min(HEARTBEAT_SECONDS, 5))


def _requeue_dead_here(study: optuna.Study) -> None:
    """Fail and re-queue the running trials of dead processes of this host: the journal storage
    has no heartbeats, and on one machine a dead process is seen at once."""
    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker_host, _, pid = t.user_attrs.get(WORKER_ATTR, "").rpartition(":")
        if worker_host == host and pid.isdigit() and not process_alive(int(pid)):
            try:
                study.tell(t.number, state=TrialState.FAIL)
            except (RuntimeError, ValueError):
                continue  # another worker failed it first
            study.enqueue_trial(t.params, skip_if_exists=False)


def _unfinished_cells(study: optuna.Study, cells: list[dict]) -> list[tuple[dict, set[TrialState]]]:
    """The cells with no complete trial, each with the states of its trials."""
    trials = study.get_trials(deepcopy=False)
    out = []
    for cell in cells:
        states = {t.state for t in trials if _same_cell(t.params or t.system_attrs.get("fixed_params", {}), cell)}
        if TrialState.COMPLETE not in states:
            out.append((cell, states))
    return out


def search_objective(base: TrainConfig, parent_run_id: str, val_fraction: float) -> Callable[[optuna.Trial], float]:
    """lr and weight decay for one architecture, scored on a held-out part of the training subset."""
    data = settings.training_data(base)

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
        with stage_run("search", f"search-{trial.number}", dataclasses.asdict(config), parent_run_id=parent_run_id):
            mlflow.set_tag(c.SWEEP_TRIAL, str(trial.number))
            try:
                result = train(config, data, on_epoch=report, progress=False)
            except optuna.TrialPruned as err:
                mlflow.set_tag("pruned", str(err))  # a pruned trial ends FINISHED, not FAILED
                pruned = err
        if pruned is not None:
            raise pruned
        return result.final["val_accuracy"]

    return objective


def work(spec: SweepWork) -> None:
    """One worker's share of the sweep, its cells nested under the sweep run."""
    if spec.mode == "grid":
        run_grid(grid_study(spec.url, spec.name, spec.grid, spec.pack), spec.grid, spec.base, spec.parent_run_id, spec.pack)
    else:
        study = open_study(spec.url, f"{spec.name}-search", sampler=optuna.samplers.TPESampler(seed=None),
                           pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1))
        study.optimize(search_objective(spec.base, spec.parent_run_id, spec.val_fraction), n_trials=spec.n_trials)


def sweep_stage(mode: str, grid: Grid, base: TrainConfig, url: str, name: str, workers: int = 1, n_trials: int = 20,
                val_fraction: float = 0.1, params: dict | None = None, pack: int = 1) -> str:
    """The sweep run: create the study once, start `workers - 1` helper processes of the same
    sweep, work, wait, and count the trials. `pack`: seeds of a cell trained together (the entry
    point resolves auto with training.auto_pack_size). Returns its run id."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not one of {', '.join(MODES)}")
    if workers < 1:
        raise ValueError(f"workers={workers} must be >= 1")
    settings.check_grid(grid, base)
    with stage_run("sweep", f"sweep-{name}", params) as run:
        log_params_once({"pack_resolved": pack})  # `mlflow run` logs the param as given ('auto')
        mlflow.set_tags({c.SWEEP_STUDY: name, c.SWEEP_STORAGE: redact(url), c.SWEEP_MODE: mode,
                         c.SWEEP_GRID_SIZE: str(grid.size)})
        describe(f"{mode.capitalize()} sweep {name!r}: {grid.size} cells, depths {list(grid.depths)} x widths "
                 f"{list(grid.widths)} x seeds {list(grid.seeds)} x data fractions {list(grid.data_fractions)}, "
                 f"{workers} worker(s) here, seeds in packs of {pack}, Optuna storage {redact(url)}. Each cell is a train run "
                 "below (or elsewhere, for workers on other machines) and a registered version.")
        if mode in ("setup", "grid"):
            grid_study(url, name, grid, pack)  # created once here, before any worker starts
        if mode == "setup":
            print(f"study {name!r} ready in {redact(url)}; start workers with -P study={name}")
            return run.info.run_id
        spec = SweepWork(mode, grid, base, url, name, run.info.run_id, mlflow.get_tracking_uri(), n_trials, val_fraction, pack)
        helpers = _start_helpers(workers - 1, spec)
        try:
            work(spec)
        finally:
            for helper in helpers:
                helper.join()
        failed = [h.pid for h in helpers if h.exitcode != 0]
        if failed:
            raise RuntimeError(f"{len(failed)} worker process(es) failed; rerun the same command to finish the grid")
        _summarise(url, name if mode == "grid" else f"{name}-search")
    return run.info.run_id


def _start_helpers(count: int, spec: SweepWork) -> list[multiprocessing.Process]:
    """`count` more worker processes of the same sweep, sharing this machine's cores with this one.
    Returns once each has started (or died), so that all of them share the grid from its first
    cell: a fresh interpreter takes seconds to import torch and MLflow, in which this process
    alone would take the cells of a small grid."""
    if count == 0:
        return []
    threads = max(1, (os.cpu_count() or 1) // (count + 1))
    torch.set_num_threads(threads)
    context = multiprocessing.get_context("spawn")  # a fresh interpreter: no forked CUDA or thread state
    ready = [context.Event() for _ in range(count)]
    helpers = [context.Process(target=_helper, args=(spec, threads, ready[k]), name=f"sweep-helper-{k}")
               for k in range(count)]
    for helper in helpers:
        helper.start()
    deadline = time.monotonic() + HELPER_START_SECONDS
    for helper, event in zip(helpers, ready):
        while not event.wait(timeout=0.5) and helper.is_alive() and time.monotonic() < deadline:
            pass
    return helpers


def _helper(spec: SweepWork, threads: int, ready) -> None:
    """A helper worker: the sweep's work in this process; an error ends it in one line (exit 2)."""
    os.environ.pop("MLFLOW_RUN_ID", None)  # its cells nest under the sweep run, not the run `mlflow run` created
    mlflow.set_tracking_uri(spec.tracking_uri)
    torch.set_num_threads(threads)
    ready.set()
    try:
        work(spec)
    except Exception as err:
        print(f"error: {first_line(err)}", file=sys.stderr)
        sys.exit(2)


def _summarise(url: str, name: str) -> None:
    study = optuna.load_study(study_name=name, storage=storage(url))
    states = [t.state.name for t in study.trials]
    counts = {s: states.count(s) for s in sorted(set(states))}
    mlflow.log_metrics({f"trials_{s.lower()}": float(n) for s, n in counts.items()})
    print(f"study {name}: {counts}")

