"""The analyze stage: every analysis of a list of models, in one run: this project's registered
versions, and models from outside it (store/sources.py: torchvision, timm, a builder of the
researcher's own, an MLflow pytorch-flavor model), each fed the analysed images as it declares.

Order, and what shares a forward pass:
1. pc: PC1 per layer of each model (pca.estimate_pc1: `pc_iterations` passes over the examples).
2. cka: the paper's reshuffled passes; each batch's single forward pass per model yields the
   Grams for CKA and, with pc, the PC1 projections for CKA without PC1 and of PC1 alone.
3. probes: one pass over the probe training examples, one over the analysed test examples.
4. deletion: one pass over the analysed test examples per deletable block.
5. dominant: it ranks the examples on the PC1 scores of step 1; a model with a block then gets
   the causal test, two more CKA runs: without the blocks' dominant examples, and without as
   many random ones.
Every analysis is checked (science/sanity.py): the matrix as estimated (a violation fails the
run), a shuffled baseline from the same batches, and, between models of one architecture,
seed-to-seed identification; logged as metrics under sanity/.
With history, every training snapshot of each model is analysed the same way (cka, and pc and
dominant if chosen) and logged with step = epoch under history/ in the model's run.

Logging: every model gets a child run of the stage's run, named after the model, holding its
metrics, matrices and heatmaps and, as params, the version's depth, width, seed, data fraction,
dataset and epochs (so MLflow's compare view plots block metrics against width or depth as is);
the stage's run holds the analysis settings and, with several models, the cross-model matrices.
Every run records the analysed test examples as its input dataset. Each model version is tagged
with its metrics and the run that holds them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import tempfile
from itertools import combinations
from pathlib import Path
from typing import Callable, Sequence

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from tqdm.auto import tqdm

from ..config import MIN_HSIC_BATCH, AnalysisOptions, snapshot_epochs
from ..data import ImageData, take
from ..device import resolve_device
from ..nets import batch_statistics, probe_layers
from ..render import write_heatmap, write_history, write_matrix, write_model_report
from ..science.blocks import find_blocks
from ..science.deletion import deletion_accuracy
from ..science.dominant import find_dominant, removal_sets
from ..science.explain import ModelReport, base_metrics, explanation_metrics, fit_to_training_set, probe_training_indices
from ..science.pca import estimate_pc1
from ..science.probes import fit_probes, probe_accuracy
from ..science.sanity import seed_identification, shuffled_metrics
from ..science.similarity import ModelCKA, model_cka
from ..store import contract as c
from ..store.datasets import log_analysed_examples
from ..store.summary import ModelSummary
from ..store.versions import tag_value, version_description
from .train import cell_label
from ..store.model_files import LoadedModel, build_with_weights, training_snapshots
from ..store.sources import check_dataset, load_sources
from ..store.tracking import describe, stage_run

__all__ = ["AnalyzeOutcome", "analyze_stage", "analyze_models", "analyze_history", "History", "example_indices"]

HISTORY_ANALYSES = ("cka", "pc", "dominant")  # what each training snapshot gets; probes and deletion are left to the final model


@dataclasses.dataclass
class AnalyzeOutcome:
    run_id: str
    reports: list[ModelReport]
    joint: ModelCKA
    model_run_ids: list[str]  # the run holding each model's analysis


def analyze_stage(uris: Sequence[str], options: AnalysisOptions, dataset: str = "", data_dir: str = "",
                  device: str = "auto", run_name: str | None = None, progress: bool | None = None) -> AnalyzeOutcome:
    """Load the models, check they share a dataset, analyse them and log everything."""
    params = {**dataclasses.asdict(options), "analyses": ",".join(options.analyses), "models": ",".join(uris),
              "dataset": dataset, "data_dir": data_dir, "device": device}
    with stage_run("analyze", run_name or f"analyze-{len(uris)}-models", params) as run:
        loaded = load_sources(uris, resolve_device(device))
        for m in loaded:  # a layer pattern that matches nothing is refused before any data is read
            m.layer_names(options.layers)
            if options.history and m.config is None:
                raise ValueError(f"history=true: {m.uri} is not one of this project's versions, so no training snapshots "
                                 "were kept for it; analyse it with history=false")
        trained = check_dataset(loaded, dataset)
        data = trained.load(data_dir)
        examples = example_indices(len(data.test_x), options)
        log_analysed_examples(data, examples)
        snapshots = [training_snapshots(m) if options.history else [] for m in loaded]  # refused before any work
        reports, joint = analyze_models(loaded, data, options, progress)
        histories = [analyze_history(m, found, data, options, progress) if options.history else None
                     for m, found in zip(loaded, snapshots)]
        model_runs = _log(reports, histories, loaded, joint, options, lambda: log_analysed_examples(data, examples))
        with_block = [m.label for m, r in zip(loaded, reports) if r.metrics.get(c.BLOCK_COUNT, 0) >= 1]
        describe(f"Analysed {len(loaded)} model(s) on {joint.num_examples} test examples ({options.passes} pass(es) of batches "
                 f"of {options.batch_size}), layers {options.layers}, analyses {', '.join(options.analyses)}, BatchNorm "
                 f"{options.bn_mode(snapshot=False)}. With a block: {', '.join(with_block) or 'none'}. Each model's "
                 "numbers, matrices and heatmaps are in its child run" + ("; the cross-model matrices are here." if len(loaded) > 1 else "."))
    return AnalyzeOutcome(run.info.run_id, reports, joint, model_runs)


def example_indices(num_test: int, options: AnalysisOptions) -> torch.Tensor:
    """The analysed test examples: `num_examples` of them (0: all), drawn with `seed`, sorted."""
    n = num_test if options.num_examples <= 0 else min(options.num_examples, num_test)
    return torch.sort(torch.randperm(num_test, generator=torch.Generator().manual_seed(options.seed))[:n]).values


def analyze_models(models: Sequence[LoadedModel], data: ImageData, options: AnalysisOptions,
                   progress: bool | None = None, snapshot: bool = False) -> tuple[list[ModelReport], ModelCKA]:
    """Run the chosen analyses on every model (training snapshots with `snapshot`), BatchNorm in
    the options' mode for them (AnalysisOptions.bn_mode). Returns one report per model and the
    joint CKA (whose cross blocks compare the models pairwise)."""
    for m in models:
        if m.config is not None and data.num_classes != m.config.num_classes:
            raise ValueError(f"dataset {data.name!r} has {data.num_classes} classes but {m.label} predicts {m.config.num_classes}")
    with contextlib.ExitStack() as modes:
        if options.bn_mode(snapshot) == "batch":
            for m in models:
                modes.enter_context(batch_statistics(m.model))
        return _analyze(models, data, options, progress, snapshot)


def _analyze(models: Sequence[LoadedModel], data: ImageData, options: AnalysisOptions,
             progress: bool | None, snapshot: bool) -> tuple[list[ModelReport], ModelCKA]:
    examples = example_indices(len(data.test_x), options)
    images, targets = take(data.test_x, examples), data.test_y[examples]
    names = [m.layer_names(options.layers) for m in models]

    pcs = None
    if "pc" in options.analyses:
        pcs = [estimate_pc1(m.model, names[i], images, options.batch_size, options.pc_iterations, seed=options.seed,
                            progress=progress, bf16=options.bf16) for i, m in enumerate(models)]
    joint = model_cka(
        [m.model for m in models], names, images, targets, batch_size=options.batch_size, passes=options.passes,
        seed=options.seed, model_labels=[m.label for m in models],
        directions=None if pcs is None else [pc.directions for pc in pcs], progress=progress, bf16=options.bf16,
        measures=options.measures, rbf_fraction=options.rbf_fraction, knn_k=options.knn_k,
    )
    reports = []
    for i, m in enumerate(models):
        found = find_blocks(joint.within(i), names[i])
        report = ModelReport(label=m.label, names=names[i], cka=joint.within(i), blocks=found,
                             metrics={**base_metrics(found, len(names[i]), joint.accuracy[i]), **joint.sanity,
                                      **shuffled_metrics(joint.shuffled_of(i))})
        if m.num_classes != data.num_classes:  # an outside model's own classes (ImageNet's 1000): no accuracy here
            del report.metrics[c.ANALYSIS_ACCURACY]
        report.measures = {measure: joint.within(i, measure) for measure in options.measures if measure != "linear_cka"}
        if (fit := fit_to_training_set(m.info.train_accuracy, m.label)) is not None:
            report.metrics[c.FITS_TRAINING_SET_METRIC] = fit
        if pcs is not None:
            report.cka_without_pc1 = joint.within(i, "without_pc1")
            report.cka_pc1_only = joint.within(i, "pc1_only")
            report.pc1_share, report.pc1_residual = pcs[i].share, pcs[i].residual
        if "dominant" in options.analyses:
            report.dominant = find_dominant(pcs[i].scores, found, images, examples.numpy(), options.dominant_top)
            if found and not snapshot:  # the causal test costs two more CKA runs: final models only
                _without_dominant(report, m, images, targets, options, progress)
        if "probes" in options.analyses:
            report.probe_names, report.probe_outputs = _probed(m, names[i])
            for train_set in _probe_sets(m, options.probe_train):
                index = probe_training_indices(data.train_y, train_set, m.info.data_fraction or 1.0,
                                               int(m.training.get("subset_seed", 0)), m.info.subset_hash,
                                               options.probe_examples, m.uri)
                probes = fit_probes(m.model, report.probe_names, take(data.train_x, index), data.train_y[index], data.num_classes,
                                    pool=options.probe_pool, progress=progress, bf16=options.bf16)
                report.probe_accuracy[train_set] = probe_accuracy(m.model, probes, images, targets, progress=progress,
                                                                  bf16=options.bf16)
        if "deletion" in options.analyses and m.config is not None:
            report.deletion = deletion_accuracy(m.model, m.config, images, targets, bf16=options.bf16)
        elif "deletion" in options.analyses and not snapshot:
            print(f"warning: {m.label}: deletion is left out; it removes residual blocks of this project's networks only",
                  file=sys.stderr)
        report.metrics.update(explanation_metrics(report))
        reports.append(report)
    for i, report in enumerate(reports):  # another seed of the same architecture: is each layer found again?
        others = [j for j, other in enumerate(models) if j != i and other.config is not None and other.config == models[i].config]
        if others:
            report.metrics[c.SANITY_SEED_IDENTIFICATION] = float(np.mean([seed_identification(joint.cross(i, j)) for j in others]))
    return reports, joint


def _probed(m: LoadedModel, analysed: list[str]) -> tuple[list[str], list[str]]:
    """(the layers linear probes read, those of them that are block outputs): for this project's
    networks, each block's BN before the add and its output; for another, its block outputs
    (nets/discover.py), or the analysed layers where it has no repeated blocks."""
    if m.config is not None:
        return probe_layers(m.config), m.layer_names("blocks")
    try:
        blocks = m.layer_names("blocks")
    except ValueError:
        return analysed, analysed
    return blocks, blocks


def _probe_sets(m: LoadedModel, probe_train: str) -> tuple[str, ...]:
    """The training sets the probes are fitted on; a model from outside the project has no subset
    of its own here, so its probes learn from the full training set."""
    if m.config is None:
        return ("full",)
    return ("subset", "full") if probe_train == "both" else (probe_train,)


def _without_dominant(report: ModelReport, m: LoadedModel, images: torch.Tensor, targets: torch.Tensor,
                      options: AnalysisOptions, progress: bool | None) -> None:
    """The follow-up's causal test: CKA again over the analysed examples less the blocks' dominant
    ones, and less as many random ones, on the same batches' recipe (dominant.removal_sets)."""
    dominant, control = removal_sets(report.dominant, report.blocks, options.seed)
    matrices = []
    for removed in (dominant, control):
        keep = torch.from_numpy(np.setdiff1d(np.arange(len(targets)), removed))
        if len(keep) < MIN_HSIC_BATCH:
            return  # too few examples would be left: the test is skipped (no metric)
        joint = model_cka([m.model], [report.names], take(images, keep), targets[keep], batch_size=options.batch_size,
                          passes=options.passes, seed=options.seed, progress=progress, bf16=options.bf16)
        matrices.append(joint.within(0))
    report.cka_without_dominant, report.cka_without_random = matrices
    report.dominant_removed = len(dominant)


