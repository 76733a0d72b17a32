"""The study report: one self-contained HTML file (figures embedded), one section per claim of the
paper, each with the claim it tests, the measured numbers and the figures that show them.

Two steps: `gather` reads what the study's stages logged (through store/results: per-model
summaries and figures, the cross-seed matrices, the comparison's and the predictions' files) into a
`ReportData`; `render_html` turns that into the page and reads nothing. What each section shows is
declared in SECTIONS: its metric columns and its per-model figure, names from the store contract
(tests check that an analysis writes every one of them).
"""

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

from .config import FITS_TRAINING_SET, StudyPreset, short_number
from .science.blocks import in_block_mask
from .science.dominant import jaccard
from .science.explain import cross_seed_similarity
from .store import contract as c
from .store.results import cross_matrix, download, model_analysis
from .store.summary import ModelSummary
from .verdicts import CANNOT_TEST, SUPPORTS, Verdict, under_trained, verdicts

__all__ = ["Section", "SECTIONS", "StudyResults", "ReportData", "study_rows_frame", "cross_seed_numbers", "gather",
           "render_html", "write_report", "judge", "verdict_summary"]

CONFIG_COLUMNS = (c.DEPTH, c.WIDTH, c.DATA_FRACTION, c.SEED)


@dataclasses.dataclass(frozen=True)
class Section:
    title: str
    claim: str = ""  # the paper's claim the section tests
    metrics: tuple[str, ...] = ()  # per-model columns of its table
    figure: str = ""  # the per-model figure it shows, a path under the analysis's CKA_DIR
    figure_width: int = 460


