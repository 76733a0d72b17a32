"""The study report: one self-contained HTML file (figures embedded), one section per claim of the
paper, each with the claim it tests, the measured numbers and the figures that show them."""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import shutil
from itertools import combinations
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from .config import StudyPreset
from .science.blocks import in_block_mask
from .science.dominant import jaccard
from .science.explain import cross_seed_similarity
from .store import contract as c
from .store.results import cross_matrix, download, model_analysis

__all__ = ["SECTIONS", "StudyResults", "study_rows_frame", "cross_seed_numbers", "write_report"]

SECTIONS = {
    "setup": "Setup", "training": "Training", "block-structure": "Block structure", "pc1": "First principal component",
    "without-pc1": "CKA without the first principal component", "probes": "Linear probes", "deletion": "Deleting blocks",
    "cross-seed": "Across seeds", "predictions": "Prediction differences",
    "dominant": "Dominant images (beyond the paper)",
}
CLAIMS = {
    "block-structure": "Models large relative to their training data show a big contiguous block of layers with "
                       "near-identical representations; the control does not.",
    "pc1": "Inside the block, the first principal component explains a large share of every layer's variance.",
    "without-pc1": "Removing each layer's first principal component removes the block structure.",
    "probes": "Linear probe accuracy barely improves across the layers of the block.",
    "deletion": "Deleting a residual block inside the block structure costs little accuracy; elsewhere it costs more.",
    "cross-seed": "Outside the block, representations are similar across seeds; the block itself differs between seeds.",
    "predictions": "Models of different architecture make systematically different errors, beyond seed-to-seed variation.",
    "dominant": "(The paper's follow-up, arXiv 2202.07184.) A few dominant images carry the block's first principal "
                "component: the same images top every layer of the block, far more than elsewhere, and the set differs "
                "between seeds.",
}


@dataclasses.dataclass
class StudyResults:
    """What the study's stages left, as the report reads it: run ids to download from, numbers."""

    rows: pd.DataFrame  # the comparison's rows, one per analysed model version
    compare_run_id: str
    predictions_run_id: str
    group_a: list[str]
    group_b: list[str]
    predictions: dict[str, float]
    timings: dict[str, float]


def study_rows_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The per-model numbers the report shows, one row per model."""
    cols = ["depth", "width", "data_fraction", "seed", c.TRAIN_ACCURACY, c.TEST_ACCURACY, *c.BLOCK_METRICS,
            *c.EXPLANATION_METRICS]
    return rows[[col for col in cols if col in rows]].sort_values(["data_fraction", "depth", "width", "seed"]).reset_index(drop=True)


def _img(path: Path, width: int = 560) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" width="{width}" alt="{html.escape(path.name)}">'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0, classes="numbers")


def _label(row) -> str:
    return f"ResNet-{row.depth} w{row.width:g} · data {row.data_fraction:g} · seed {row.seed}"


def cross_seed_numbers(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, Path]]]:
    """Per pair of seeds of one architecture analysed together: mean CKA between the same layer of
    the two models, inside model A's block and outside it (from the group's cross matrices), and,
    where both were analysed with dominant, the Jaccard overlap of the same layer's dominant
    examples in the two models."""
    client = mlflow.MlflowClient()
    records, figures = [], []
    for (depth, width, fraction), group in rows.groupby(["depth", "width", "data_fraction"]):
        for (_, ra), (_, rb) in combinations(group.sort_values("seed").iterrows(), 2):
            parent = client.get_run(ra[c.ANALYSIS_RUN_ID]).data.tags.get("mlflow.parentRunId")
            label_a, label_b = f"{ra[c.MODEL_NAME]}-v{ra[c.MODEL_VERSION]}", f"{rb[c.MODEL_NAME]}-v{rb[c.MODEL_VERSION]}"
            cross = cross_matrix(parent, label_a, label_b) if parent else None
            own = model_analysis(ra[c.ANALYSIS_RUN_ID])
            if cross is None or own is None:
                continue
            record = {"depth": depth, "width": width, "data_fraction": fraction, "seeds": f"{ra.seed} vs {rb.seed}",
                      **cross_seed_similarity(cross[0], own[1]["blocks"])}
            other = model_analysis(rb[c.ANALYSIS_RUN_ID])
            if "dominant" in own[1] and other is not None and "dominant" in other[1]:
                layers = own[1]["layer_names"]
                same = np.diag(jaccard(*(np.array([s["dominant"]["top"][n] for n in layers]) for s in (own[1], other[1]))))
                mask = in_block_mask(own[1]["blocks"], len(layers))
                record["dominant_overlap_across_seeds_in_block"] = float(same[mask].mean()) if mask.any() else np.nan
                record["dominant_overlap_across_seeds_outside"] = float(same[~mask].mean()) if (~mask).any() else np.nan
            records.append(record)
            figures.append((f"ResNet-{depth} w{width:g}, seeds {ra.seed} vs {rb.seed}", cross[1] / c.HEATMAP_FILE))
    return pd.DataFrame(records), figures


def _copy_run_folder(run_id: str, path: str, out: Path) -> None:
    """A logged folder of a stage's run, copied beside the page (replacing an older copy)."""
    local = download(run_id, path)
    shutil.rmtree(out / path, ignore_errors=True)
    if local is not None:
        shutil.copytree(local, out / path)


