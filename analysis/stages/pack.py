"""The pack stage: K trainings that differ only in seed, trained at once as one network
(training/pack.py), each recorded exactly as `train` records it alone.

The pack's run holds the shared settings, its seeds and the pack's own speed. Each model gets a
train run nested under it (the same name, params, tags, dataset and per-epoch metrics as a lone
training, plus PACK_RUN) and its own registered version (the same name, tags, config, fingerprint
and pyfunc model, plus PACK_RUN), so that analyze, compare, predictions and sweeps cannot tell a
packed model from a lone one. A model whose loss diverges fails alone: its train run ends FAILED
with the one-line reason, the others register, and then the pack's run fails naming it.

A pack resumes as one training does: its checkpoint, keyed by the fingerprints of its models,
holds the network and every model's history and lineage; the same command resumes from it.
"""

from __future__ import annotations

import hashlib
import sys
import time
import uuid
from typing import Callable

import mlflow
from mlflow import MlflowClient
from mlflow.entities import Metric

from ..config import TrainConfig
from ..store import contract as c
from ..store.datasets import log_training_data
from ..store.tracking import describe, first_line, log_params_once, mark_dead_run, stage_run, start_run
from ..data import subset_indices
from ..training import check_pack, checkpoints, settings, train_pack
from .train import (TrainOutcome, cell_label, fingerprint_in_this_store, logged_training_data, register_trained,
                    train_stage)

__all__ = ["train_pack_stage"]


def train_pack_stage(configs: list[TrainConfig], params: dict | None = None, parent_run_id: str | None = None,
                     tags: dict[str, str] | None = None, on_run: Callable[[str], None] | None = None,
                     progress: bool | None = None,
                     from_preset: tuple[str, ...] = ()) -> list[TrainOutcome]:
    """Train and register the seeds of one cell as a pack, in a pack run (the entry point's, or a
    child of the active run or of `parent_run_id`); a pack of one is `train_stage`. Returns each
    model's outcome in seed order. Raises, after registering the others, if any model diverged.
    `params`, `tags`, `on_run` and `from_preset` as for train_stage."""
    if len(configs) == 1:
        return [train_stage(configs[0], params, parent_run_id, tags, on_run, progress, from_preset)]
    check_pack(configs)
    for config in configs:
        settings.check(config)
    given = {k: v for k, v in (params or {}).items() if k not in ("seed", c.PACK_SEEDS)}
    seeds = ",".join(str(config.seed) for config in configs)
    with stage_run("pack", f"pack-{cell_label(configs[0], seeds)}", parent_run_id=parent_run_id) as run:
        if on_run:
            on_run(run.info.run_id)
        shared = {k: v for k, v in configs[0].to_dict().items() if k != "seed"}
        log_params_once({**shared, **given, c.PACK_SEEDS: seeds})
        log_params_once({f"{k}_resolved": getattr(configs[0], k) for k in from_preset})
        if tags:
            mlflow.set_tags(tags)
        outcomes = _train_and_register(configs, run.info.run_id, run.info.experiment_id, given, tags or {}, from_preset,
                                       progress)
        describe(f"A pack of {len(configs)} seeds ({seeds}) of {cell_label(configs[0], seeds)}, trained together as one "
                 f"network (grouped convolutions, nothing shared between models), then registered one version each: "
                 f"{', '.join(o.uri for o in outcomes)}. Each model's train run is below this one.")
        return outcomes


