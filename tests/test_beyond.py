"""Beyond the paper, end to end through `mlflow run`: training snapshots and the PC1 penalty in
`train`, dominant examples and the training history in `analyze` (docs/beyond.md)."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from analysis.nets import ModelConfig, layer_names
from analysis.store import contract as c
from tests.conftest import mlflow_cli
from tests.fake_store import register_model, uri
from tests.test_stage_analyze import run_analyze

TINY = ["-P", "depth=8", "-P", "width=0.25", "-P", "epochs=2", "-P", "batch_size=50", "-P", "device=cpu"]


def files(run_id: str, path: str) -> set[str]:
    return {f.path.removeprefix(f"{path}/") for f in MlflowClient().list_artifacts(run_id, path)}


@pytest.mark.slow
def test_snapshots_penalty_history_and_dominant_examples_through_mlflow_run(store):
    proc = mlflow_cli("-e", "train", *TINY, "-P", "snapshot_every=1", "-P", "pc1_penalty=0.5",
                      "-P", "pc1_penalty_layers=stage2,stage3", cwd=store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient()
    (train_run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert files(train_run.info.run_id, c.SNAPSHOT_DIR) == {f"epoch-000{e}.safetensors" for e in (0, 1, 2)}
    assert train_run.data.params["pc1_penalty"] == "0.5" and train_run.data.params["pc1_penalty_layers"] == "stage2,stage3"
    shares = client.get_metric_history(train_run.info.run_id, "train_pc1_share")
    assert sorted(m.step for m in shares) == [1, 2] and all(0 < m.value <= 1 for m in shares)
    penalty = {m.step: m.value for m in client.get_metric_history(train_run.info.run_id, "train_pc1_penalty")}
    assert all(penalty[m.step] == pytest.approx(0.5 * m.value) for m in shares)

    model = "models:/cifar10-resnet8-w0.25/1"
    # batchnorm=running: the snapshots analysed as the final model is (auto gives them batch statistics)
    proc = mlflow_cli("-e", "analyze", "-P", f"models={model}", "-P", "analyses=dominant", "-P", "history=true", "-P", "batchnorm=running",
                      "-P", "dominant_top=5", "-P", "num_examples=60", "-P", "batch_size=20", "-P", "passes=1",
                      "-P", "pc_iterations=2", "-P", "device=cpu", cwd=store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags.get(c.ANALYSIS_MODEL_URI) == model]
    run_id = run.info.run_id
    names = layer_names(ModelConfig(8, 0.25))

    # Dominant examples: the overlap matrix, each layer's top 5 by test index, the block's images.
    dominant = f"{c.CKA_DIR}/{c.DOMINANT_DIR}"
    assert {"overlap.npy", "overlap.png", "shares.npy", "top.csv", "statistics.csv"} <= files(run_id, dominant)
    assert any(f.endswith(".png") and f.startswith(("block-", "all-layers")) for f in files(run_id, dominant))
    local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=dominant)
    overlap, shares = np.load(f"{local}/overlap.npy"), np.load(f"{local}/shares.npy")
    assert overlap.shape == (len(names), len(names)) and np.allclose(np.diag(overlap), 1)
    assert shares.shape == (len(names), 60) and np.allclose(shares.sum(1), 1, atol=1e-5)
    top = pd.read_csv(f"{local}/top.csv")
    assert len(top) == 5 * len(names) and top["test_index"].between(0, 99).all()
    summary = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{c.CKA_DIR}/summary.json")).read())
    assert summary["dominant"]["top"][names[0]] == top[top["layer"] == names[0]]["test_index"].tolist()
    assert {"dominant_overlap_outside", "dominant_share_top5"} <= set(run.data.metrics)
    assert "dominant_share_top5" in client.get_model_version("cifar10-resnet8-w0.25", "1").tags

    # History: every snapshot analysed, metrics with step = epoch, the strip of heatmaps.
    for key in ("history/block_largest_frac", "history/pc1_share_mean", "history/dominant_share_top5"):
        assert sorted(m.step for m in client.get_metric_history(run_id, key)) == [0, 1, 2], key
    assert {"heatmaps.png", "metrics.png", "summary.json", "epoch-0000.npy", "epoch-0001.npy", "epoch-0002.npy"} == files(run_id, c.HISTORY_DIR)
    final = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{c.HISTORY_DIR}/epoch-0002.npy")
    # The last snapshot is the registered model: its CKA is the model's own, on the same examples.
    cka = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{c.CKA_DIR}/cka.npy")
    np.testing.assert_allclose(np.load(final), np.load(cka), atol=1e-6)
    initial = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=f"{c.HISTORY_DIR}/epoch-0000.npy")
    assert not np.allclose(np.load(initial), np.load(cka), atol=1e-3)


def test_history_of_a_model_trained_without_snapshots_is_refused_naming_the_fix(store, capsys):
    model = uri(register_model(8, 0.25, 0))
    capsys.readouterr()
    assert run_analyze("--models", model, "--history", "true", "--layers", "blocks") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no training snapshots; train it with -P snapshot_every" in err[0]
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list") if r.data.tags.get(c.KIND) == "analyze"]
    assert run.info.status == "FAILED" and not files(run.info.run_id, c.CKA_DIR)  # refused before any analysis


def planted_block_snapshots(run_id: str, folder) -> None:
    """Snapshots of a ResNet-32 (width 0.25) logged to its training run: epoch 0 as registered,
    epoch 1 with every residual branch of stage 2 silenced (its BN scales zeroed), so that block
    outputs 1 to 5 of stage 2 are one and the same representation: a planted block of 5 of the
    15 block outputs."""
    from safetensors.torch import save_file

    from analysis.store.model_files import load_model

    model = load_model("models:/cifar10-resnet32-w0.25/1").model
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "epoch-0000.safetensors"))
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for block in range(1, 6):
        state[f"stage2.block{block}.bn2.weight"].zero_()
        state[f"stage2.block{block}.bn2.bias"].zero_()
    save_file(state, str(folder / "epoch-0001.safetensors"))
    MlflowClient().log_artifacts(run_id, str(folder), c.SNAPSHOT_DIR)


def test_history_finds_a_block_planted_in_one_snapshot(store, tmp_path):
    version = register_model(32, 0.25, 0, train_accuracy="0.95")
    planted_block_snapshots(version.run_id, tmp_path / "snapshots")
    assert run_analyze("--models", uri(version), "--history", "true", "--layers", "blocks", "--batchnorm", "running") == 0
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags.get(c.ANALYSIS_MODEL_URI) == uri(version)]
    client = MlflowClient()
    largest = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "history/block_largest_frac")}
    assert sorted(largest) == [0, 1]
    # Epoch 0 is the registered model itself: its history entry repeats its own analysis.
    assert largest[0] == run.data.metrics["block_largest_frac"]

    def snapshot_cka(epoch: int) -> np.ndarray:
        return np.load(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path=f"{c.HISTORY_DIR}/epoch-000{epoch}.npy"))

    planted = slice(5, 10)  # stage2.block1..5 among the 15 block outputs
    assert np.allclose(snapshot_cka(1)[planted, planted], 1.0, atol=1e-6)
    assert not np.allclose(snapshot_cka(0)[planted, planted], 1.0, atol=1e-3)
    summary = json.loads(open(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=f"{c.HISTORY_DIR}/summary.json")).read())
    blocks = summary["snapshots"][1]["blocks"]  # the planted layers lie inside one detected block
    assert any(b["start"] <= 5 and b["end"] >= 9 for b in blocks)


def test_history_names_a_missing_and_a_corrupt_snapshot_and_analyses_the_others(store, tmp_path, capsys):
    from safetensors.torch import save_file

    from analysis.store.model_files import load_model

    version = register_model(8, 0.25, 0, training={"epochs": 3, "snapshot_every": 1})  # snapshots 0, 1, 2, 3 expected
    state = load_model(uri(version)).model.state_dict()
    folder = tmp_path / "snapshots"
    folder.mkdir()
    for epoch in (0, 1, 3):  # epoch 2 lost
        save_file({k: v.contiguous() for k, v in state.items()}, str(folder / f"epoch-{epoch:04d}.safetensors"))
    broken = folder / "epoch-0003.safetensors"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated
    MlflowClient().log_artifacts(version.run_id, str(folder), c.SNAPSHOT_DIR)
    capsys.readouterr()
    assert run_analyze("--models", uri(version), "--history", "true", "--layers", "blocks", "--analyses", "cka") == 0
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "leaves out epoch(s) 2, 3" in warning[0] and "snapshots/ of its training run lacks it" in warning[0]
    assert "snapshot_every=1" in warning[0]
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags.get(c.ANALYSIS_MODEL_URI) == uri(version)]
    assert run.info.status == "FINISHED" and run.data.tags[c.HISTORY_SKIPPED] == "2,3"
    steps = {m.step for m in MlflowClient().get_metric_history(run.info.run_id, "history/block_largest_frac")}
    assert steps == {0, 1}


def test_history_with_no_readable_snapshot_is_refused_in_one_line(store, tmp_path, capsys):
    version = register_model(8, 0.25, 0, training={"epochs": 1, "snapshot_every": 1})
    folder = tmp_path / "snapshots"
    folder.mkdir()
    (folder / "epoch-0001.safetensors").write_bytes(b"\x00" * 16)
    MlflowClient().log_artifacts(version.run_id, str(folder), c.SNAPSHOT_DIR)
    capsys.readouterr()
    assert run_analyze("--models", uri(version), "--history", "true", "--layers", "blocks", "--analyses", "cka") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "none of its training snapshots could be analysed (epoch 0:" in err[0]