def write_report(p: StudyPreset, result: StudyResults, out: Path, run_id: str) -> Path:
    """report.html under `out`, with the comparison, predictions and per-model figures beside it."""
    rows = result.rows
    numbers = study_rows_frame(rows)
    out.mkdir(parents=True, exist_ok=True)
    _copy_run_folder(result.compare_run_id, c.COMPARISON_DIR, out)
    _copy_run_folder(result.predictions_run_id, c.PREDICTIONS_DIR, out)
    per_model = {}
    figures = out / "figures"  # each model's figures beside the page, for documents that link them
    figures.mkdir(parents=True, exist_ok=True)
    for row in rows.itertuples():
        per_model[row] = download(getattr(row, c.ANALYSIS_RUN_ID), c.CKA_DIR)
        for png in (per_model[row].glob("**/*.png") if per_model[row] else []):
            name = png.relative_to(per_model[row]).as_posix().replace("/", "_")
            shutil.copy(png, figures / f"resnet{row.depth}-w{row.width:g}-f{row.data_fraction:g}-s{row.seed}_{name}")
    cross, cross_figures = cross_seed_numbers(rows)
    t = result.timings
    pm = result.predictions
    a, b = result.group_a, result.group_b

    def per_model_figures(name: str, width: int = 460) -> str:
        return "".join(f"<figure>{_img(d / name, width)}<figcaption>{html.escape(_label(r))}</figcaption></figure>"
                       for r, d in per_model.items() if d is not None and (d / name).exists())

    def dominant_statistics() -> pd.DataFrame:
        records = []
        for r, d in per_model.items():
            summary = json.loads((d / c.SUMMARY_FILE).read_text()) if d is not None and (d / c.SUMMARY_FILE).exists() else {}
            for images, stats in summary.get("dominant", {}).get("statistics", {}).items():
                records.append({"depth": r.depth, "width": r.width, "data_fraction": r.data_fraction, "seed": r.seed,
                                "images": images, **stats})
        return pd.DataFrame(records)

    def dominant_grids(width: int = 700) -> str:
        return "".join(f"<figure>{_img(png, width)}<figcaption>{html.escape(_label(r))}</figcaption></figure>"
                       for r, d in per_model.items() if d is not None
                       for png in sorted((d / c.DOMINANT_DIR).glob("*.png")) if png.name != "overlap.png")

    dominant_stats = dominant_statistics()

    def cols(*names: str) -> pd.DataFrame:
        return numbers[[col for col in ("depth", "width", "data_fraction", "seed", *names) if col in numbers]]

    sections = {
        "setup": f"<p>Preset <b>{p.name}</b>: {html.escape(p.description)}.</p>"
                 f"<p>Grid: depths {list(p.grid.depths)}, widths {list(p.grid.widths)}, seeds {list(p.grid.seeds)}, "
                 f"data fractions {list(p.grid.data_fractions)}; training {html.escape(json.dumps(p.train))}; "
                 f"analysis {html.escape(json.dumps(dataclasses.asdict(p.analysis)))}.</p>"
                 f"<p>Wall time this run (s): " + ", ".join(f"{k} {v:.0f}" for k, v in t.items()) + "</p>",
        "training": "<p>A block structure means something only for models that fit their training set (Nguyen et al., 2021): "
                    "training accuracy (no augmentation) beside test accuracy.</p>"
                    + _table(cols("train_accuracy", "test_accuracy")),
        "block-structure": _table(cols("block_count", "block_largest_frac", "block_mean_cka"))
                           + "".join(_img(f, 900) for f in sorted((out / "comparison").glob("heatmaps_fraction_*.png")))
                           + per_model_figures("heatmap.png", 380),
        "pc1": _table(cols("pc1_share_in_block", "pc1_share_outside")) + per_model_figures("pc1_share.png"),
        "without-pc1": _table(cols("block_mean_cka", "block_mean_cka_without_pc1")) + per_model_figures("heatmap_without_pc1.png", 720),
        "probes": _table(cols("probe_gain_in_block")) + per_model_figures("probes.png"),
        "deletion": _table(cols("deletion_drop_in_block", "deletion_drop_outside")) + per_model_figures("deletion.png"),
        "cross-seed": (_table(cross) if not cross.empty else "<p>No pair of seeds of one architecture was analysed together.</p>")
                      + "".join(f"<figure>{_img(f, 380)}<figcaption>{html.escape(c)}</figcaption></figure>" for c, f in cross_figures),
        "dominant": _table(numbers[[col for col in ("depth", "width", "data_fraction", "seed", "dominant_overlap_in_block",
                                                     "dominant_overlap_outside", "dominant_share_in_block") if col in numbers]])
                    + (_table(cross[[col for col in cross if not col.startswith("same_layer")]])
                       if "dominant_overlap_across_seeds_outside" in cross else "")
                    + (_table(dominant_stats) if not dominant_stats.empty else "")
                    + per_model_figures(f"{c.DOMINANT_DIR}/overlap.png", 380) + dominant_grids(),
        "predictions": f"<p>Group A: {html.escape(', '.join(a))}<br>Group B: {html.escape(', '.join(b))}</p>"
                       + _table(pd.DataFrame([pm]))
                       + "".join(_img(out / "predictions" / f, 480) for f in ("per_example.png", "per_class.png", "agreement.png")),
    }
    body = []
    for key, title in SECTIONS.items():
        claim = f'<p class="claim">Claim tested: {html.escape(CLAIMS[key])}</p>' if key in CLAIMS else ""
        body.append(f'<section id="{key}"><h2>{title}</h2>{claim}{sections[key]}</section>')
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>widedeep study: {p.name}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}}
.claim{{background:#f4f1e8;border-left:4px solid #c90;padding:.4em .8em}}
table.numbers{{border-collapse:collapse;font-size:13px}} table.numbers td,table.numbers th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}
figure{{display:inline-block;margin:6px}} figcaption{{font-size:12px;color:#555;text-align:center}}</style></head>
<body><h1>Do wide and deep networks learn the same things? Study <code>{p.name}</code></h1>
<p>MLflow run <code>{run_id}</code>. Sections follow the paper's findings; each states the claim it tests.</p>
{''.join(body)}</body></html>"""
    path = out / "report.html"
    path.write_text(page)
    return path