@dataclasses.dataclass
class History:
    """A model's analysed training snapshots, and the epochs that could not be analysed."""

    reports: list[tuple[int, ModelReport]]  # (epoch, report), in epoch order
    skipped: dict[int, str]  # epoch: why (missing from the training run, or unreadable)


def analyze_history(m: LoadedModel, snapshots: Sequence[tuple[int, str]], data: ImageData, options: AnalysisOptions,
                    progress: bool | None = None) -> History:
    """Each of the model's training snapshots (model_files.training_snapshots), analysed like the
    model itself (HISTORY_ANALYSES among the chosen ones) on the same examples. A snapshot its
    training should have kept but did not, or one that cannot be read, is named in a warning and
    left out, and the others are analysed; with none left the analysis is refused."""
    chosen = dataclasses.replace(options, analyses=tuple(a for a in options.analyses if a in HISTORY_ANALYSES), history=False)
    device = next(m.model.parameters()).device
    tags = {k: v for k, v in m.tags.items() if k != c.TRAIN_ACCURACY}  # the final model's, not the snapshot's
    found = {epoch for epoch, _ in snapshots}
    expected = snapshot_epochs(int(m.training.get("epochs", 0)), int(m.training.get("snapshot_every", 0)))
    skipped = {epoch: f"{c.SNAPSHOT_DIR}/ of its training run lacks it" for epoch in expected if epoch not in found}
    out = []
    for epoch, path in tqdm(snapshots, desc=f"{m.label}: training history", disable=None if progress is None else not progress):
        try:
            weights = Path(mlflow.artifacts.download_artifacts(run_id=m.run_id, artifact_path=path))
            model = build_with_weights(m.config, weights, f"snapshot {path}").to(device).eval()
        except (ValueError, OSError, MlflowException) as err:
            skipped[epoch] = str(err).splitlines()[0] if str(err) else type(err).__name__
            continue
        reports, _ = analyze_models([dataclasses.replace(m, model=model, tags=tags)], data, chosen, progress=False, snapshot=True)
        out.append((epoch, reports[0]))
    if skipped:
        epochs = ", ".join(map(str, sorted(skipped)))
        first = skipped[min(skipped)]
        fix = f"retrain {m.uri}'s config with -P snapshot_every={m.training.get('snapshot_every', 'K')} to have every snapshot"
        if not out:
            raise ValueError(f"{m.uri}: none of its training snapshots could be analysed (epoch {min(skipped)}: {first}); {fix}")
        print(f"warning: {m.uri}: history leaves out epoch(s) {epochs} (epoch {min(skipped)}: {first}); the other "
              f"{len(out)} were analysed, and the run's tag {c.HISTORY_SKIPPED} names the epochs left out; {fix}", file=sys.stderr)
    return History(out, skipped)


