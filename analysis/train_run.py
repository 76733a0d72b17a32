"""One training as an MLflow run: resume or start, log every epoch, register the result.

Shared by `train` (one model) and `sweep` (one model per grid cell), so both checkpoint,
resume, log and register in exactly the same way. Works inside the active MLflow run.
"""

from __future__ import annotations

import dataclasses
import sys
import uuid

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from . import checkpoints, registry
from .config import TrainConfig
from .data import load_dataset
from .training import TrainResult, train


def fingerprint_in_this_store(config: TrainConfig, experiment_id: str) -> str:
    """Identity of a training: its config, the tracking store and the experiment."""
    return config.fingerprint(mlflow.get_tracking_uri(), experiment_id)


def registered_version(config: TrainConfig, experiment_id: str) -> ModelVersion | None:
    """The registered version of exactly this training, if one exists (sweeps skip those)."""
    name = registry.registered_name(config.dataset, config.depth, config.width)
    found = registry.find_versions(name, {"fingerprint": fingerprint_in_this_store(config, experiment_id)})
    return found[0] if found else None


def mark_dead_run(run_id: str) -> None:
    """A run that died without ending (SIGKILL, lost machine): stop it showing as RUNNING."""
    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
    except MlflowException:
        pass  # deleted, or in another store: nothing to mark


def train_and_register(config: TrainConfig, progress: bool | None = None) -> tuple[TrainResult, ModelVersion]:
    run = mlflow.active_run()
    data = load_dataset(config.dataset, config.data_dir or None)

    # A checkpoint of the same config in the same store and experiment is resumed.
    fingerprint = fingerprint_in_this_store(config, run.info.experiment_id)
    ckpt = checkpoints.checkpoint_path(fingerprint)
    previous = checkpoints.read_meta(ckpt)
    lineage = previous["lineage"] if previous else uuid.uuid4().hex
    if previous:
        mark_dead_run(previous["run_id"])
        mlflow.set_tag("resumed_from_run", previous["run_id"])
        print(f"resuming from epoch {len(previous['history'])} of run {previous['run_id']}", file=sys.stderr)
    mlflow.set_tags({"lineage": lineage, "fingerprint": fingerprint})

    result = train(
        config,
        data,
        checkpoint=ckpt,
        checkpoint_meta={"lineage": lineage, "run_id": run.info.run_id},
        on_epoch=lambda epoch, metrics: mlflow.log_metrics({**metrics, "epoch": epoch}, step=epoch),
        progress=progress,
    )
    mlflow.log_params({"train_size": result.train_size, "subset_hash": result.subset_hash, "num_classes": data.num_classes})
    clean = {k: result.final[k] for k in ("train_accuracy_clean", "train_loss_clean")}
    mlflow.log_metrics(clean, step=config.epochs)  # test metrics were logged per epoch

    name = registry.registered_name(config.dataset, config.depth, config.width)
    tags = {
        "dataset": config.dataset,
        "depth": str(config.depth),
        "width": f"{config.width:g}",
        "seed": str(config.seed),
        "data_fraction": f"{config.data_fraction:g}",
        "epochs": str(config.epochs),
        "train_size": str(result.train_size),
        "subset_hash": result.subset_hash,
        "test_accuracy": registry.tag_value(result.final["test_accuracy"]),
        "train_accuracy": registry.tag_value(result.final["train_accuracy_clean"]),
        "train_run_id": run.info.run_id,
        "lineage": lineage,
        "fingerprint": fingerprint,
    }
    training = {**dataclasses.asdict(config), "classes": list(data.classes), "train_size": result.train_size,
                "subset_hash": result.subset_hash, "run_id": run.info.run_id}
    version = registry.register(result.model, config.model_config(data.num_classes), name, run.info.run_id, tags, training)
    mlflow.set_tags({"registered_model": name, "model_version": str(version.version)})
    checkpoints.remove(ckpt)  # the registry now holds the model; a rerun trains anew
    return result, version
