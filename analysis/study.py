"""A whole study from one command: sweep the grid, analyse every model, compare, contrast
predictions, and write the report. Every stage is resumable: trained cells are registered and
skipped, analysed groups are tagged and skipped, the cheap stages are redone.

Presets (every setting of a study in one place):
- paper: the paper's grid and 300-epoch recipe, for GPUs (days of GPU time).
- cpu:   chosen by experiment on this project's 2-core CPU (docs/cpu-study.md): a deep ResNet on
         2% of CIFAR-10 (over-parameterised relative to its data) against a shallow control.
- smoke: tiny, for tests (a few minutes on 2 cores).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import mlflow
import pandas as pd
from mlflow import MlflowClient

from . import queries, registry, sweep
from .comparison import write_comparison
from .config import TrainConfig
from .data import load_dataset
from .model_predictions import compare_registered, summary_metrics, write_prediction_files
from .pipeline import AnalysisOptions, analyze_models, log_analysis
from .runtime import resolve_device
from .train_run import registered_version
from .tracking import start_run

ANALYSED_TAG = "study_analysis"


@dataclasses.dataclass(frozen=True)
class StudyPreset:
    name: str
    grid: sweep.Grid
    train: dict  # TrainConfig fields shared by every cell
    analysis: AnalysisOptions
    contrast: tuple[tuple[int, float], tuple[int, float]]  # (depth, width) of group A and group B
    description: str

    def base_config(self, dataset: str, data_dir: str, device: str) -> TrainConfig:
        return TrainConfig(depth=self.grid.depths[0], width=self.grid.widths[0], data_fraction=self.grid.data_fractions[0],
                           dataset=dataset, data_dir=data_dir, device=device, **self.train)


PRESETS = {
    "smoke": StudyPreset(
        name="smoke",
        grid=sweep.Grid(depths=(8,), widths=(0.25, 0.5), seeds=(0, 1), data_fractions=(1.0,)),
        train={"epochs": 2, "batch_size": 50, "lr": 0.05},
        analysis=AnalysisOptions(analyses=("cka", "pc", "probes", "deletion"), num_examples=60, batch_size=20, passes=1,
                                 pc_iterations=2, probe_examples=200),
        contrast=((8, 0.25), (8, 0.5)),
        description="tiny models on whatever data is given, to test the pipeline end to end",
    ),
    "cpu": StudyPreset(
        name="cpu",
        grid=sweep.Grid(depths=(20, 56), widths=(1.0,), seeds=(0, 1), data_fractions=(0.02,)),
        train={"epochs": 80, "lr": 0.05, "eval_every": 80},
        analysis=AnalysisOptions(analyses=("cka", "pc", "probes", "deletion"), num_examples=1000, batch_size=250, passes=2,
                                 pc_iterations=4, probe_examples=1000),
        contrast=((20, 1.0), (56, 1.0)),
        description="ResNet-56 (deep) against ResNet-20 (control), width 1, on 2% of CIFAR-10, two seeds each",
    ),
    "paper": StudyPreset(
        name="paper",
        grid=sweep.Grid(depths=(20, 56, 110), widths=(1.0, 2.0, 4.0, 8.0, 10.0), seeds=tuple(range(10)),
                        data_fractions=(1.0, 0.5, 0.25, 0.0625)),
        train={"epochs": 300},
        analysis=AnalysisOptions(analyses=("cka", "pc", "probes", "deletion")),
        contrast=((110, 1.0), (20, 10.0)),
        description="the paper's CIFAR-10 grid and recipe (300 epochs, 10 seeds); GPU days",
    ),
}


def preset(name: str) -> StudyPreset:
    if name not in PRESETS:
        raise ValueError(f"preset={name!r} is unknown; use one of {', '.join(PRESETS)}")
    return PRESETS[name]


def analysis_key(p: StudyPreset) -> str:
    return hashlib.sha256(json.dumps(dataclasses.asdict(p.analysis), sort_keys=True).encode()).hexdigest()[:12]


def run_study(p: StudyPreset, dataset: str, data_dir: str, device: str, storage_url: str, out: Path,
              log: Callable[[str], None] = print) -> dict:
    """Run (or resume) the study inside the active MLflow run; write the report under `out`."""
    run = mlflow.active_run()
    timings: dict[str, float] = {}
    base = p.base_config(dataset, data_dir, device)

    started = time.perf_counter()
    log(f"[1/5] sweep: {p.grid.size} cells")
    study = sweep.grid_study(storage_url, f"study-{p.name}-{sweep.default_study_name(p.grid, base)}", p.grid)
    sweep.run_grid(study, p.grid, base, run.info.run_id)
    versions = {}
    for depth in p.grid.depths:
        for width in p.grid.widths:
            for seed in p.grid.seeds:
                for fraction in p.grid.data_fractions:
                    cfg = dataclasses.replace(base, depth=depth, width=width, seed=seed, data_fraction=fraction)
                    v = registered_version(cfg, run.info.experiment_id)
                    if v is None:
                        raise RuntimeError(f"cell depth={depth} width={width} seed={seed} fraction={fraction} was not trained; rerun the study")
                    versions[(depth, width, seed, fraction)] = v
    timings["sweep"] = time.perf_counter() - started

    started = time.perf_counter()
    key = analysis_key(p)
    data = load_dataset(dataset, data_dir or None)
    for fraction in p.grid.data_fractions:
        group = [v for (d, w, s, f), v in versions.items() if f == fraction]
        if all(MlflowClient().get_model_version(v.name, v.version).tags.get(ANALYSED_TAG) == key for v in group):
            log(f"[2/5] analysis of data fraction {fraction:g}: done earlier, skipped")
            continue
        log(f"[2/5] analysis of data fraction {fraction:g}: {len(group)} models")
        loaded = [registry.load_model(f"models:/{v.name}/{v.version}", resolve_device(device)) for v in group]
        with start_run(run_name=f"analysis-fraction-{fraction:g}", nested=True) as child:
            mlflow.set_tag("widedeep.kind", "analyze")
            reports, joint = analyze_models(loaded, data, p.analysis)
            log_analysis(reports, joint, p.analysis, child.info.run_id)
        for v in group:  # only once the whole group is logged
            MlflowClient().set_model_version_tag(v.name, v.version, ANALYSED_TAG, key)
    timings["analysis"] = time.perf_counter() - started

    started = time.perf_counter()
    log("[3/5] compare")
    ids = {(v.name, str(v.version)) for v in versions.values()}
    rows = queries.analysed_models_api()
    rows = rows[[(n, str(ver)) in ids for n, ver in zip(rows["model_name"], rows["model_version"])]].reset_index(drop=True)
    table = write_comparison(rows, out / "comparison")
    timings["compare"] = time.perf_counter() - started

    started = time.perf_counter()
    log("[4/5] predictions")
    (da, wa), (db, wb) = p.contrast
    fraction = min(p.grid.data_fractions)
    uri = lambda v: f"models:/{v.name}/{v.version}"  # noqa: E731
    a = [uri(versions[(da, wa, s, fraction)]) for s in p.grid.seeds]
    b = [uri(versions[(db, wb, s, fraction)]) for s in p.grid.seeds]
    comparison = compare_registered(a, b, data, resolve_device(device), run.info.run_id, out / "logits")
    write_prediction_files(comparison, a, b, data, out / "predictions")
    prediction_metrics = summary_metrics(comparison, len(a))
    timings["predictions"] = time.perf_counter() - started

    log("[5/5] report")
    return {"rows": rows, "table": table, "predictions": prediction_metrics, "contrast": (a, b), "timings": timings}


def study_rows_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The per-model numbers the report shows, one row per model."""
    cols = ["depth", "width", "data_fraction", "seed", "train_accuracy", "test_accuracy", "block_count", "block_largest_frac",
            "block_mean_cka", "block_mean_cka_without_pc1", "pc1_share_in_block", "pc1_share_outside", "probe_gain_in_block",
            "deletion_drop_in_block", "deletion_drop_outside"]
    return rows[[c for c in cols if c in rows]].sort_values(["data_fraction", "depth", "width", "seed"]).reset_index(drop=True)
