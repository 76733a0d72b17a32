"""Every analysis of `analyze`, for a list of registered models: what runs, in which order, and
the per-model report (numbers, matrices, figures) that the entry point logs.

Order, and what shares a forward pass:
1. pc: PC1 per layer of each model (pca.estimate_pc1: `pc_iterations` passes over the examples).
2. cka: the paper's reshuffled passes; each batch's single forward pass per model yields the
   Grams for CKA and, with pc, the PC1 projections for CKA without PC1 and of PC1 alone.
3. probes: one pass over the probe training examples, one over the analysed test examples.
4. deletion: one pass over the analysed test examples per deletable block.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import warnings
from itertools import combinations
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from . import blocks as block_detection
from . import plots
from .artifacts import write_heatmap, write_json, write_matrix
from .data import ImageData, indices_hash, subset_indices
from .deletion import deletion_accuracy
from .model_cka import ModelCKA, model_cka
from .models import layer_names
from .pca import estimate_pc1
from .probes import fit_probes, probe_accuracy, probe_layers
from .registry import LoadedModel, tag_value
from .tracking import start_run

ANALYSES = ("cka", "pc", "probes", "deletion")
PROBE_TRAIN = ("subset", "full", "both")
# Below this (clean) training accuracy a model has not fitted its training set, and an
# under-trained ResNet looks like one big block (PAPER.md's pitfalls; docs/cpu-study.md has a
# ResNet-110 that failed to train at lr 0.05: "blocks" over 73% of its layers, PC1 share 0.99).
FITS_TRAINING_SET = 0.9


@dataclasses.dataclass(frozen=True)
class AnalysisOptions:
    analyses: tuple[str, ...] = ("cka", "pc")
    layers: str = "all"
    num_examples: int = 10_000
    batch_size: int = 256
    passes: int = 10
    seed: int = 0
    pc_iterations: int = 6
    probe_examples: int = 10_000
    probe_pool: int = 2
    probe_train: str = "subset"

    def __post_init__(self) -> None:
        unknown = set(self.analyses) - set(ANALYSES)
        if unknown or not self.analyses:
            raise ValueError(f"analyses={','.join(self.analyses)!r} has unknown names {sorted(unknown)}; use a comma list of {', '.join(ANALYSES)}")
        if self.layers not in ("all", "blocks"):
            raise ValueError(f"layers={self.layers!r} is not one of all, blocks")
        if self.pc_iterations < 1:
            raise ValueError(f"pc_iterations={self.pc_iterations} must be >= 1")
        if self.probe_pool < 1:
            raise ValueError(f"probe_pool={self.probe_pool} must be >= 1 (1: no pooling, the paper: 2)")
        if self.probe_train not in PROBE_TRAIN:
            raise ValueError(f"probe_train={self.probe_train!r} is not one of {', '.join(PROBE_TRAIN)}")

    @classmethod
    def parse_analyses(cls, text: str) -> tuple[str, ...]:
        """'pc,probes' -> ('cka', 'pc', 'probes'): CKA always runs, the others need its blocks."""
        names = [a.strip() for a in text.split(",") if a.strip()]
        return tuple(dict.fromkeys(["cka", *names]))


@dataclasses.dataclass
class ModelReport:
    model: LoadedModel
    names: list[str]
    cka: np.ndarray
    blocks: list[block_detection.Block]
    metrics: dict[str, float]
    cka_without_pc1: np.ndarray | None = None
    cka_pc1_only: np.ndarray | None = None
    pc1_share: np.ndarray | None = None
    pc1_residual: np.ndarray | None = None
    probe_names: list[str] | None = None
    probe_accuracy: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # train set -> per layer
    deletion: dict[str, float] | None = None  # block -> accuracy with it deleted

    def write(self, directory: Path, common: dict) -> None:
        """Every artifact of this model's analysis under `directory` (logged as is)."""
        m, names = self.model, self.names
        spans = [(b.start, b.end) for b in self.blocks]
        train_acc = m.tags.get("train_accuracy", "?")
        subtitle = f"test acc {self.metrics['analysis_test_accuracy']:.3f} · train acc {train_acc} · {len(self.blocks)} block(s)"
        if self.metrics.get("fits_training_set") == 0:
            subtitle += " · UNDER-TRAINED"
        write_matrix(directory, "cka", self.cka, names, names)
        write_heatmap(directory, "heatmap", self.cka, names, title=m.label, subtitle=subtitle, blocks=spans)
        summary = {
            "model_uri": m.uri, "train_run_id": m.run_id, "version_tags": m.tags, **common, "layer_names": names,
            "metrics": self.metrics, "blocks": [b.as_dict() for b in self.blocks],
        }
        in_block = block_detection.in_block_mask(self.blocks, len(names))
        if self.pc1_share is not None:
            write_matrix(directory, "cka_without_pc1", self.cka_without_pc1, names, names)
            write_matrix(directory, "cka_pc1_only", self.cka_pc1_only, names, names)
            fig = plots.heatmap_pair(self.cka, self.cka_without_pc1, names, ("CKA", "CKA with each layer's PC1 removed"),
                                     f"{m.label}: {subtitle}", blocks=spans)
            _save(fig, directory / "heatmap_without_pc1.png")
            fig = plots.curves(names, {"PC1 share of variance": self.pc1_share}, in_block, "share of variance",
                               f"{m.label}: first principal component per layer")
            _save(fig, directory / "pc1_share.png")
            summary["pc1_share"] = dict(zip(names, self.pc1_share.tolist()))
            summary["pc1_residual_max"] = float(np.max(self.pc1_residual))
        if self.probe_accuracy:
            outputs = [n for n in self.probe_names if n.endswith(".relu")]
            mask = block_detection.layers_in_blocks(self.blocks, names, outputs)
            series = {}
            for train_set, acc in self.probe_accuracy.items():
                by_layer = dict(zip(self.probe_names, acc))
                series[f"block output ({train_set} train)"] = [by_layer[o] for o in outputs]
                series[f"BN before add ({train_set} train)"] = [by_layer[o.replace(".relu", ".bn2")] for o in outputs]
            fig = plots.curves([o.removesuffix(".relu") for o in outputs], series, mask, "test accuracy",
                               f"{m.label}: linear probes (pool {common.get('probe_pool', 2)}x)",
                               hline=(self.metrics["analysis_test_accuracy"], "model"))
            _save(fig, directory / "probes.png")
            summary["probe_accuracy"] = {k: dict(zip(self.probe_names, v.tolist())) for k, v in self.probe_accuracy.items()}
        if self.deletion is not None:
            deleted = list(self.deletion)
            mask = block_detection.layers_in_blocks(self.blocks, names, [f"{b}.relu" for b in deleted])
            fig = plots.curves(deleted, {"accuracy with the block deleted": list(self.deletion.values())}, mask,
                               "test accuracy", f"{m.label}: deleting one residual block at a time",
                               hline=(self.metrics["analysis_test_accuracy"], "intact model"))
            _save(fig, directory / "deletion.png")
            summary["deletion_accuracy"] = self.deletion
        write_json(directory / "summary.json", summary)


