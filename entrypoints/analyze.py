"""`mlflow run . -e analyze`: layer-by-layer CKA of registered models, block structure, and the
analyses that explain it (PC1, linear probes, block deletion).

Logs one run per analysed model (tag `analysis.model_uri`; with several models they are nested
under this run, which also holds the cross-model heatmaps), and tags each model version with its
metrics and the analysis run id.
"""

from __future__ import annotations

import argparse
import sys

import mlflow

from analysis import registry
from analysis.data import load_dataset
from analysis.pipeline import AnalysisOptions, analyze_models, check_dataset, log_analysis
from analysis.runtime import resolve_device
from analysis.tracking import start_run
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
    uris = registry.split_uris(models) + (registry.uris_matching(search, "search") if search.strip() else [])
    if not uris:
        raise ValueError("no models given; pass -P models=models:/NAME/VERSION[,...] or -P search=\"tags.depth='20'\"")
    return list(dict.fromkeys(uris))  # de-duplicated, in order


def main(args: argparse.Namespace) -> None:
    with start_run() as run:
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

        reports, joint = analyze_models(loaded, data, options)
        log_analysis(reports, joint, options, run.info.run_id)
        print(f"analysed {len(loaded)} model(s) on {joint.num_examples} {dataset} test images "
              f"({', '.join(options.analyses)}): run {run.info.run_id}")


if __name__ == "__main__":
    args = parse_args()
    sys.exit(run_main(lambda: main(args)))