SECTIONS = {
    "setup": Section("Setup"),
    "training": Section("Training", metrics=(c.TRAIN_ACCURACY, c.TEST_ACCURACY)),
    "block-structure": Section(
        "Block structure", "Models large relative to their training data show a big contiguous block of layers with "
        "near-identical representations; the control does not.", (c.BLOCK_COUNT, c.BLOCK_LARGEST_FRAC, c.BLOCK_MEAN_CKA),
        c.HEATMAP_FILE, 380),
    "pc1": Section("First principal component",
                   "Inside the block, the first principal component explains a large share of every layer's variance.",
                   (c.PC1_SHARE_IN_BLOCK, c.PC1_SHARE_OUTSIDE), c.PC1_SHARE_FILE),
    "without-pc1": Section("CKA without the first principal component",
                           "Removing each layer's first principal component removes the block structure.",
                           (c.BLOCK_MEAN_CKA, c.BLOCK_MEAN_CKA_WITHOUT_PC1), c.HEATMAP_WITHOUT_PC1_FILE, 720),
    "probes": Section("Linear probes", "Linear probe accuracy barely improves across the layers of the block.",
                      (c.PROBE_GAIN_IN_BLOCK,), c.PROBES_FILE),
    "deletion": Section("Deleting blocks",
                        "Deleting a residual block inside the block structure costs little accuracy; elsewhere it costs more.",
                        (c.DELETION_DROP_IN_BLOCK, c.DELETION_DROP_OUTSIDE), c.DELETION_FILE),
    "cross-seed": Section("Across seeds",
                          "Outside the block, representations are similar across seeds; the block itself differs between seeds."),
    "predictions": Section("Prediction differences",
                           "Models of different architecture make systematically different errors, beyond seed-to-seed variation."),
    "dominant": Section(
        "Dominant images (beyond the paper)", "(The paper's follow-up, arXiv 2202.07184.) A few dominant images carry the "
        "block's first principal component: the same images top every layer of the block, far more than elsewhere, and "
        "the set differs between seeds.", (c.DOMINANT_OVERLAP_IN_BLOCK, c.DOMINANT_OVERLAP_OUTSIDE, c.DOMINANT_SHARE_IN_BLOCK),
        f"{c.DOMINANT_DIR}/{c.DOMINANT_OVERLAP}.png", 380),
    "without-dominant": Section(
        "Without the dominant images (beyond the paper)", "(The follow-up's causal test.) Removing the blocks' few "
        "dominant images from the analysed examples removes the block structure; removing as many random images does not.",
        (c.BLOCK_MEAN_CKA, c.BLOCK_MEAN_CKA_WITHOUT_DOMINANT, c.BLOCK_MEAN_CKA_WITHOUT_RANDOM, c.DOMINANT_REMOVED),
        f"{c.DOMINANT_DIR}/{c.HEATMAP_WITHOUT_DOMINANT_FILE}", 720),
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


@dataclasses.dataclass
class ModelFiles:
    """One analysed model as the report shows it."""

    label: str
    folder: Path | None  # its analysis's CKA_DIR, downloaded
    summary: ModelSummary | None


@dataclasses.dataclass
class ReportData:
    """Everything the page shows, gathered; `render_html` reads nothing else."""

    preset: StudyPreset
    run_id: str
    results: StudyResults
    numbers: pd.DataFrame  # per model: config, accuracies and every metric
    models: list[ModelFiles]
    cross: pd.DataFrame  # per pair of seeds analysed together
    cross_figures: list[tuple[str, Path]]
    comparison_figures: list[Path]
    predictions_folder: Path


def study_rows_frame(rows: pd.DataFrame) -> pd.DataFrame:
    """The per-model numbers the report shows, one row per model."""
    cols = [*CONFIG_COLUMNS, c.TRAIN_ACCURACY, c.TEST_ACCURACY, *c.BLOCK_METRICS, *c.EXPLANATION_METRICS]
    return rows[[col for col in cols if col in rows]].sort_values([c.DATA_FRACTION, c.DEPTH, c.WIDTH, c.SEED]).reset_index(drop=True)


def _label(row) -> str:
    return f"ResNet-{row.depth} w{short_number(row.width)} · data {short_number(row.data_fraction)} · seed {row.seed}"


def cross_seed_numbers(rows: pd.DataFrame) -> tuple[pd.DataFrame, list[tuple[str, Path]]]:
    """Per pair of seeds of one architecture analysed together: mean CKA between the same layer of
    the two models, inside model A's block and outside it (from the group's cross matrices), and,
    where both were analysed with dominant, the Jaccard overlap of the same layer's dominant
    examples in the two models."""
    client = mlflow.MlflowClient()
    records, figures = [], []
    for (depth, width, fraction), group in rows.groupby([c.DEPTH, c.WIDTH, c.DATA_FRACTION]):
        for (_, ra), (_, rb) in combinations(group.sort_values(c.SEED).iterrows(), 2):
            parent = client.get_run(ra[c.ANALYSIS_RUN_ID]).data.tags.get(c.PARENT_RUN)
            label_a, label_b = f"{ra[c.MODEL_NAME]}-v{ra[c.MODEL_VERSION]}", f"{rb[c.MODEL_NAME]}-v{rb[c.MODEL_VERSION]}"
            cross = cross_matrix(parent, label_a, label_b) if parent else None
            own = model_analysis(ra[c.ANALYSIS_RUN_ID])
            if cross is None or own is None:
                continue
            summary = own[1]
            record = {c.DEPTH: depth, c.WIDTH: width, c.DATA_FRACTION: fraction, "seeds": f"{ra.seed} vs {rb.seed}",
                      **cross_seed_similarity(cross[0], summary.blocks)}
            other = model_analysis(rb[c.ANALYSIS_RUN_ID])
            if summary.dominant is not None and other is not None and other[1].dominant is not None:
                layers = summary.layer_names
                same = np.diag(jaccard(*(np.array([s.dominant.top[n] for n in layers]) for s in (summary, other[1]))))
                mask = in_block_mask(summary.blocks, len(layers))
                record[c.DOMINANT_OVERLAP_ACROSS_SEEDS_IN_BLOCK] = float(same[mask].mean()) if mask.any() else np.nan
                record[c.DOMINANT_OVERLAP_ACROSS_SEEDS_OUTSIDE] = float(same[~mask].mean()) if (~mask).any() else np.nan
            records.append(record)
            figures.append((f"ResNet-{depth} w{short_number(width)}, seeds {ra.seed} vs {rb.seed}", cross[1] / c.HEATMAP_FILE))
    return pd.DataFrame(records), figures


def _copy_run_folder(run_id: str, path: str, out: Path) -> Path:
    """A logged folder of a stage's run, copied beside the page (replacing an older copy)."""
    local = download(run_id, path)
    shutil.rmtree(out / path, ignore_errors=True)
    if local is not None:
        shutil.copytree(local, out / path)
    return out / path


def gather(p: StudyPreset, result: StudyResults, out: Path, run_id: str) -> ReportData:
    """Read what the study logged; copy the comparison, the predictions and every model's figures
    beside the page (`out`), for documents that link them."""
    out.mkdir(parents=True, exist_ok=True)
    comparison = _copy_run_folder(result.compare_run_id, c.COMPARISON_DIR, out)
    predictions = _copy_run_folder(result.predictions_run_id, c.PREDICTIONS_DIR, out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    models = []
    for row in result.rows.itertuples():
        folder = download(getattr(row, c.ANALYSIS_RUN_ID), c.CKA_DIR)
        summary = ModelSummary.read(folder / c.SUMMARY_FILE) if folder and (folder / c.SUMMARY_FILE).exists() else None
        for png in (folder.glob("**/*.png") if folder else []):
            name = png.relative_to(folder).as_posix().replace("/", "_")
            shutil.copy(png, figures / f"resnet{row.depth}-w{short_number(row.width)}-f{short_number(row.data_fraction)}-s{row.seed}_{name}")
        models.append(ModelFiles(_label(row), folder, summary))
    cross, cross_figures = cross_seed_numbers(result.rows)
    return ReportData(p, run_id, result, study_rows_frame(result.rows), models, cross, cross_figures,
                      sorted(comparison.glob(c.heatmap_grid_file("*"))), predictions)


def _img(path: Path, width: int = 560) -> str:
    if not path.exists():
        return ""
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img src="data:image/png;base64,{data}" width="{width}" alt="{html.escape(path.name)}">'


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, float_format=lambda v: f"{v:.3f}", na_rep="–", border=0, classes="numbers")


def _figure(path: Path, caption: str, width: int) -> str:
    return f"<figure>{_img(path, width)}<figcaption>{html.escape(caption)}</figcaption></figure>"


def _dominant_statistics(models: list[ModelFiles]) -> pd.DataFrame:
    return pd.DataFrame([{"model": m.label, "images": images, **stats} for m in models
                         if m.summary is not None and m.summary.dominant is not None
                         for images, stats in m.summary.dominant.statistics.items()])


def judge(data: ReportData) -> dict[str, Verdict]:
    """The study's verdict on each claim (verdicts.py)."""
    result = data.results
    return verdicts(data.numbers, data.cross, result.predictions, min(len(result.group_a), len(result.group_b)))


def verdict_summary(judged: dict[str, Verdict]) -> str:
    """'supports: pc1, deletion; contradicts: probes; cannot test: predictions', in SECTIONS order."""
    parts = []
    for status in (SUPPORTS, "contradicts", CANNOT_TEST):
        keys = [key for key in SECTIONS if key in judged and judged[key].status == status]
        if keys:
            parts.append(f"{status}: {', '.join(keys)}")
    return "; ".join(parts)


def _banner(numbers: pd.DataFrame) -> str:
    under = under_trained(numbers)
    if under.empty:
        return ""
    names = ", ".join(f"{_label(row)} ({getattr(row, c.TRAIN_ACCURACY):.0%})" for row in under.itertuples())
    return (f'<p class="banner">{len(under)} of {len(numbers)} models fit less than {FITS_TRAINING_SET:.0%} of their '
            f"training set: {html.escape(names)}. An under-trained ResNet looks like one big block, so their block numbers "
            "test nothing: the verdicts leave them out. Train them longer or with a lower lr.</p>")


def render_html(data: ReportData) -> str:
    """The report page of `data`."""
    p, result, numbers = data.preset, data.results, data.numbers
    judged = judge(data)

    def columns(names: tuple[str, ...]) -> pd.DataFrame:
        return numbers[[col for col in (*CONFIG_COLUMNS, *names) if col in numbers]]

    def per_model(section: Section) -> str:
        return "".join(_figure(m.folder / section.figure, m.label, section.figure_width) for m in data.models
                       if m.folder is not None and (m.folder / section.figure).exists())

    dominant_grids = "".join(_figure(png, m.label, 700) for m in data.models if m.folder is not None
                             for png in sorted((m.folder / c.DOMINANT_DIR).glob("*.png"))
                             if png.name != f"{c.DOMINANT_OVERLAP}.png")
    statistics = _dominant_statistics(data.models)
    across_seeds = [col for col in (c.DOMINANT_OVERLAP_ACROSS_SEEDS_IN_BLOCK, c.DOMINANT_OVERLAP_ACROSS_SEEDS_OUTSIDE)
                    if col in data.cross]
    intro = {  # before a section's table
        "setup": f"<p>Preset <b>{p.name}</b>: {html.escape(p.description)}.</p>"
                 "<p>" + "; ".join(f"Grid: depths {list(g.depths)}, widths {list(g.widths)}, seeds {list(g.seeds)}, "
                                   f"data fractions {list(g.data_fractions)}" for g in p.grids)
                 + f"; training {html.escape(json.dumps(p.train))}; "
                 f"analysis {html.escape(json.dumps(dataclasses.asdict(p.analysis)))}.</p>"
                 f"<p>Wall time this run (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result.timings.items()) + "</p>",
        "training": "<p>A block structure means something only for models that fit their training set (Nguyen et al., "
                    "2021): training accuracy (no augmentation) beside test accuracy.</p>",
    }
    after = {  # after it
        "block-structure": "".join(_img(f, 900) for f in data.comparison_figures),
        "cross-seed": (_table(data.cross[[col for col in data.cross if col not in across_seeds]]) if not data.cross.empty
                       else "<p>No pair of seeds of one architecture was analysed together.</p>")
                      + "".join(_figure(f, caption, 380) for caption, f in data.cross_figures),
        "dominant": (_table(data.cross[[c.DEPTH, c.WIDTH, c.DATA_FRACTION, "seeds", *across_seeds]]) if across_seeds else "")
                    + (_table(statistics) if not statistics.empty else ""),
        "predictions": f"<p>Group A: {html.escape(', '.join(result.group_a))}<br>Group B: {html.escape(', '.join(result.group_b))}</p>"
                       + _table(pd.DataFrame([result.predictions]))
                       + "".join(_img(data.predictions_folder / f, 480) for f in c.PREDICTIONS_FIGURES),
    }
    body = []
    for key, section in SECTIONS.items():
        claim = f'<p class="claim">Claim tested: {html.escape(section.claim)}</p>' if section.claim else ""
        if key in judged:
            v = judged[key]
            claim += (f'<p class="verdict {v.status.replace(" ", "-")}">This study <b>{v.status}</b> it: '
                      f"{html.escape(v.reason)}.</p>")
        table = _table(columns(section.metrics)) if section.metrics else ""
        figures = per_model(section) if section.figure else ""
        if key == "dominant":
            figures += dominant_grids
        body.append(f'<section id="{key}"><h2>{section.title}</h2>{claim}{intro.get(key, "")}{table}{after.get(key, "")}'
                    f'{figures}</section>')
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>widedeep study: {p.name}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}}
.claim{{background:#f4f1e8;border-left:4px solid #c90;padding:.4em .8em}}
.verdict{{padding:.3em .8em;border-left:4px solid #999}} .supports{{border-color:#2a7;background:#eef8f1}}
.contradicts{{border-color:#c33;background:#fbeeee}} .cannot-test{{border-color:#999;background:#f3f3f3}}
.banner{{background:#fff3cd;border:1px solid #e0b000;padding:.6em .9em;font-weight:600}}
table.numbers{{border-collapse:collapse;font-size:13px}} table.numbers td,table.numbers th{{padding:2px 8px;border-bottom:1px solid #ddd;text-align:right}}
figure{{display:inline-block;margin:6px}} figcaption{{font-size:12px;color:#555;text-align:center}}</style></head>
<body><h1>Do wide and deep networks learn the same things? Study <code>{p.name}</code></h1>
<p>MLflow run <code>{data.run_id}</code>. Sections follow the paper's findings; each states the claim it tests and
whether this study supports it, contradicts it or cannot test it (analysis/verdicts.py says how that is decided).</p>
{_banner(numbers)}<p><b>Verdicts</b>: {html.escape(verdict_summary(judged))}.</p>
{''.join(body)}</body></html>"""


def write_report(p: StudyPreset, result: StudyResults, out: Path, run_id: str) -> tuple[Path, dict[str, Verdict]]:
    """report.html under `out`, with the comparison, predictions and per-model figures beside it;
    returns its path and the verdicts it states."""
    path = out / c.REPORT_FILE
    data = gather(p, result, out, run_id)
    path.write_text(render_html(data))
    return path, judge(data)