def _save(fig, path: Path) -> None:
    fig.savefig(path)
    plots.close(fig)


def _mean(values: np.ndarray) -> float | None:
    return float(np.mean(values)) if len(values) else None


def explanation_metrics(report: ModelReport) -> dict[str, float]:
    """The numbers that test the paper's explanation of the block (None-valued ones are dropped)."""
    names, found = report.names, report.blocks
    out: dict[str, float | None] = {}
    largest = max(found, key=lambda b: b.length, default=None)
    if report.pc1_share is not None:
        mask = block_detection.in_block_mask(found, len(names))
        out["pc1_share_in_block"] = _mean(report.pc1_share[mask])
        out["pc1_share_outside"] = _mean(report.pc1_share[~mask])
        if largest:
            inner = report.cka_without_pc1[largest.start : largest.end + 1, largest.start : largest.end + 1]
            out["block_mean_cka_without_pc1"] = float((inner.sum() - np.trace(inner)) / (inner.size - len(inner)))
    if report.probe_accuracy and largest:
        acc = dict(zip(report.probe_names, next(iter(report.probe_accuracy.values()))))
        inside = [n for n in report.probe_names if n.endswith(".relu") and n in names[largest.start : largest.end + 1]]
        if len(inside) >= 2:
            out["probe_gain_in_block"] = acc[inside[-1]] - acc[inside[0]]
    if report.deletion is not None:
        base = report.metrics["analysis_test_accuracy"]
        drops = {b: base - a for b, a in report.deletion.items()}
        mask = block_detection.layers_in_blocks(found, names, [f"{b}.relu" for b in drops])
        values = np.array(list(drops.values()))
        out["deletion_drop_in_block"] = _mean(values[mask])
        out["deletion_drop_outside"] = _mean(values[~mask])
    return {k: v for k, v in out.items() if v is not None and math.isfinite(v)}


