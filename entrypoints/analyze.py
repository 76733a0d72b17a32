"""`mlflow run . -e analyze`: layer-by-layer CKA of registered models, heatmaps and block structure.

Logs one run per analysed model (tag `analysis.model_uri`; with several models they are nested
under this run, which also holds the cross-model heatmaps), and tags each model version with its
block metrics and the analysis run id.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from itertools import combinations
from pathlib import Path

import mlflow
import torch
from mlflow import MlflowClient

from analysis import blocks as block_detection
from analysis import registry
from analysis.artifacts import write_heatmap, write_json, write_matrix
from analysis.data import load_dataset
from analysis.model_cka import model_cka
from analysis.models import layer_names
from analysis.runtime import resolve_device
from entrypoints.common import log_params_once, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="", help="comma-separated models:/NAME/VERSION or models:/NAME@ALIAS")
    p.add_argument("--search", default="", help="registry filter, e.g. \"name='cifar10-resnet20-w1' and tags.data_fraction='1'\"")
    p.add_argument("--layers", default="all", choices=["all", "blocks"])
    p.add_argument("--num_examples", type=int, default=10_000, help="test examples analysed (0: all)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--passes", type=int, default=10)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0, help="picks the examples and the batch order")
    p.add_argument("--dataset", default="", help="default: the dataset the models were trained on")
    p.add_argument("--data_dir", default="")
    return p.parse_args(argv)


def model_uris(models: str, search: str) -> list[str]:
    uris = [u.strip() for u in models.split(",") if u.strip()]
    if search.strip():
        found = registry.search_versions(search)
        if not found:
            raise ValueError(f"search={search!r} matches no registered model version; check the filter in the MLflow UI")
        uris += [f"models:/{v.name}/{v.version}" for v in found]
    if not uris:
        raise ValueError("no models given; pass -P models=models:/NAME/VERSION[,...] or -P search=\"tags.depth='20'\"")
    return list(dict.fromkeys(uris))  # de-duplicated, in order


def main(args: argparse.Namespace) -> None:
    with mlflow.start_run() as run:
        log_params_once(vars(args))
        mlflow.set_tag("widedeep.kind", "analyze")
        device = resolve_device(args.device)
        loaded = [registry.load_model(uri, device) for uri in model_uris(args.models, args.search)]
        dataset = check_dataset(loaded, args.dataset)
        data = load_dataset(dataset, args.data_dir or None)
        if data.num_classes != loaded[0].config.num_classes:
            raise ValueError(f"dataset={dataset!r} has {data.num_classes} classes but the models predict {loaded[0].config.num_classes}")
        n = len(data.test_x) if args.num_examples <= 0 else min(args.num_examples, len(data.test_x))
        index = torch.sort(torch.randperm(len(data.test_x), generator=torch.Generator().manual_seed(args.seed))[:n]).values
        names = [layer_names(m.config, args.layers) for m in loaded]
        result = model_cka(
            [m.model for m in loaded], names, data.test_x[index], data.test_y[index],
            batch_size=args.batch_size, passes=args.passes, seed=args.seed, model_labels=[m.label for m in loaded],
        )
        mlflow.log_params({"analysed_examples": n, "dataset_analysed": dataset})
        mlflow.set_tag("analysis.models", ",".join(m.uri for m in loaded))
        common = {"num_examples": n, "batches": result.batches, "passes": args.passes, "batch_size": args.batch_size, "layers": args.layers}
        for i, m in enumerate(loaded):
            if len(loaded) == 1:
                log_model_analysis(m, names[i], result.within(i), result.accuracy[i], common, run.info.run_id)
            else:
                with mlflow.start_run(run_name=m.label, nested=True) as child:
                    log_model_analysis(m, names[i], result.within(i), result.accuracy[i], common, child.info.run_id)
        with tempfile.TemporaryDirectory() as tmp:
            for i, j in combinations(range(len(loaded)), 2):
                a, b = loaded[i], loaded[j]
                out = Path(tmp) / f"{a.label}__vs__{b.label}"
                write_matrix(out, "cka", result.cross(i, j), names[i], names[j])
                write_heatmap(out, "heatmap", result.cross(i, j), names[i], names[j], title=f"{a.label} (y) vs {b.label} (x)")
            if len(loaded) > 1:
                mlflow.log_artifacts(tmp, "cross")
        print(f"analysed {len(loaded)} model(s) on {n} {dataset} test images, {result.batches} batches: run {run.info.run_id}")


def check_dataset(loaded: list[registry.LoadedModel], requested: str) -> str:
    trained_on = {m.training.get("dataset", m.tags.get("dataset")) for m in loaded}
    if len(trained_on) > 1:
        raise ValueError(f"the models were trained on different datasets {sorted(map(str, trained_on))}; analyse them separately")
    dataset = trained_on.pop()
    if requested and requested != dataset:
        raise ValueError(f"dataset={requested!r} but the models were trained on {dataset!r}; leave dataset empty or pick matching models")
    if {m.config.num_classes for m in loaded} != {loaded[0].config.num_classes}:
        raise ValueError("the models have different numbers of classes; analyse them separately")
    return dataset


def log_model_analysis(m: registry.LoadedModel, names: list[str], matrix, accuracy: float, common: dict, run_id: str) -> None:
    """The within-model heatmap, matrix, blocks and metrics of one model, on the active run."""
    found = block_detection.find_blocks(matrix, names)
    metrics = {**block_detection.block_metrics(found, len(names)), "analysis_test_accuracy": accuracy}
    train_accuracy = m.tags.get("train_accuracy", "?")
    mlflow.set_tags({
        "analysis.model_uri": m.uri, "model_name": m.name, "model_version": m.version, "train_run_id": m.run_id or "",
        **{k: m.tags[k] for k in ("dataset", "depth", "width", "seed", "data_fraction", "epochs") if k in m.tags},
    })
    mlflow.log_metrics(metrics)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        write_matrix(out, "cka", matrix, names, names)
        write_heatmap(
            out, "heatmap", matrix, names, title=m.label,
            subtitle=f"test acc {accuracy:.3f} · train acc {train_accuracy} · {len(found)} block(s)",
            blocks=[(b.start, b.end) for b in found],
        )
        write_json(out / "summary.json", {
            "model_uri": m.uri, "train_run_id": m.run_id, "version_tags": m.tags, **common,
            "layer_names": names, "metrics": metrics, "blocks": [b.as_dict() for b in found],
        })
        mlflow.log_artifacts(tmp, "cka")
    client = MlflowClient()
    for key, value in {**metrics, "analysis_run_id": run_id}.items():
        client.set_model_version_tag(m.name, m.version, key, registry.tag_value(value))


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
