"""The train stage: one training as an MLflow run that resumes or starts, logs every epoch and
registers the result. `train` (one model), `sweep` (one model per grid cell) and `study` all go
through `train_stage`, so they checkpoint, resume, log and register in exactly the same way.

Data-parallel (training/distributed.py): `launch_stage` holds the run while torchrun's processes
train; rank 0 runs `train_stage` in that run and tells the others which checkpoint to resume
from; the others run `follow_stage`, which trains beside it and records nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Callable

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion

from ..config import TrainConfig, short_number
from ..data import SKIP_BAD_IMAGES_ENV, ImageData, subset_indices
from ..nets import registered_name
from ..store import contract as c
from ..store.lookup import find_versions
from ..store.versions import VersionInfo, trained_summary, version_description
from ..store import model_files
from ..store.datasets import log_training_data
from ..store.tracking import describe, log_params_once, mark_dead_run, stage_run
from ..training import TrainResult, train
from ..training import checkpoints, distributed, settings

__all__ = ["TrainRequest", "TrainOutcome", "train_stage", "follow_stage", "launch_stage", "registered_version", "register_trained",
           "fingerprint_in_this_store", "logged_training_data", "cell_label", "degenerate_reason", "REQUEST_ENV"]

REQUEST_ENV = "WIDEDEEP_TRAIN_REQUEST"  # set for the processes launch_stage starts: the path of the request's JSON


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    """One training as its entry point resolved it: the config, the parameters as the user gave
    them (logged beside the config), and the settings left to the preset (logged once more as
    `<name>_resolved`, since `mlflow run` logs them as 'auto'). Data-parallel processes receive it
    whole from the process that launched them, never as a command line rebuilt from it."""

    config: TrainConfig
    params: dict = dataclasses.field(default_factory=dict)
    from_preset: tuple[str, ...] = ()

    def to_json(self) -> str:
        return json.dumps({"config": self.config.to_dict(), "params": self.params, "from_preset": list(self.from_preset)})

    @classmethod
    def from_json(cls, text: str) -> "TrainRequest":
        fields = json.loads(text)
        return cls(TrainConfig.from_dict(fields["config"]), fields["params"], tuple(fields["from_preset"]))

    @classmethod
    def handed_over(cls) -> "TrainRequest | None":
        """The request of the process that launched this one (launch_stage), if it did."""
        path = os.environ.get(REQUEST_ENV)
        return cls.from_json(Path(path).read_text()) if path else None


@dataclasses.dataclass
class TrainOutcome:
    run_id: str
    result: TrainResult
    version: ModelVersion

    @property
    def uri(self) -> str:
        return c.model_uri(self.version.name, self.version.version)


def cell_label(config: TrainConfig | VersionInfo, seeds: str = "") -> str:
    """'d56-w2-s3-f0.25': the grid cell of a training (or of the version it registered), for run
    names; `seeds` ('0,1,2') in place of the config's own seed labels a pack."""
    return f"d{config.depth}-w{short_number(config.width)}-s{seeds or config.seed}-f{short_number(config.data_fraction)}"


EXAMPLE_IMAGES = 2  # test images stored with each model as its input example
MODEL_PARAMS = ("arch", "depth", "width", "seed", "data_fraction", "subset_seed", "dataset", "image_size", "epochs",
                "batch_size", "lr", "momentum", "weight_decay")  # what a logged model records: the architecture and the recipe


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
                progress: bool | None = None, from_preset: tuple[str, ...] = ()) -> TrainOutcome:
    """Train and register one model in its own run (the entry point's, or a child of the active
    run or of `parent_run_id`). `params`: what the caller was given, logged beside the config;
    `from_preset`: the settings the preset chose, logged again as `<name>_resolved`;
    `on_run(run_id)` is called once the run exists, before training starts."""
    settings.check(config)
    with stage_run("train", f"train-{cell_label(config)}", parent_run_id=parent_run_id) as run:
        if on_run:
            on_run(run.info.run_id)
        log_params_once({**config.to_dict(), **(params or {})})
        log_params_once({f"{k}_resolved": getattr(config, k) for k in from_preset})
        if tags:
            mlflow.set_tags(tags)
        result, version = _train_and_register(config, run.info.run_id, run.info.experiment_id, progress)
    return TrainOutcome(run.info.run_id, result, version)


