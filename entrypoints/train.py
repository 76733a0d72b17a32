"""`mlflow run . -e train`: train one ResNet and register it in the MLflow Model Registry."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import uuid

import mlflow
from mlflow import MlflowClient

from analysis import checkpoints, registry
from analysis.config import PRESET_EPOCHS, TrainConfig, resolve_epochs
from analysis.data import load_dataset
from analysis.training import train
from entrypoints.common import log_params_once, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--preset", default="quick", choices=sorted(PRESET_EPOCHS))
    p.add_argument("--depth", type=int, default=d.depth, help="6n+2: 14, 20, 26, 32, 38, 44, 56, 110, 164")
    p.add_argument("--width", type=float, default=d.width, help="channel multiplier (16k, 32k, 64k)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--data_fraction", type=float, default=d.data_fraction)
    p.add_argument("--epochs", type=int, default=0, help="0: the preset's count")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--momentum", type=float, default=d.momentum)
    p.add_argument("--weight_decay", type=float, default=d.weight_decay)
    p.add_argument("--dataset", default=d.dataset)
    p.add_argument("--data_dir", default=d.data_dir)
    p.add_argument("--device", default=d.device)
    p.add_argument("--subset_seed", type=int, default=d.subset_seed)
    p.add_argument("--eval_every", type=int, default=d.eval_every, help="epochs between test evaluations")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> None:
    with mlflow.start_run() as run:
        log_params_once(vars(args))
        mlflow.set_tag("widedeep.kind", "train")
        config = TrainConfig(
            depth=args.depth,
            width=args.width,
            seed=args.seed,
            data_fraction=args.data_fraction,
            epochs=resolve_epochs(args.preset, args.epochs),
            batch_size=args.batch_size,
            lr=args.lr,
            momentum=args.momentum,
            weight_decay=args.weight_decay,
            dataset=args.dataset,
            data_dir=args.data_dir,
            device=args.device,
            subset_seed=args.subset_seed,
            eval_every=args.eval_every,
        )
        mlflow.log_param("epochs_resolved", config.epochs)
        data = load_dataset(config.dataset, config.data_dir or None)

        # A checkpoint of the same config in the same store and experiment is resumed.
        fingerprint = config.fingerprint(mlflow.get_tracking_uri(), run.info.experiment_id)
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
        mlflow.set_tags({"registered_model": name, "model_version": version.version})
        checkpoints.remove(ckpt)  # the registry now holds the model; a rerun trains anew
        print(
            f"registered models:/{name}/{version.version} (alias @{registry.NEWEST_ALIAS}): "
            f"test accuracy {result.final['test_accuracy']:.4f}, train accuracy {result.final['train_accuracy_clean']:.4f}"
        )


def mark_dead_run(run_id: str) -> None:
    """A run whose checkpoint we resume died without ending: stop it showing as RUNNING."""
    client = MlflowClient()
    try:
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_terminated(run_id, status="KILLED")
    except mlflow.exceptions.MlflowException:
        pass  # deleted, or in another store: nothing to mark


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
