"""The train stage: one training as an MLflow run that resumes or starts, logs every epoch and
registers the result. `train` (one model), `sweep` (one model per grid cell) and `study` all go
through `train_stage`, so they checkpoint, resume, log and register in exactly the same way.

Data-parallel (training/distributed.py): `launch_stage` holds the run while torchrun's processes
train; rank 0 runs `train_stage` in that run and tells the others which checkpoint to resume
from; the others run `follow_stage`, which trains beside it and records nothing.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid
from pathlib import Path
from typing import Callable

import mlflow
from mlflow.entities.model_registry import ModelVersion

from ..config import PRESET_FIELDS, TrainConfig
from ..data import SKIP_BAD_IMAGES_ENV, load_dataset, subset_indices
from ..store import contract as c
from ..store.lookup import find_versions, registered_name, tag_value
from ..store import model_files
from ..store.datasets import log_training_data
from ..store.tracking import log_params_once, mark_dead_run, stage_run
from ..training import TrainResult, train
from ..training import checkpoints, distributed

__all__ = ["TrainOutcome", "train_stage", "follow_stage", "launch_stage", "registered_version", "cell_label"]


@dataclasses.dataclass
class TrainOutcome:
    run_id: str
    result: TrainResult
    version: ModelVersion

    @property
    def uri(self) -> str:
        return c.model_uri(self.version.name, self.version.version)


def cell_label(config: TrainConfig) -> str:
    """'d56-w2-s3-f0.25': the grid cell of a training, for run names."""
    return f"d{config.depth}-w{config.width:g}-s{config.seed}-f{config.data_fraction:g}"


EXAMPLE_IMAGES = 2  # test images stored with each model as its input example


def model_params(config: TrainConfig) -> dict:
    """What a logged model records about its training: the architecture and the recipe."""
    fields = dataclasses.asdict(config)
    return {k: fields[k] for k in ("arch", "depth", "width", "seed", "data_fraction", "subset_seed", "dataset", "image_size",
                                   "epochs", "batch_size", "lr", "momentum", "weight_decay")}


def fingerprint_in_this_store(config: TrainConfig, experiment_id: str) -> str:
    """Identity of a training: its config, the tracking store and the experiment."""
    return config.fingerprint(mlflow.get_tracking_uri(), experiment_id)


def registered_version(config: TrainConfig, experiment_id: str) -> ModelVersion | None:
    """The registered version of exactly this training, if one exists (sweeps skip those)."""
    name = registered_name(config.dataset, config.depth, config.width, config.arch)
    found = find_versions(name, {c.FINGERPRINT: fingerprint_in_this_store(config, experiment_id)})
    return found[0] if found else None


def train_stage(config: TrainConfig, params: dict | None = None, parent_run_id: str | None = None,
                tags: dict[str, str] | None = None, on_run: Callable[[str], None] | None = None,
                progress: bool | None = None) -> TrainOutcome:
    """Train and register one model in its own run (the entry point's, or a child of the active
    run or of `parent_run_id`). `params`: what the caller was given, logged beside the config;
    `on_run(run_id)` is called once the run exists, before training starts."""
    with stage_run("train", f"train-{cell_label(config)}", parent_run_id=parent_run_id) as run:
        if on_run:
            on_run(run.info.run_id)
        log_params_once({**dataclasses.asdict(config), **(params or {})})
        # `mlflow run` logged what it was given: settings left to the preset also get their values.
        given = mlflow.get_run(run.info.run_id).data.params
        log_params_once({f"{k}_resolved": getattr(config, k) for k in (*PRESET_FIELDS, "depth") if given.get(k) in ("auto", "0")})
        if tags:
            mlflow.set_tags(tags)
        result, version = _train_and_register(config, run.info.run_id, run.info.experiment_id, progress)
    return TrainOutcome(run.info.run_id, result, version)


def _train_and_register(config: TrainConfig, run_id: str, experiment_id: str,
                        progress: bool | None) -> tuple[TrainResult, ModelVersion]:
    # A checkpoint of the same config in the same store and experiment is resumed.
    fingerprint = fingerprint_in_this_store(config, experiment_id)
    ckpt = checkpoints.checkpoint_path(fingerprint)
    checkpoints.check_writable(ckpt)  # before any data is read, not after the first epoch
    distributed.broadcast(str(ckpt))  # the other ranks resume from the same file (a shared cache across machines)
    data = load_dataset(config.dataset, config.data_dir or None, config.image_size, stream=config.streamed)
    log_training_data(data, config.data_fraction, subset_indices(data.train_y, config.data_fraction, config.subset_seed))
    if data.skipped_images:
        print(f"warning: {data.skipped_images} unreadable image(s) left out ({SKIP_BAD_IMAGES_ENV}); "
              f"logged as param {c.SKIPPED_IMAGES}", file=sys.stderr)
    previous = checkpoints.read_meta(ckpt)
    lineage = previous["lineage"] if previous else uuid.uuid4().hex
    if previous:
        mark_dead_run(previous["run_id"])
        mlflow.set_tag(c.RESUMED_FROM, previous["run_id"])
        print(f"resuming from epoch {len(previous['history'])} of run {previous['run_id']}", file=sys.stderr)
    mlflow.set_tags({c.LINEAGE: lineage, c.FINGERPRINT: fingerprint})

    snapshots = checkpoints.snapshot_dir(ckpt)
    result = train(
        config,
        data,
        checkpoint=ckpt,
        checkpoint_meta={"lineage": lineage, "run_id": run_id},
        on_epoch=lambda epoch, metrics: mlflow.log_metrics({**metrics, "epoch": epoch}, step=epoch),
        progress=progress,
        on_snapshot=lambda epoch, model: checkpoints.save_snapshot(snapshots, epoch, model),
    )
    if config.snapshot_every:  # all of them, those taken before a resume included
        mlflow.log_artifacts(str(snapshots), c.SNAPSHOT_DIR)
    mlflow.log_params({c.TRAIN_SIZE: result.train_size, c.SUBSET_HASH: result.subset_hash, "num_classes": data.num_classes,
                       c.SKIPPED_IMAGES: data.skipped_images})

    name = registered_name(config.dataset, config.depth, config.width, config.arch)
    tags = {
        "dataset": config.dataset,
        "depth": str(config.depth),
        "width": f"{config.width:g}",
        "seed": str(config.seed),
        "data_fraction": f"{config.data_fraction:g}",
        c.ARCH: config.arch,
        c.IMAGE_SIZE: str(config.image_size),
        c.EPOCHS: str(config.epochs),
        c.TRAIN_SIZE: str(result.train_size),
        c.SUBSET_HASH: result.subset_hash,
        c.TEST_ACCURACY: tag_value(result.final["test_accuracy"]),
        c.TRAIN_ACCURACY: tag_value(result.final["train_accuracy_clean"]),
        c.TRAIN_RUN_ID: run_id,
        c.LINEAGE: lineage,
        c.FINGERPRINT: fingerprint,
    }
    training = {**dataclasses.asdict(config), "classes": list(data.classes), "train_size": result.train_size,
                "subset_hash": result.subset_hash, "run_id": run_id}
    version = model_files.register(result.model, config.model_config(data.num_classes), name, tags, training,
                                   example=data.test_x[:EXAMPLE_IMAGES], params=model_params(config),
                                   metrics=result.final, step=config.epochs)
    mlflow.set_tags({c.REGISTERED_MODEL: name, c.MODEL_VERSION: str(version.version)})
    checkpoints.remove(ckpt)  # the registry now holds the model; a rerun trains anew
    return result, version


def follow_stage(config: TrainConfig) -> None:
    """A data-parallel rank other than 0: trains its share beside rank 0, which logs and registers."""
    ckpt = Path(distributed.broadcast(None))
    data = load_dataset(config.dataset, config.data_dir or None, config.image_size, stream=config.streamed)
    train(config, data, checkpoint=ckpt, progress=False)


def launch_stage(config: TrainConfig, nproc: int, module: str, argv: list[str]) -> None:
    """Train with `nproc` local processes (torchrun) in one MLflow run, which this process holds:
    rank 0 logs and registers in it; if any process fails, the run ends FAILED here, nothing is
    registered, and a rerun resumes from rank 0's last checkpoint."""
    with stage_run("train", f"train-{cell_label(config)}") as run:
        env = {"MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri()}
        status = distributed.launch(nproc, module, argv, env)
        if status:
            raise RuntimeError(f"a training process failed (torchrun exit status {status}; its error is above); "
                               "nothing was registered, and rerunning the same command resumes from the last checkpoint")
