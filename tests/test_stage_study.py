"""The `smoke` study end to end: it leaves the same runs as the single commands (a sweep with its
trainings, an analysis, a comparison, a prediction contrast, the study), every runs:/ tag on a
model version resolves to a logged artifact, every report section holds real values, and a rerun
after an interruption skips the work already done."""

import re

import mlflow
import pytest
from mlflow import MlflowClient

from analysis.report import SECTIONS
from analysis.stages import study as study_stage
from analysis.store import contract as c
from analysis.store.lookup import search_versions
from entrypoints import study as study_entry
from entrypoints.common import run_main


def run_study(store, *argv: str) -> int:
    args = study_entry.parse_args(["--preset", "smoke", "--device", "cpu", "--storage", f"sqlite:///{store / 'optuna.db'}",
                                   "--out", str(store / "report"), *argv])
    return run_main(lambda: study_entry.main(args))


def runs_of(kind: str, status: str = "FINISHED") -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list",
                              filter_string=f"tags.`{c.KIND}` = '{kind}' and attributes.status = '{status}'")


def group_analyses() -> list:
    """Analysis runs of a whole group (the study's), not the per-model children under them."""
    return [r for r in runs_of("analyze") if c.ANALYSIS_MODELS in r.data.tags]


@pytest.mark.slow
def test_smoke_study_leaves_every_kind_of_run_resolvable_tags_and_a_full_report(store, monkeypatch):
    # First attempt: interrupted after the sweep, in the analysis stage.
    def interrupted(*args, **kwargs):
        raise RuntimeError("simulated crash during analysis")

    with monkeypatch.context() as patch:
        patch.setattr(study_stage, "analyze_stage", interrupted)
        assert run_study(store) == 2
    assert len(runs_of("train")) == 4
    (failed,) = runs_of("study", "FAILED")
    assert failed.data.tags[c.ERROR] == "simulated crash during analysis"

    # The rerun trains nothing and completes the rest.
    assert run_study(store) == 0
    assert len(runs_of("train")) == 4
    (study,) = runs_of("study")
    for kind in ("sweep", "analyze", "compare", "predictions"):
        children = [r for r in runs_of(kind) if r.data.tags.get("mlflow.parentRunId") == study.info.run_id]
        assert children, f"the study left no {kind} run of its own"
    assert len(group_analyses()) == 1

    # Every runs:/ tag on every model version points at an artifact that exists.
    versions = search_versions("")
    assert len(versions) == 4
    pointers = [v.tags[k] for v in versions for k in v.tags if v.tags[k].startswith("runs:/")]
    assert len(pointers) >= 4  # at least the cached test logits of the contrasted models
    for uri in pointers:
        assert mlflow.artifacts.download_artifacts(artifact_uri=uri), uri

    page = (store / "report" / "report.html").read_text()
    for section in SECTIONS:
        match = re.search(rf'<section id="{section}">(.*?)</section>', page, re.S)
        assert match, f"section {section} is missing"
        assert re.search(r"\d\.\d{3}", match.group(1)) or section == "setup", f"section {section} shows no measured number"
    assert page.count("data:image/png;base64,") >= 10  # figures embedded, self-contained
    assert "Claim tested" in page and "<b>Verdicts</b>: " in page

    # Every run the study finished says what it did in its description (the UI's Description box).
    finished = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string="attributes.status = 'FINISHED'")
    undescribed = [(r.info.run_name, r.data.tags.get(c.KIND)) for r in finished if not r.data.tags.get(c.NOTE)]
    assert not undescribed, undescribed
    assert "Verdicts on the paper's claims: " in study.data.tags[c.NOTE] and "supports" in study.data.tags[c.NOTE] or \
        "cannot test" in study.data.tags[c.NOTE]
    artifacts = {f.path for f in MlflowClient().list_artifacts(study.info.run_id, c.REPORT_DIR)}
    assert f"{c.REPORT_DIR}/report.html" in artifacts

    # A third run skips the analysis too.
    assert run_study(store) == 0
    assert len(runs_of("train")) == 4 and len(group_analyses()) == 1


def test_unknown_preset_is_named(entry_run, capsys):
    assert run_main(lambda: study_entry.main(study_entry.parse_args(["--preset", "huge"]))) == 2
    assert "preset='huge'" in capsys.readouterr().err
    assert mlflow.get_run(entry_run).info.status == "FAILED"


def test_every_study_preset_is_a_set_of_valid_trainings_and_the_gpu_preset_shows_a_trend():
    from analysis.config import STUDY_PRESETS
    from analysis.training.settings import check_grid

    for p in STUDY_PRESETS.values():
        base = p.base_config("cifar10", "", "cpu")
        for grid in p.grids:
            check_grid(grid, base)
        cells = {(cell["depth"], cell["width"]) for cell in p.cells()}
        assert set(p.contrast) <= cells, p.name
        assert len(p.cells()) == len({tuple(cell.values()) for cell in p.cells()})  # a cell shared by two series once
    gpu = STUDY_PRESETS["gpu"]
    assert gpu.pack == 0 and gpu.train["epochs"] == 300 and all(len(g.seeds) >= 4 for g in gpu.grids)
    assert len({d for d, w in cells_of(gpu) if w == 1.0}) >= 3 and len({w for d, w in cells_of(gpu) if d == 20}) >= 3


def cells_of(preset) -> set[tuple[int, float]]:
    return {(cell["depth"], cell["width"]) for cell in preset.cells()}
