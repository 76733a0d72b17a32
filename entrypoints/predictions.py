"""`mlflow run . -e predictions`: do two groups of models (e.g. wide and deep, every seed of
each; or this project's ResNets against a torchvision network) make different errors, beyond the
variation between seeds of one architecture?

A group is a registry filter or comma-separated model sources, as `analyze` takes them. Each
model's test-set logits are computed, logged as an artifact and, for a registered version,
recorded on it (tag `test_logits`) and reused by later comparisons.
"""

from __future__ import annotations

import argparse
import sys

from analysis.stages.predictions import predictions_stage
from entrypoints.common import AUTO, Parser, add_data_dir, check_where, number, run_main, whole_number


def parser() -> argparse.ArgumentParser:
    p = Parser(description=__doc__)
    p.add_argument("--group_a", required=True, help="registry filter (\"name='cifar10-resnet20-w4'\") or comma-separated "
                   "models:/NAME/VERSION, torchvision:ARCH, timm:ARCH or python:MODULE:CALLABLE sources")
    p.add_argument("--group_b", required=True)
    p.add_argument("--alpha", type=number, default=0.05, help="false discovery rate for per-class tests")
    p.add_argument("--permutations", type=whole_number, default=9999)
    p.add_argument("--device", default="auto")
    p.add_argument("--dataset", type=AUTO, default="auto", help="auto: the dataset this project's models were trained on "
                   "(name it when every model is from outside the project)")
    add_data_dir(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parser().parse_args(argv)


def main(args: argparse.Namespace) -> None:
    check_where(args.device, args.data_dir, args.dataset)
    outcome = predictions_stage(args.group_a, args.group_b, args.alpha, args.permutations, args.device, args.data_dir,
                                dataset=args.dataset)
    m = outcome.metrics
    print(f"cross-group disagreement {m['cross_disagreement']:.4f} vs within {m['within_disagreement']:.4f} "
          f"(p = {m['disagreement_p_value']:.3g}); {int(m['n_significant_classes'])} class(es) differ: run {outcome.run_id}")


if __name__ == "__main__":
    sys.exit(run_main(lambda: main(parse_args())))