def training_fit(m: LoadedModel) -> float | None:
    """1.0 if the model fits its training set (clean accuracy >= FITS_TRAINING_SET), 0.0 if not
    (with a warning that names it), None when the version records no training accuracy."""
    if "train_accuracy" not in m.tags:
        return None
    accuracy = float(m.tags["train_accuracy"])
    if accuracy >= FITS_TRAINING_SET:
        return 1.0
    warnings.warn(
        f"{m.label} fits only {accuracy:.1%} of its training set (under {FITS_TRAINING_SET:.0%}): an under-trained "
        "ResNet looks like one big block, so its block metrics mean little; train it longer or with a lower lr",
        stacklevel=2,
    )
    return 0.0


def check_dataset(loaded: Sequence[LoadedModel], requested: str = "") -> str:
    """The one dataset all `loaded` models were trained on (and `requested`, if given)."""
    trained_on = {m.training.get("dataset", m.tags.get("dataset")) for m in loaded}
    if len(trained_on) > 1:
        raise ValueError(f"the models were trained on different datasets {sorted(map(str, trained_on))}; analyse them separately")
    dataset = trained_on.pop()
    if requested and requested != dataset:
        raise ValueError(f"dataset={requested!r} but the models were trained on {dataset!r}; leave dataset empty or pick matching models")
    if {m.config.num_classes for m in loaded} != {loaded[0].config.num_classes}:
        raise ValueError("the models have different numbers of classes; analyse them separately")
    return dataset