def history_metrics(report: ModelReport) -> dict[str, float]:
    """What one snapshot's analysis logs at step = epoch: its metrics and PC1's share over all layers."""
    out = dict(report.metrics)
    if report.pc1_share is not None:
        out.update({c.PC1_SHARE_MEAN: float(np.mean(report.pc1_share)), c.PC1_SHARE_MAX: float(np.max(report.pc1_share))})
    return {c.history_metric(k): v for k, v in out.items()}


def _log(reports: Sequence[ModelReport], histories: Sequence[History | None], loaded: Sequence[LoadedModel], joint: ModelCKA, options: AnalysisOptions,
         log_examples: Callable[[], mlflow.data.Dataset]) -> list[str]:
    """One child run per model under the active run, which gets the cross matrices."""
    common = {"num_examples": joint.num_examples, "batches": joint.batches, "passes": options.passes,
              "batch_size": options.batch_size, "layers": options.layers, "analyses": list(options.analyses),
              "probe_pool": options.probe_pool, "precision": options.precision,
              "batchnorm": options.bn_mode(snapshot=False)}  # fields of every model's ModelSummary
    mlflow.set_tag(c.ANALYSIS_MODELS, ",".join(m.uri for m in loaded))
    mlflow.log_param("analysed_examples", joint.num_examples)
    run_ids = []
    for report, history, m in zip(reports, histories, loaded):
        with stage_run("analyze", run_name=analysis_run_name(m)) as child:
            mlflow.log_params(m.info.config_tags if m.config is not None else m.params)
            _log_model(report, m, common, child.info.run_id, log_examples())
            if history is not None:
                for epoch, snapshot in history.reports:
                    mlflow.log_metrics(history_metrics(snapshot), step=epoch)
                if history.skipped:
                    mlflow.set_tag(c.HISTORY_SKIPPED, ",".join(map(str, sorted(history.skipped))))
                with tempfile.TemporaryDirectory() as tmp:
                    write_history(Path(tmp), history.reports, m.label, options.bn_mode(snapshot=True))
                    mlflow.log_artifacts(tmp, c.HISTORY_DIR)
            run_ids.append(child.info.run_id)
    if len(reports) > 1:
        with tempfile.TemporaryDirectory() as tmp:
            for i, j in combinations(range(len(reports)), 2):
                a, b = reports[i], reports[j]
                out = Path(tmp) / c.cross_dir(a.label, b.label)
                write_matrix(out, c.MATRIX, joint.cross(i, j), a.names, b.names)
                write_heatmap(out, c.HEATMAP, joint.cross(i, j), a.names, b.names, title=f"{a.label} (y) vs {b.label} (x)")
                for measure in a.measures:
                    write_matrix(out / c.MEASURES_DIR, measure, joint.cross(i, j, measure), a.names, b.names)
                    write_heatmap(out / c.MEASURES_DIR, measure, joint.cross(i, j, measure), a.names, b.names,
                                  title=f"{a.label} (y) vs {b.label} (x): {measure}", bar_label=measure)
            mlflow.log_artifacts(tmp)
    return run_ids