def _train_and_register(configs: list[TrainConfig], pack_run_id: str, experiment_id: str, given: dict, tags: dict,
                        from_preset: tuple[str, ...], progress: bool | None) -> list[TrainOutcome]:
    fingerprints = [fingerprint_in_this_store(config, experiment_id) for config in configs]
    ckpt = checkpoints.checkpoint_path(hashlib.sha256(",".join(fingerprints).encode()).hexdigest()[:20])
    checkpoints.check_writable(ckpt)  # before any data is read, not after the first epoch
    with checkpoints.training_lock(ckpt):  # never resumed under live processes of the same pack
        data = logged_training_data(configs[0])
        previous = checkpoints.read_meta(ckpt)
        lineages = previous["lineages"] if previous else [uuid.uuid4().hex for _ in configs]
        if previous:
            for dead in (previous["run_id"], *previous["run_ids"]):
                mark_dead_run(dead)
            mlflow.set_tag(c.RESUMED_FROM, previous["run_id"])
            done = max(len(h) for h in checkpoints.histories(previous, len(configs)))
            print(f"resuming the pack from epoch {done} of run {previous['run_id']}", file=sys.stderr)

        subset = subset_indices(data.train_y, configs[0].data_fraction, configs[0].subset_seed)
        runs = []
        for k, config in enumerate(configs):
            # Each model's train run, as train_stage opens it; left RUNNING while the pack trains.
            with stage_run("train", f"train-{cell_label(config)}") as child:
                log_params_once({**config.to_dict(), **given})
                log_params_once({f"{key}_resolved": getattr(config, key) for key in from_preset})
                mlflow.set_tags({**tags, c.PACK_RUN: pack_run_id, c.LINEAGE: lineages[k], c.FINGERPRINT: fingerprints[k],
                                 **({c.RESUMED_FROM: previous["run_ids"][k]} if previous else {})})
                log_training_data(data, config.data_fraction, subset)
            runs.append(child.info.run_id)
            MlflowClient().update_run(child.info.run_id, status="RUNNING")

        client = MlflowClient()
        pack_rate_logged: set[int] = set()

        def on_epoch(k: int, epoch: int, metrics: dict[str, float]) -> None:
            now = int(time.time() * 1000)
            client.log_batch(runs[k], metrics=[Metric(key, value, now, epoch) for key, value in {**metrics, c.EPOCH: epoch}.items()])
            if epoch not in pack_rate_logged:
                pack_rate_logged.add(epoch)
                mlflow.log_metric(c.PACK_IMAGES_PER_SEC, len(configs) * metrics[c.IMAGES_PER_SEC], step=epoch)

        snapshots = checkpoints.snapshot_dir(ckpt)
        try:
            results = train_pack(
                configs, data, checkpoint=ckpt,
                checkpoint_meta={"lineages": lineages, "run_ids": runs, "run_id": pack_run_id},
                on_epoch=on_epoch, progress=progress,
                on_snapshot=lambda k, epoch, state: checkpoints.save_snapshot(snapshots / f"seed-{configs[k].seed}", epoch, state),
            )
            outcomes, failed = [], []
            for k, (config, result) in enumerate(zip(configs, results)):
                if result.error:
                    client.set_tag(runs[k], c.ERROR, result.error)
                    client.set_terminated(runs[k], status="FAILED")
                    failed.append(f"seed {config.seed} ({result.error})")
                    continue
                with start_run(run_id=runs[k], nested=True):
                    version = register_trained(config, result, data, runs[k], lineages[k], fingerprints[k],
                                               snapshots / f"seed-{config.seed}", {c.PACK_RUN: pack_run_id})
                outcomes.append(TrainOutcome(runs[k], result, version))
        except BaseException as err:
            for run_id in runs:  # the models that had not ended end with the pack
                if client.get_run(run_id).info.status == "RUNNING":
                    client.set_tag(run_id, c.ERROR, f"the pack failed: {first_line(err)}")
                    client.set_terminated(run_id, status="FAILED")
            raise
        checkpoints.remove(ckpt)  # the registry now holds the models; a rerun trains anew
        if failed:
            mlflow.set_tag(c.PACK_FAILED, ",".join(str(config.seed) for config, r in zip(configs, results) if r.error))
            registered = ", ".join(str(config.seed) for config, r in zip(configs, results) if not r.error) or "none"
            raise FloatingPointError(f"{len(failed)} of {len(configs)} models diverged: {'; '.join(failed)}; "
                                     f"registered seeds: {registered}")
        return outcomes