def analyze_models(
    models: Sequence[LoadedModel], data: ImageData, options: AnalysisOptions, progress: bool | None = None
) -> tuple[list[ModelReport], ModelCKA]:
    """Run the chosen analyses on every model. Returns one report per model and the joint CKA
    (whose cross blocks compare the models pairwise)."""
    if data.num_classes != models[0].config.num_classes:
        raise ValueError(f"dataset {data.name!r} has {data.num_classes} classes but the models predict {models[0].config.num_classes}")
    n = len(data.test_x) if options.num_examples <= 0 else min(options.num_examples, len(data.test_x))
    index = torch.sort(torch.randperm(len(data.test_x), generator=torch.Generator().manual_seed(options.seed))[:n]).values
    images, targets = data.test_x[index], data.test_y[index]
    names = [layer_names(m.config, options.layers) for m in models]

    pcs = None
    if "pc" in options.analyses:
        pcs = [estimate_pc1(m.model, names[i], images, options.batch_size, options.pc_iterations, seed=options.seed,
                            progress=progress) for i, m in enumerate(models)]
    joint = model_cka(
        [m.model for m in models], names, images, targets, batch_size=options.batch_size, passes=options.passes,
        seed=options.seed, model_labels=[m.label for m in models],
        directions=None if pcs is None else [pc.directions for pc in pcs], progress=progress,
    )
    reports = []
    for i, m in enumerate(models):
        found = block_detection.find_blocks(joint.within(i), names[i])
        report = ModelReport(
            model=m, names=names[i], cka=joint.within(i), blocks=found,
            metrics={**block_detection.block_metrics(found, len(names[i])), "analysis_test_accuracy": joint.accuracy[i]},
        )
        if (fit := training_fit(m)) is not None:
            report.metrics["fits_training_set"] = fit
        if pcs is not None:
            report.cka_without_pc1 = joint.within(i, "without_pc1")
            report.cka_pc1_only = joint.within(i, "pc1_only")
            report.pc1_share, report.pc1_residual = pcs[i].share, pcs[i].residual
        if "probes" in options.analyses:
            report.probe_names = probe_layers(m.config)
            for train_set in (("subset", "full") if options.probe_train == "both" else (options.probe_train,)):
                x, y = probe_training_set(m, data, train_set, options.probe_examples)
                probes = fit_probes(m.model, report.probe_names, x, y, data.num_classes, pool=options.probe_pool, progress=progress)
                report.probe_accuracy[train_set] = probe_accuracy(m.model, probes, images, targets, progress=progress)
        if "deletion" in options.analyses:
            report.deletion = deletion_accuracy(m.model, m.config, images, targets)
        report.metrics.update(explanation_metrics(report))
        reports.append(report)
    return reports, joint


def log_analysis(reports: Sequence[ModelReport], joint: ModelCKA, options: AnalysisOptions, run_id: str) -> None:
    """Log an analysis into the active run: one model on the run itself, several as nested runs
    plus the cross-model heatmaps under `cross/`; each version is tagged with its metrics."""
    import mlflow

    common = {"num_examples": joint.num_examples, "batches": joint.batches, "passes": options.passes,
              "batch_size": options.batch_size, "layers": options.layers, "analyses": list(options.analyses),
              "probe_pool": options.probe_pool}
    mlflow.set_tag("analysis.models", ",".join(r.model.uri for r in reports))
    mlflow.log_param("analysed_examples", joint.num_examples)
    for report in reports:
        if len(reports) == 1:
            _log_report(report, common, run_id)
        else:
            with start_run(run_name=report.model.label, nested=True) as child:
                _log_report(report, common, child.info.run_id)
    if len(reports) > 1:
        with tempfile.TemporaryDirectory() as tmp:
            for i, j in combinations(range(len(reports)), 2):
                a, b = reports[i], reports[j]
                out = Path(tmp) / f"{a.model.label}__vs__{b.model.label}"
                write_matrix(out, "cka", joint.cross(i, j), a.names, b.names)
                write_heatmap(out, "heatmap", joint.cross(i, j), a.names, b.names, title=f"{a.model.label} (y) vs {b.model.label} (x)")
            mlflow.log_artifacts(tmp, "cross")


def _log_report(report: ModelReport, common: dict, run_id: str) -> None:
    import mlflow
    from mlflow import MlflowClient

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
        client.set_model_version_tag(m.name, m.version, key, tag_value(value))


def probe_training_set(m: LoadedModel, data: ImageData, which: str, limit: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own training subset ('subset') or the whole training set ('full'), thinned to
    at most `limit` examples (0: no limit) by a fixed stride so every class stays represented."""
    if which == "full":
        index = torch.arange(len(data.train_x))
    else:
        fraction = float(m.training.get("data_fraction", m.tags.get("data_fraction", 1)))
        index = subset_indices(data.train_y, fraction, int(m.training.get("subset_seed", 0)))
        expected = m.tags.get("subset_hash")
        if expected and indices_hash(index) != expected:
            raise ValueError(f"{m.uri}: its training subset ({expected}) is not in this copy of the data; "
                             "point data_dir at the data it was trained on, or use probe_train=full")
    if limit > 0 and len(index) > limit:
        index = index[:: math.ceil(len(index) / limit)]
    return data.train_x[index], data.train_y[index]