def logged_training_data(config: TrainConfig) -> ImageData:
    """The data a training reads, its subset logged as the active run's dataset."""
    data = settings.training_data(config)
    log_training_data(data, config.data_fraction, subset_indices(data.train_y, config.data_fraction, config.subset_seed))
    if data.skipped_images:
        print(f"warning: {data.skipped_images} unreadable image(s) left out ({SKIP_BAD_IMAGES_ENV}); "
              f"logged as param {c.SKIPPED_IMAGES}", file=sys.stderr)
    return data


def _train_and_register(config: TrainConfig, run_id: str, experiment_id: str,
                        progress: bool | None) -> tuple[TrainResult, ModelVersion]:
    # A checkpoint of the same config in the same store and experiment is resumed, never under
    # live processes of the same training (checkpoints.training_lock; a launcher took it already).
    fingerprint = fingerprint_in_this_store(config, experiment_id)
    ckpt = checkpoints.checkpoint_path(fingerprint)
    checkpoints.check_writable(ckpt)  # before any data is read, not after the first epoch
    with checkpoints.training_lock(ckpt, alone_first=not distributed.launched()):
        distributed.broadcast(str(ckpt))  # the other ranks resume from the same file (a shared cache across machines)
        data = logged_training_data(config)
        previous = checkpoints.read_meta(ckpt)
        lineage = previous["lineage"] if previous else uuid.uuid4().hex
        if previous:
            mark_dead_run(previous["run_id"])
            mlflow.set_tag(c.RESUMED_FROM, previous["run_id"])
            print(f"resuming from epoch {len(checkpoints.histories(previous)[0])} of run {previous['run_id']}", file=sys.stderr)
        mlflow.set_tags({c.LINEAGE: lineage, c.FINGERPRINT: fingerprint})

        snapshots = checkpoints.snapshot_dir(ckpt)
        result = train(
            config,
            data,
            checkpoint=ckpt,
            checkpoint_meta={"lineage": lineage, "run_id": run_id},
            on_epoch=lambda epoch, metrics: mlflow.log_metrics({**metrics, c.EPOCH: epoch}, step=epoch),
            progress=progress,
            on_snapshot=lambda epoch, state: checkpoints.save_snapshot(snapshots, epoch, state),
        )
        version = register_trained(config, result, data, run_id, lineage, fingerprint, snapshots)
        checkpoints.remove(ckpt)  # the registry now holds the model; a rerun trains anew
    return result, version


