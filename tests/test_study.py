"""The `smoke` study end to end: every report section holds real values, and a rerun after an
interruption skips the work already done."""

import re

import mlflow
import pytest

from analysis import study as study_lib
from analysis.report import SECTIONS
from entrypoints import study as study_entry
from entrypoints.common import run_main


def run_study(store, *argv: str) -> int:
    args = study_entry.parse_args(["--preset", "smoke", "--device", "cpu", "--storage", f"sqlite:///{store / 'optuna.db'}",
                                   "--out", str(store / "report"), *argv])
    return run_main(lambda: study_entry.main(args))


def runs_of(kind: str) -> list:
    return mlflow.search_runs(search_all_experiments=True, filter_string=f"tags.`widedeep.kind` = '{kind}'", output_format="list")


@pytest.mark.slow
def test_smoke_study_writes_every_section_and_resumes_after_an_interruption(store, monkeypatch):
    # First attempt: interrupted after the sweep, in the analysis stage.
    def interrupted(*args, **kwargs):
        raise RuntimeError("simulated crash during analysis")

    with monkeypatch.context() as patch:
        patch.setattr(study_lib, "analyze_models", interrupted)
        assert run_study(store) == 2
    trained = runs_of("train")
    assert len(trained) == 4 and all(r.info.status == "FINISHED" for r in trained)
    assert runs_of("study")[0].info.status == "FAILED"

    # The rerun trains nothing and completes the rest.
    assert run_study(store) == 0
    assert len(runs_of("train")) == 4
    analyses = [r for r in runs_of("analyze") if r.info.status == "FINISHED"]
    assert len(analyses) == 1

    page = (store / "report" / "report.html").read_text()
    for section in SECTIONS:
        match = re.search(rf'<section id="{section}">(.*?)</section>', page, re.S)
        assert match, f"section {section} is missing"
        body = match.group(1)
        assert re.search(r"\d\.\d{3}", body) or section == "setup", f"section {section} shows no measured number"
    assert page.count("data:image/png;base64,") >= 10  # figures embedded, self-contained
    assert "Claim tested" in page
    finished = [r for r in runs_of("study") if r.info.status == "FINISHED"][0]
    artifacts = {f.path for f in mlflow.MlflowClient().list_artifacts(finished.info.run_id, "report")}
    assert "report/report.html" in artifacts

    # A third run skips the analysis too.
    assert run_study(store) == 0
    assert len(runs_of("train")) == 4 and len([r for r in runs_of("analyze") if r.info.status == "FINISHED"]) == 1


def test_unknown_preset_is_named(store, capsys):
    assert run_study(store, "--preset", "huge") == 2
    assert "preset='huge'" in capsys.readouterr().err
