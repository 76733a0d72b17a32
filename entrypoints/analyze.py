"""`mlflow run . -e analyze`: layer-by-layer CKA of registered models, block structure, and the
analyses that explain it (PC1, linear probes, block deletion).

Logs one run per analysed model (tag `analysis.model_uri`; with several models they are nested
under this run, which also holds the cross-model heatmaps), and tags each model version with its
metrics and the analysis run id.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from itertools import combinations
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from analysis import registry
from analysis.artifacts import write_heatmap, write_matrix
from analysis.data import load_dataset
from analysis.pipeline import AnalysisOptions, ModelReport, analyze_models
from analysis.queries import search_versions
from analysis.runtime import resolve_device
from entrypoints.common import log_params_once, run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = AnalysisOptions()
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--models", default="", help="comma-separated models:/NAME/VERSION or models:/NAME@ALIAS")
    p.add_argument("--search", default="", help="registry filter, e.g. \"name='cifar10-resnet20-w1' and tags.data_fraction='1'\"")
    p.add_argument("--analyses", default=",".join(d.analyses), help="comma list of cka, pc, probes, deletion")
    p.add_argument("--layers", default=d.layers, choices=["all", "blocks"])
    p.add_argument("--num_examples", type=int, default=d.num_examples, help="test examples analysed (0: all)")
    p.add_argument("--batch_size", type=int, default=d.batch_size)
    p.add_argument("--passes", type=int, default=d.passes)
    p.add_argument("--seed", type=int, default=d.seed, help="picks the examples and the batch order")
    p.add_argument("--pc_iterations", type=int, default=d.pc_iterations)
    p.add_argument("--probe_examples", type=int, default=d.probe_examples, help="training examples per probe (0: all)")
    p.add_argument("--probe_pool", type=int, default=d.probe_pool)
    p.add_argument("--probe_train", default=d.probe_train, help="subset (the model's own), full, or both")
    p.add_argument("--device", default="auto")
    p.add_argument("--dataset", default="", help="default: the dataset the models were trained on")
    p.add_argument("--data_dir", default="")
    return p.parse_args(argv)


def model_uris(models: str, search: str) -> list[str]:
    uris = [u.strip() for u in models.split(",") if u.strip()]
    if search.strip():
        found = search_versions(search)
        if not found:
            raise ValueError(f"search={search!r} matches no registered model version; check the filter in the MLflow UI")
        uris += [f"models:/{v.name}/{v.version}" for v in found]
    if not uris:
        raise ValueError("no models given; pass -P models=models:/NAME/VERSION[,...] or -P search=\"tags.depth='20'\"")
    return list(dict.fromkeys(uris))  # de-duplicated, in order


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


def main(args: argparse.Namespace) -> None:
    with mlflow.start_run() as run:
        log_params_once(vars(args))
        mlflow.set_tag("widedeep.kind", "analyze")
        options = AnalysisOptions(
            analyses=AnalysisOptions.parse_analyses(args.analyses), layers=args.layers, num_examples=args.num_examples,
            batch_size=args.batch_size, passes=args.passes, seed=args.seed, pc_iterations=args.pc_iterations,
            probe_examples=args.probe_examples, probe_pool=args.probe_pool, probe_train=args.probe_train,
        )
        device = resolve_device(args.device)
        loaded = [registry.load_model(uri, device) for uri in model_uris(args.models, args.search)]
        dataset = check_dataset(loaded, args.dataset)
        data = load_dataset(dataset, args.data_dir or None)
        if data.num_classes != loaded[0].config.num_classes:
            raise ValueError(f"dataset={dataset!r} has {data.num_classes} classes but the models predict {loaded[0].config.num_classes}")
        mlflow.set_tag("analysis.models", ",".join(m.uri for m in loaded))

        reports, joint = analyze_models(loaded, data, options)

        common = {"num_examples": len(data.test_x) if options.num_examples <= 0 else min(options.num_examples, len(data.test_x)),
                  "batches": joint.batches, "passes": options.passes, "batch_size": options.batch_size,
                  "layers": options.layers, "analyses": list(options.analyses), "probe_pool": options.probe_pool}
        mlflow.log_params({"analysed_examples": common["num_examples"], "dataset_analysed": dataset})
        for report in reports:
            if len(reports) == 1:
                log_report(report, common, run.info.run_id)
            else:
                with mlflow.start_run(run_name=report.model.label, nested=True) as child:
                    log_report(report, common, child.info.run_id)
        with tempfile.TemporaryDirectory() as tmp:
            for i, j in combinations(range(len(loaded)), 2):
                a, b = loaded[i], loaded[j]
                out = Path(tmp) / f"{a.label}__vs__{b.label}"
                write_matrix(out, "cka", joint.cross(i, j), reports[i].names, reports[j].names)
                write_heatmap(out, "heatmap", joint.cross(i, j), reports[i].names, reports[j].names, title=f"{a.label} (y) vs {b.label} (x)")
            if len(loaded) > 1:
                mlflow.log_artifacts(tmp, "cross")
        print(f"analysed {len(loaded)} model(s) on {common['num_examples']} {dataset} test images "
              f"({', '.join(options.analyses)}): run {run.info.run_id}")


def log_report(report: ModelReport, common: dict, run_id: str) -> None:
    """One model's analysis on the active run, and its metrics as tags on the model version."""
    m = report.model
    mlflow.set_tags({
        "analysis.model_uri": m.uri, "model_name": m.name, "model_version": m.version, "train_run_id": m.run_id or "",
        **{k: m.tags[k] for k in ("dataset", "depth", "width", "seed", "data_fraction", "epochs", "train_accuracy") if k in m.tags},
    })
    mlflow.log_metrics(report.metrics)
    with tempfile.TemporaryDirectory() as tmp:
        report.write(Path(tmp), common)
        mlflow.log_artifacts(tmp, "cka")
    client = MlflowClient()
    for key, value in {**report.metrics, "analysis_run_id": run_id}.items():
        client.set_model_version_tag(m.name, m.version, key, registry.tag_value(value))


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
