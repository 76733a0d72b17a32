"""`mlflow run . -e analyze`: layer-by-layer CKA of registered models, or of any PyTorch vision
model (torchvision, timm, a builder of your own, an MLflow pytorch-flavor model: README, "Your own
models"), block structure, and the analyses that explain it (PC1, linear probes, block deletion).

Logs one run per analysed model (tag `analysis.model_uri`; with several models they are nested
under this run, which also holds the cross-model heatmaps), and tags each model version with its
metrics and the analysis run id.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from analysis.config import ANALYSES, BATCHNORM_MODES, LAYER_SETS, MEASURES, PRECISIONS, PROBE_TRAIN, AnalysisOptions, parse_values
from analysis.stages.analyze import analyze_stage
from analysis.store.model_files import LoadedModel
from analysis.store.sources import load_source
from analysis.store.lookup import split_uris, uris_matching
from entrypoints.common import AUTO, Parser, add_data_dir, check_where, number, run_main, unless, whole_number


def parser() -> argparse.ArgumentParser:
    d = AnalysisOptions()
    p = Parser(description=__doc__)
    p.add_argument("--models", type=unless("none", ""), default="none", help="comma-separated models:/NAME/VERSION, models:/NAME@ALIAS, torchvision:ARCH, timm:ARCH or "
                        "python:MODULE:CALLABLE, each optionally ending ?KEY=VALUE&... (weights, input_size, mean, std, "
                        "the builder's arguments)")
    p.add_argument("--search", type=unless("none", ""), default="none", help="registry filter, e.g. \"name='cifar10-resnet20-w1' and tags.data_fraction='1'\"")
    p.add_argument("--analyses", default=",".join(d.analyses), help=f"comma list of {', '.join(ANALYSES)}")
    p.add_argument("--layers", default=d.layers,
                   help=f"{', '.join(LAYER_SETS)}, a comma list of name patterns (stage3.*.relu,logits), or list: "
                        "print each model's layer names and exit")
    p.add_argument("--num_examples", type=whole_number, default=d.num_examples, help="test examples analysed (0: all)")
    p.add_argument("--batch_size", type=whole_number, default=d.batch_size)
    p.add_argument("--passes", type=whole_number, default=d.passes)
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=whole_number, default=d.seed, help="picks the examples and the batch order")
    p.add_argument("--pc_iterations", type=whole_number, default=d.pc_iterations)
    p.add_argument("--probe_examples", type=whole_number, default=d.probe_examples, help="training examples per probe (0: all)")
    p.add_argument("--probe_pool", type=whole_number, default=d.probe_pool)
    p.add_argument("--probe_train", default=d.probe_train, help=f"{', '.join(PROBE_TRAIN)} (subset: the model's own)")
    p.add_argument("--precision", default=d.precision, choices=PRECISIONS,
                   help="activations: float32, or bf16 autocast on CUDA (faster; its error is in docs/performance.md)")
    p.add_argument("--dominant_top", type=whole_number, default=d.dominant_top, help="dominant examples per layer (analyses=dominant)")
    p.add_argument("--history", default="false", choices=["true", "false"],
                   help="also analyse the snapshots kept in training (train -P snapshot_every)")
    p.add_argument("--batchnorm", default=d.batchnorm, choices=BATCHNORM_MODES,
                   help="BatchNorm statistics: running (stored), batch (each analysed batch's own, stored ones untouched), "
                        "auto (running for the final model, batch for training snapshots)")
    p.add_argument("--measures", default=",".join(d.measures),
                   help=f"comma list of {', '.join(MEASURES)}: similarity measures beside the paper's linear_cka (always computed)")
    p.add_argument("--rbf_fraction", type=number, default=d.rbf_fraction, help="rbf_cka's bandwidth: this x the median distance")
    p.add_argument("--knn_k", type=whole_number, default=d.knn_k, help="mutual_knn's neighbours per example")
    p.add_argument("--dataset", type=AUTO, default="auto", help="auto: the dataset the models were trained on")
    add_data_dir(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def model_uris(models: str, search: str) -> list[str]:
    uris = split_uris(models) + (uris_matching(search, "search") if search.strip() else [])
    if not uris:
        raise ValueError("no models given; pass -P models=models:/NAME/VERSION[,...] or -P search=\"tags.depth='20'\"")
    return list(dict.fromkeys(uris))  # de-duplicated, in order


def print_layers(m: LoadedModel) -> None:
    """The layer sets of a model, and for a model from outside the project every layer that runs
    (what patterns match; NAME@K is the K-th call of a module run several times)."""
    sets = {"all": m.layer_names("all")}
    with contextlib.suppress(ValueError):  # a network without repeated blocks has no "blocks"
        sets["blocks"] = m.layer_names("blocks")
    for which, names in sets.items():
        print(f"{m.uri}: layers={which} ({len(names)}): {', '.join(names)}")
    if m.layers is not None:
        print(f"{m.uri}: every layer that runs, what patterns match ({len(m.layers.order)}): {', '.join(m.layers.order)}")
        functional = m.layers.functional(m.model)
        print(f"{m.uri}: functional operations, tapped when a pattern names them ({len(functional)}): {', '.join(functional)}")


def main(args: argparse.Namespace) -> None:
    options = AnalysisOptions(
        analyses=AnalysisOptions.parse_analyses(args.analyses), layers=args.layers, num_examples=args.num_examples,
        batch_size=args.batch_size, passes=args.passes, seed=args.seed, pc_iterations=args.pc_iterations,
        probe_examples=args.probe_examples, probe_pool=args.probe_pool, probe_train=args.probe_train,
        precision=args.precision, dominant_top=args.dominant_top, history=args.history == "true", batchnorm=args.batchnorm,
        measures=tuple(parse_values(args.measures, str, "measures")), rbf_fraction=args.rbf_fraction, knn_k=args.knn_k,
    )
    check_where(args.device, args.data_dir, args.dataset)
    uris = model_uris(args.models, args.search)
    if args.layers.strip() == "list":
        for uri in uris:
            print_layers(load_source(uri))
        return
    outcome = analyze_stage(uris, options, args.dataset, args.data_dir, args.device)
    print(f"analysed {len(uris)} model(s) on {outcome.joint.num_examples} test images "
          f"({', '.join(options.analyses)}): run {outcome.run_id}")


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(parse_args())))