def register_trained(config: TrainConfig, result: TrainResult, data: ImageData, run_id: str, lineage: str, fingerprint: str,
              snapshots: Path, extra_tags: dict[str, str] | None = None) -> ModelVersion:
    """Log a trained model's snapshots and data sizes in the active run (its train run) and register it."""
    if config.snapshot_every:  # all of them, those taken before a resume included
        mlflow.log_artifacts(str(snapshots), c.SNAPSHOT_DIR)
    mlflow.log_params({c.TRAIN_SIZE: result.train_size, c.SUBSET_HASH: result.subset_hash, "num_classes": data.num_classes,
                       c.SKIPPED_IMAGES: data.skipped_images})

    name = registered_name(config.dataset, config.depth, config.width, config.arch)
    degenerate = degenerate_reason(config, result.final[c.TRAIN_ACCURACY_CLEAN], data.num_classes)
    if degenerate:
        print(f"warning: {name} (seed {config.seed}) {degenerate}; it is registered with the version tag {c.DEGENERATE} "
              f"holding this reason, so that it is not taken for a healthy model", file=sys.stderr)
        mlflow.set_tag(c.DEGENERATE, degenerate)
        extra_tags = {**(extra_tags or {}), c.DEGENERATE: degenerate}
    info = VersionInfo(
        dataset=config.dataset, arch=config.arch, depth=config.depth, width=config.width, seed=config.seed,
        data_fraction=config.data_fraction, epochs=config.epochs, image_size=config.image_size, train_size=result.train_size,
        subset_hash=result.subset_hash, test_accuracy=result.final[c.TEST_ACCURACY],
        train_accuracy=result.final[c.TRAIN_ACCURACY_CLEAN], train_run_id=run_id, lineage=lineage, fingerprint=fingerprint,
    )
    tags = info.to_tags()
    training = {**config.to_dict(), "classes": list(data.classes), "train_size": result.train_size,
                "subset_hash": result.subset_hash, "run_id": run_id}
    version = model_files.register(result.model, settings.model_config(config, data.num_classes), name,
                                   {**tags, **(extra_tags or {})}, training,
                                   example=data.test_x[:EXAMPLE_IMAGES], params={k: getattr(config, k) for k in MODEL_PARAMS},
                                   metrics=result.final, step=config.epochs)
    mlflow.set_tags({c.REGISTERED_MODEL: name, c.MODEL_VERSION: str(version.version)})
    MlflowClient().update_model_version(name, version.version, description=version_description(info))
    describe(f"{trained_summary(info)} Registered as {c.model_uri(name, version.version)}.")
    return version


CHANCE_MARGIN = 1.5  # a model that fits less than this x chance of its own training set learned next to nothing


def degenerate_reason(config: TrainConfig, train_accuracy: float, num_classes: int) -> str:
    """Why a finished training is degenerate (its clean training accuracy near chance), or ''.
    Registered anyway, tagged: a researcher may study it, but nothing may take it for healthy."""
    floor = CHANCE_MARGIN / num_classes
    if train_accuracy >= floor:
        return ""
    cause = f"pc1_penalty={config.pc1_penalty:g} may be too strong" if config.pc1_penalty else f"lr={config.lr:g} may be too high or epochs={config.epochs} too few"
    return (f"fits {train_accuracy:.1%} of its training set, under {CHANCE_MARGIN:g} x chance ({floor:.1%}); "
            f"{cause}")


def follow_stage(config: TrainConfig) -> None:
    """A data-parallel rank other than 0: trains its share beside rank 0, which logs and registers."""
    ckpt = Path(distributed.broadcast(None))
    with checkpoints.training_lock(ckpt, alone_first=False):
        train(config, settings.training_data(config), checkpoint=ckpt, progress=False)


def launch_stage(request: TrainRequest, nproc: int, module: str) -> None:
    """Train with `nproc` local processes (torchrun running `module`) in one MLflow run, which this
    process holds: rank 0 logs and registers in it; if any process fails, the run ends FAILED here,
    nothing is registered, and a rerun resumes from rank 0's last checkpoint. The processes receive
    `request` whole (REQUEST_ENV names its JSON file). This process owns them: SIGTERM or SIGINT
    stops them (distributed.launch), and they stop by themselves if it dies; a rerun waits for
    the previous launch's processes to exit before it resumes (checkpoints.training_lock)."""
    settings.check(request.config)
    with stage_run("train", f"train-{cell_label(request.config)}") as run, tempfile.TemporaryDirectory() as tmp:
        handover = Path(tmp) / "request.json"
        handover.write_text(request.to_json())
        env = {"MLFLOW_RUN_ID": run.info.run_id, "MLFLOW_TRACKING_URI": mlflow.get_tracking_uri(), REQUEST_ENV: str(handover)}
        ckpt = checkpoints.checkpoint_path(fingerprint_in_this_store(request.config, run.info.experiment_id))
        checkpoints.check_writable(ckpt)
        with checkpoints.training_lock(ckpt):  # its ranks join it; a previous launch's must have exited
            status = distributed.launch(nproc, module, env)
        if status:
            raise RuntimeError(f"a training process failed (torchrun exit status {status}; its error is above); "
                               "nothing was registered, and rerunning the same command resumes from the last checkpoint")
