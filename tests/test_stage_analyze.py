"""`analyze` end to end on tiny registered models in a real SQLite store."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis.config import AnalysisOptions
from analysis.data import indices_hash
from analysis.nets import ModelConfig, layer_names
from analysis.report import SECTIONS, study_rows_frame
from analysis.stages.analyze import example_indices
from analysis.store import contract as c
from analysis.store.summary import ModelSummary
from analysis.store.versions import VersionInfo
from entrypoints import analyze as analyze_entry
from entrypoints.common import run_main
from tests.conftest import mlflow_cli
from tests.fake_store import register_model, runs_of, uri

NAME = "cifar10-resnet8-w0.25"


def register(seed: int, dataset: str = "cifar10") -> str:
    return uri(register_model(8, 0.25, seed, dataset, train_accuracy="0.5"))


def run_analyze(*argv: str) -> int:
    args = analyze_entry.parse_args(["--num_examples", "60", "--batch_size", "20", "--passes", "2", "--device", "cpu", *argv])
    return run_main(lambda: analyze_entry.main(args))


def artifact(run_id: str, path: str):
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path)
    return np.load(local) if path.endswith(".npy") else open(local).read()


@pytest.mark.slow
def test_mlflow_run_analyze_logs_every_artifact_and_tags_the_version(store):
    uri = register(0)
    proc = mlflow_cli("-e", "analyze", "-P", f"models={uri}", "-P", "num_examples=60", "-P", "batch_size=20",
                      "-P", "passes=2", "-P", "device=cpu", "-P", "analyses=cka,pc,probes,deletion",
                      "-P", "probe_examples=200", cwd=store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parent, run = sorted(runs_of("analyze"), key=lambda r: c.ANALYSIS_MODEL_URI in r.data.tags)
    assert run.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert run.info.status == "FINISHED" and run.data.tags[c.ANALYSIS_MODEL_URI] == uri
    files = {f.path for f in MlflowClient().list_artifacts(run.info.run_id, "cka")}
    expected = {"cka.npy", "cka.csv", "heatmap.png", "summary.json", "cka_without_pc1.npy", "cka_without_pc1.csv",
                "cka_pc1_only.npy", "cka_pc1_only.csv", "heatmap_without_pc1.png", "pc1_share.png", "probes.png", "deletion.png"}
    assert files == {f"{c.CKA_DIR}/{f}" for f in expected}
    matrix = artifact(run.info.run_id, f"{c.CKA_DIR}/cka.npy")
    names = layer_names(ModelConfig(8, 0.25))
    assert matrix.shape == (len(names), len(names)) and np.all(np.diag(matrix) == 1) and np.array_equal(matrix, matrix.T)
    csv_header = artifact(run.info.run_id, f"{c.CKA_DIR}/cka.csv").splitlines()[0]
    assert csv_header.split(",")[1:] == names
    summary = json.loads(artifact(run.info.run_id, f"{c.CKA_DIR}/summary.json"))
    assert summary["num_examples"] == 60 and summary["batches"] == 6 and "block_count" in summary["metrics"]
    assert "block_count" in run.data.metrics
    assert "pc1_share" in summary and len(summary["deletion_accuracy"]) == 1  # ResNet-8: one identity block
    assert len(summary["probe_accuracy"]["subset"]) == 6  # bn2 and relu of 3 blocks
    assert {"pc1_share_in_block", "pc1_share_outside"} & set(run.data.metrics) or summary["metrics"]["block_count"] == 0
    version = MlflowClient().get_model_version(NAME, "1")
    assert version.tags["analysis_run_id"] == run.info.run_id and "block_count" in version.tags


def test_several_models_give_nested_runs_and_cross_heatmaps(store):
    a, b = register(0), register(1)
    assert run_analyze("--models", a, "--layers", "blocks") == 0
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list")
    parent = next(r for r in runs if "analysis.models" in r.data.tags)
    (child,) = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    # The version's config as params, so MLflow's compare view plots block metrics against width.
    assert {k: child.data.params[k] for k in c.VERSION_CONFIG} == {
        "dataset": "cifar10", "depth": "8", "width": "0.25", "seed": "0", "data_fraction": "1", "epochs": "1"}
    for r in (parent, child):  # the analysed examples, as the run's input dataset
        (entry,) = r.inputs.dataset_inputs
        assert entry.dataset.name == "cifar10-test-n60" and [t.value for t in entry.tags] == ["analysis"]
        assert entry.dataset.digest == indices_hash(example_indices(100, AnalysisOptions(num_examples=60)))
    assert run_analyze("--search", f"name='{NAME}'", "--layers", "blocks") == 0
    runs = mlflow.search_runs(search_all_experiments=True, output_format="list", order_by=["start_time DESC"])
    parent = next(r for r in runs if r.data.tags.get("analysis.models", "").count(",") == 1)
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert sorted(child.data.tags[c.ANALYSIS_MODEL_URI] for child in children) == sorted([a, b])
    # Named for the config (the seed, not the version number, tells two models apart in a legend).
    assert {(child.info.run_name, child.data.tags[c.KIND]) for child in children} == {("analyze-d8-w0.25-s0-f1", "analyze"),
                                                                                    ("analyze-d8-w0.25-s1-f1", "analyze")}
    for child in children:  # every analysis sanity-checked; two seeds of one architecture also identify layers
        assert set(c.SANITY_METRICS) <= set(child.data.metrics) and child.data.metrics[c.SANITY_DIAGONAL_ERROR] < 1e-9
        assert 0 <= child.data.metrics[c.SANITY_SEED_IDENTIFICATION] <= 1
    cross_dirs = [f.path for f in MlflowClient().list_artifacts(parent.info.run_id, c.CROSS_DIR)]
    assert cross_dirs == [f"cross/{NAME}-v2__vs__{NAME}-v1"]  # newest first, as the search returns
    cross = artifact(parent.info.run_id, f"{cross_dirs[0]}/cka.npy")
    assert cross.shape == (3, 3) and not np.allclose(cross, 1)  # two inits differ


def test_every_metric_and_figure_the_report_reads_is_one_the_analysis_writes(store):
    """The report's sections and its per-model table name metrics and figures (store contract);
    a full analysis of a model with a planted block must write every one of them, and its
    summary.json must read back with no key the schema does not know."""
    stage2 = tuple(f"stage2.block{b}" for b in range(1, 6))  # ResNet-32: block outputs 1-5 of stage 2 identical
    version = register_model(32, 0.25, 0, silenced=stage2, train_accuracy="0.95")
    assert run_analyze("--models", uri(version), "--layers", "blocks", "--analyses", "cka,pc,probes,deletion,dominant",
                       "--passes", "1", "--probe_examples", "200", "--dominant_top", "5") == 0
    (run,) = [r for r in runs_of("analyze") if c.ANALYSIS_MODEL_URI in r.data.tags]
    assert run.data.metrics[c.BLOCK_COUNT] >= 1  # the planted block is found, so in-block metrics exist
    read = {m for section in SECTIONS.values() for m in section.metrics}
    table = study_rows_frame(pd.DataFrame([{k: 0 for k in [*c.VERSION_CONFIG, *c.VERSION_ACCURACY, *c.ANALYSIS_METRICS]}]))
    read |= set(table.columns) - set(c.VERSION_CONFIG)
    from_training = set(VersionInfo(test_accuracy=0.5, train_accuracy=0.5).to_tags())  # `train` writes these as tags
    assert read - from_training <= set(run.data.metrics), sorted(read - from_training - set(run.data.metrics))
    assert read & from_training == set(c.VERSION_ACCURACY)
    files = {f.path for d in ("", c.DOMINANT_DIR) for f in MlflowClient().list_artifacts(run.info.run_id, f"{c.CKA_DIR}/{d}".rstrip("/"))}
    figures = {s.figure for s in SECTIONS.values() if s.figure} | set(c.MODEL_FIGURES)
    assert {f"{c.CKA_DIR}/{f}" for f in figures} <= files
    local = mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=f"{c.CKA_DIR}/{c.SUMMARY_FILE}")
    summary = ModelSummary.read(local)
    assert summary.extra == {} and summary.dominant is not None and summary.metrics == {
        k: pytest.approx(v) for k, v in run.data.metrics.items()}


@pytest.mark.parametrize("argv,fragment", [
    ([], "no models given"),
    (["--models", "resnet8"], "not a registry URI"),
    (["--models", "models:/nope/3"], "not in the registry"),
    (["--search", "tags.depth = '999'"], "matches no registered model version"),
    (["--batch_size", "3"], "batch_size=3"),
    (["--dataset", "cifar100"], "trained on 'cifar10'"),
    (["--layers", "blocks", "--passes", "0"], "passes=0"),
])
def test_bad_input_fails_in_one_line(store, capsys, monkeypatch, argv, fragment):
    uri = register(0)
    run_id = MlflowClient().create_run(experiment_id="0").info.run_id  # as `mlflow run` does
    monkeypatch.setenv("MLFLOW_RUN_ID", run_id)
    if argv and argv[0] in ("--batch_size", "--dataset", "--layers"):
        argv = ["--models", uri, *argv]
    capsys.readouterr()  # drop MLflow's registration messages
    assert run_analyze(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    failed = mlflow.search_runs(search_all_experiments=True, filter_string="attributes.status = 'FAILED'", output_format="list")
    assert [r.info.run_id for r in failed] == [run_id] and failed[0].data.tags[c.ERROR] == err.removeprefix("error: ")


def test_models_trained_on_different_datasets_are_refused(store, capsys):
    assert run_analyze("--models", f"{register(0)},{register(1, 'cifar100')}") == 2
    assert "different datasets" in capsys.readouterr().err


@pytest.mark.parametrize("given, final", [("auto", "running"), ("batch", "batch")])
def test_the_batchnorm_mode_is_a_param_and_in_the_summary(store, given, final):
    model = register(0)
    assert run_analyze("--models", model, "--batchnorm", given) == 0
    parent, run = sorted(runs_of("analyze"), key=lambda r: c.ANALYSIS_MODEL_URI in r.data.tags)
    assert parent.data.params["batchnorm"] == given
    summary = json.loads(artifact(run.info.run_id, f"{c.CKA_DIR}/{c.SUMMARY_FILE}"))
    assert summary["batchnorm"] == final


def test_the_analysis_lands_on_the_models_page_and_the_newest_analysis_of_each_version_is_tagged(store):
    version = register_model(20, 0.25, 3, silenced=("stage2.block1", "stage2.block2", "stage2.block3"), train_accuracy="0.99")
    u = uri(version)
    assert run_analyze("--models", u, "--layers", "blocks", "--analyses", "cka") == 0
    [first] = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list") if r.data.tags.get(c.ANALYSIS_MODEL_URI)]
    assert first.info.run_name == "analyze-d20-w0.25-s3-f1" and first.data.tags[c.ANALYSIS_NEWEST] == "true"

    # The version's LoggedModel page shows the block metrics, measured on the analysed examples.
    logged = mlflow.get_logged_model(mlflow.models.get_model_info(u).model_id)
    on_model = {m.key: m for m in logged.metrics if m.run_id == first.info.run_id}
    assert on_model[c.BLOCK_COUNT].value == first.data.metrics[c.BLOCK_COUNT] >= 1  # the planted block
    (entry,) = first.inputs.dataset_inputs
    assert (on_model[c.BLOCK_COUNT].dataset_name, on_model[c.BLOCK_COUNT].dataset_digest) == (entry.dataset.name, entry.dataset.digest)
    description = MlflowClient().get_model_version(version.name, version.version).description
    assert "ResNet-20 w0.25 · data 1 · seed 3" in description and "Block structure: 1 block, the largest over" in description
    assert first.info.run_id in description

    # A re-analysis takes the tag: one filter, one point per model.
    assert run_analyze("--models", u, "--layers", "blocks", "--analyses", "cka") == 0
    newest = mlflow.search_runs(search_all_experiments=True, output_format="list",
                                filter_string=f"tags.`{c.ANALYSIS_NEWEST}` = 'true'")
    assert len(newest) == 1 and newest[0].info.run_id != first.info.run_id
    assert c.ANALYSIS_NEWEST not in mlflow.get_run(first.info.run_id).data.tags



def test_further_measures_are_logged_beside_linear_cka_from_the_same_batches(store):
    """A planted block (stage 2's residual branches silenced: its block outputs are one
    representation) is 1 under every measure, which must also agree with each other's diagonal."""
    a = register_model(20, 0.25, 3, silenced=("stage2.block1", "stage2.block2", "stage2.block3"))
    b = register_model(20, 0.25, 4)
    measures = ("linear_cka_biased", "rbf_cka", "mutual_knn")
    assert run_analyze("--models", f"{uri(a)},{uri(b)}", "--layers", "blocks", "--analyses", "cka",
                       "--measures", "linear_cka, " + ",".join(measures), "--knn_k", "5") == 0
    child = next(r for r in runs_of("analyze") if r.data.tags.get(c.ANALYSIS_MODEL_URI) == uri(a))
    planted = slice(3, 6)  # stage2.block1..3 among the 9 block outputs
    for measure in measures:
        matrix = artifact(child.info.run_id, f"{c.CKA_DIR}/{c.MEASURES_DIR}/{measure}.npy")
        assert matrix.shape == (9, 9) and np.allclose(np.diag(matrix), 1.0) and np.allclose(matrix, matrix.T)
        assert np.allclose(matrix[planted, planted], 1.0, atol=1e-9), measure
        assert matrix.min() < 0.99, measure  # elsewhere the layers differ
    files = {f.path for f in MlflowClient().list_artifacts(child.info.run_id, f"{c.CKA_DIR}/{c.MEASURES_DIR}")}
    assert {f"{c.CKA_DIR}/{c.MEASURES_DIR}/{m}.png" for m in measures} <= files
    parent = next(r for r in runs_of("analyze") if c.ANALYSIS_MODELS in r.data.tags)
    cross = [f.path for f in MlflowClient().list_artifacts(parent.info.run_id, c.CROSS_DIR)][0]
    assert artifact(parent.info.run_id, f"{cross}/{c.MEASURES_DIR}/mutual_knn.npy").shape == (9, 9)


def test_layers_by_name_pattern_and_the_list_of_names(store, capsys):
    version = register_model(20, 0.25, 0)
    capsys.readouterr()
    assert run_analyze("--models", uri(version), "--layers", "list") == 0
    printed = capsys.readouterr().out
    assert f"{uri(version)}: layers=all (" in printed and "stage2.block3.relu" in printed and "logits" in printed
    assert not runs_of("analyze")  # listing analyses nothing

    assert run_analyze("--models", uri(version), "--layers", "stage2.*.relu, logits", "--analyses", "cka") == 0
    child = next(r for r in runs_of("analyze") if r.data.tags.get(c.ANALYSIS_MODEL_URI))
    summary = json.loads(artifact(child.info.run_id, f"{c.CKA_DIR}/{c.SUMMARY_FILE}"))
    assert summary["layer_names"] == ["stage2.block1.relu", "stage2.block2.relu", "stage2.block3.relu", "logits"]
    assert artifact(child.info.run_id, f"{c.CKA_DIR}/cka.npy").shape == (4, 4)

    capsys.readouterr()
    assert run_analyze("--models", uri(version), "--layers", "stage9.*") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "layers='stage9.*': 'stage9.*' matches no layer of this network" in err[0] and "layers=list" in err[0]
