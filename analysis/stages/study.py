"""The study stage: from data to the paper's figures in one run. It calls the same stages as the
single commands, nested under the study's run, so a study leaves exactly the runs they leave:
a sweep (with one train run per cell), an analyze run per data fraction (one child per model),
a compare run and a predictions run; then it writes the report (report.py) and logs it.

Resumable: trained cells are registered and skipped by the sweep; a group of versions analysed
with the same settings is tagged (contract.STUDY_ANALYSED) and skipped; the cheap stages are redone.
Presets live in analysis/config.py (STUDY_PRESETS).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from pathlib import Path
from typing import Callable

import mlflow
from mlflow import MlflowClient

from ..config import StudyPreset
from ..report import StudyResults, verdict_summary, write_report
from ..store import contract as c
from ..store.studies import redact
from ..store.tracking import describe, stage_run
from ..training import auto_pack_size
from .analyze import analyze_stage
from .compare import compare_stage
from .predictions import predictions_stage
from .sweep import default_study_name, sweep_stage
from .train import registered_version

__all__ = ["study_stage", "analysis_key"]


def analysis_key(p: StudyPreset) -> str:
    """A hash of the preset's analysis settings: versions analysed with them are skipped."""
    return hashlib.sha256(json.dumps(dataclasses.asdict(p.analysis), sort_keys=True).encode()).hexdigest()[:12]


def study_stage(p: StudyPreset, dataset: str, data_dir: str, device: str, storage_url: str, out: Path,
                log: Callable[[str], None] = print) -> Path:
    """Run (or resume) the study in a run of kind study; write the report under `out` and log it.
    Returns the report's path."""
    params = {"preset": p.name, "dataset": dataset, "data_dir": data_dir, "device": device, "out": str(out)}
    with stage_run("study", f"study-{p.name}", params) as run:
        mlflow.set_tags({c.STUDY_PRESET: p.name, c.SWEEP_STORAGE: redact(storage_url)})
        timings: dict[str, float] = {}
        started = time.perf_counter()
        base = p.base_config(dataset, data_dir, device)
        cells = p.cells()
        log(f"[1/5] sweep: {len(cells)} cells" + (f" in {len(p.grids)} series" if p.series else ""))
        for grid in p.grids:
            pack = p.pack or auto_pack_size(grid, base, p.workers)
            sweep_stage("grid", grid, base, storage_url, f"study-{p.name}-{default_study_name(grid, base, pack)}", p.workers,
                        pack=pack)
        versions = {}
        for cell in cells:
            v = registered_version(dataclasses.replace(base, **cell), run.info.experiment_id)
            if v is None:
                raise RuntimeError(f"cell {cell} was not trained; rerun the study")
            versions[tuple(cell.values())] = v
        timings["sweep"] = time.perf_counter() - started

        started = time.perf_counter()
        key = analysis_key(p)
        client = MlflowClient()
        for fraction in p.data_fractions:
            group = [v for (_, _, _, f), v in versions.items() if f == fraction]
            if all(client.get_model_version(v.name, v.version).tags.get(c.STUDY_ANALYSED) == key for v in group):
                log(f"[2/5] analysis of data fraction {fraction:g}: done earlier, skipped")
                continue
            log(f"[2/5] analysis of data fraction {fraction:g}: {len(group)} models")
            analyze_stage([c.model_uri(v.name, v.version) for v in group], p.analysis, dataset, data_dir, device,
                          run_name=f"analyze-fraction-{fraction:g}")
            for v in group:  # only once the whole group is logged
                client.set_model_version_tag(v.name, v.version, c.STUDY_ANALYSED, key)
        timings["analysis"] = time.perf_counter() - started

        started = time.perf_counter()
        log("[3/5] compare")
        compared = compare_stage(versions=[(v.name, str(v.version)) for v in versions.values()])
        timings["compare"] = time.perf_counter() - started

        started = time.perf_counter()
        log("[4/5] predictions")
        (da, wa), (db, wb) = p.contrast
        fraction = min(p.data_fractions)

        def seeds_of(depth: int, width: float) -> str:
            return ",".join(c.model_uri(v.name, v.version) for (d, w, _, f), v in versions.items()
                            if (d, w, f) == (depth, width, fraction))

        predicted = predictions_stage(seeds_of(da, wa), seeds_of(db, wb), device=device, data_dir=data_dir)
        timings["predictions"] = time.perf_counter() - started

        log("[5/5] report")
        results = StudyResults(rows=compared.rows, compare_run_id=compared.run_id, predictions_run_id=predicted.run_id,
                               group_a=predicted.group_a, group_b=predicted.group_b, predictions=predicted.metrics,
                               timings=timings)
        report, judged = write_report(p, results, out, run.info.run_id)
        describe(f"Study preset {p.name} ({p.description}): {len(versions)} models trained, analysed, compared and "
                 f"their predictions contrasted; report {c.REPORT_DIR}/{c.REPORT_FILE}. Verdicts on the paper's claims: "
                 f"{verdict_summary(judged)}.")
        mlflow.log_metrics({f"stage_seconds_{k}": v for k, v in timings.items()})
        mlflow.log_metrics({f"predictions_{k}": v for k, v in predicted.metrics.items()})
        mlflow.log_artifacts(str(report.parent), c.REPORT_DIR)
    return report