def _log_model(report: ModelReport, m: LoadedModel, common: dict, run_id: str, dataset: mlflow.data.Dataset) -> None:
    mlflow.set_tags({
        c.ANALYSIS_MODEL_URI: m.uri, c.MODEL_NAME: m.name, c.MODEL_VERSION: m.version, c.TRAIN_RUN_ID: m.run_id or "",
        **m.info.to_tags((*c.VERSION_CONFIG, c.TRAIN_ACCURACY)),
    })
    # Linked to the version's LoggedModel and to the analysed examples: the model's own page
    # answers "does it have a block?", on which data.
    mlflow.log_metrics(report.metrics, model_id=m.model_id, dataset=dataset)
    with tempfile.TemporaryDirectory() as tmp:
        summary = ModelSummary(model_uri=m.uri, layer_names=report.names, metrics=report.metrics, blocks=[],
                               train_run_id=m.run_id, version_tags=m.tags, **common)
        write_model_report(Path(tmp), report, summary, m.info.train_accuracy)
        mlflow.log_artifacts(tmp, c.CKA_DIR)
    mark_newest_analysis(m.uri, run_id)
    if m.config is None:
        describe(f"The analysis of {m.uri} ({', '.join(f'{k} {v}' for k, v in m.input.params().items())}): "
                 f"{int(report.metrics[c.BLOCK_COUNT])} block(s) over {len(report.names)} layers.")
    client = MlflowClient()
    if m.version:  # a registered version, this project's or another's: its tags answer registry queries
        for key, value in {**report.metrics, c.ANALYSIS_RUN_ID: run_id}.items():
            client.set_model_version_tag(m.name, m.version, key, tag_value(value))
    if m.config is not None:
        client.update_model_version(m.name, m.version, description=version_description(m.info, report.metrics, run_id))
        describe(f"The analysis of {m.uri}: {version_description(m.info, report.metrics)}")


def analysis_run_name(m: LoadedModel) -> str:
    """'analyze-d56-w2-s3-f0.25': a model's analysis run, named for its config (a version number
    says nothing in a chart's legend); the version's label where its tags lack the config."""
    info = m.info
    known = None not in (info.depth, info.width, info.seed, info.data_fraction)
    return f"analyze-{cell_label(info)}" if known else f"analyze-{m.label}"


def mark_newest_analysis(uri: str, run_id: str) -> None:
    """Tag `run_id` as the newest analysis of the version `uri` (ANALYSIS_NEWEST), and no earlier
    one: a flat filter `tags.analysis.newest = 'true'` selects one point per model."""
    client = MlflowClient()
    earlier = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                 filter_string=f"tags.`{c.ANALYSIS_MODEL_URI}` = '{uri}' and tags.`{c.ANALYSIS_NEWEST}` = 'true'")
    mlflow.set_tag(c.ANALYSIS_NEWEST, "true")
    for run in earlier:
        if run.info.run_id != run_id:
            client.delete_tag(run.info.run_id, c.ANALYSIS_NEWEST)
