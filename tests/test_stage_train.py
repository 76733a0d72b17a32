"""`train` end to end through the mlflow CLI, and its bad-input handling on a real SQLite store."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from analysis import registry
from analysis.store import lookup
from analysis.data import load_dataset
from analysis.nets import evaluate
from analysis.config import TrainConfig
from analysis.stages.train import REQUEST_ENV, TrainRequest
from analysis.store import contract as c
from entrypoints import train as train_entry
from entrypoints.common import run_main
from tests.conftest import mlflow_cli

TINY = ["-P", "depth=8", "-P", "width=0.25", "-P", "epochs=2", "-P", "batch_size=50", "-P", "device=cpu"]


# Every field of TrainConfig away from its default (a field added later fails the test until it is here).
OFF_DEFAULT = dict(depth=14, width=0.5, seed=7, data_fraction=0.5, epochs=3, batch_size=64, lr=0.03, momentum=0.8,
                   weight_decay=1e-4, dataset="cifar100", data_dir="/data/x", device="cpu", subset_seed=2, eval_batch_size=500,
                   eval_every=2, val_fraction=0.1, channels_last=False, compile=True, snapshot_every=5, pc1_penalty=0.05,
                   pc1_penalty_layers="stage3", arch="resnet50", image_size=64)


def test_a_data_parallel_process_receives_every_setting_of_the_launcher(tmp_path, monkeypatch):
    """torchrun's processes get the launcher's TrainRequest as JSON (REQUEST_ENV), never a rebuilt
    command line: every field of TrainConfig arrives with its value and type, the user's params as sent."""
    default = TrainConfig()
    assert set(OFF_DEFAULT) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert all(getattr(default, k) != v for k, v in OFF_DEFAULT.items())
    request = TrainRequest(TrainConfig(**OFF_DEFAULT), {"nproc": 2, "preset": "quick"}, ("lr", "depth"))
    path = tmp_path / "request.json"
    path.write_text(request.to_json())
    monkeypatch.setenv(REQUEST_ENV, str(path))
    handed = TrainRequest.handed_over()
    got = dataclasses.asdict(handed.config)
    assert got == OFF_DEFAULT and all(type(got[k]) is type(v) for k, v in OFF_DEFAULT.items())
    assert handed.params == request.params and handed.from_preset == request.from_preset


@pytest.mark.slow
def test_mlflow_run_trains_registers_and_loads_back(store, tiny_data):
    proc = mlflow_cli("-e", "train", *TINY, cwd=store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "registered models:/cifar10-resnet8-w0.25/1" in proc.stdout

    client = MlflowClient()
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FINISHED"
    assert run.data.params["depth"] == "8" and run.data.params["train_size"] == "300"
    assert "''" not in run.data.params.values() and run.data.params["data_dir"] == "auto"  # never the literal ''
    # What was left at auto is logged as resolved (the quick preset's CIFAR recipe).
    assert (run.data.params["arch"], run.data.params["arch_resolved"], run.data.params["weight_decay_resolved"]) == \
        ("auto", "resnet", "0.0002")
    assert run.info.run_name == "train-d8-w0.25-s0-f1"
    history = client.get_metric_history(run.info.run_id, "test_accuracy")
    # One point per epoch, and the final score once more as the registered model's own metric.
    assert sorted(m.step for m in history) == [1, 2, 2]
    (linked,) = [m for m in mlflow.get_logged_model(mlflow.models.get_model_info(
        "models:/cifar10-resnet8-w0.25/1").model_id).metrics if m.key == "test_accuracy"]
    assert linked.step == 2 and linked.value == max(history, key=lambda m: m.step).value

    version = client.get_model_version("cifar10-resnet8-w0.25", "1")
    for key, value in {"dataset": "cifar10", "depth": "8", "width": "0.25", "seed": "0", "data_fraction": "1",
                       "train_run_id": run.info.run_id}.items():
        assert version.tags[key] == value
    assert float(version.tags["test_accuracy"]) == pytest.approx(run.data.metrics["test_accuracy"], abs=1e-6)

    # Loaded back by name/version and by alias, it gives the logits it had at the end of
    # training: the test loss recomputed here equals the logged one.
    data = load_dataset("cifar10", tiny_data)
    for uri in ("models:/cifar10-resnet8-w0.25/1", "models:/cifar10-resnet8-w0.25@newest"):
        loaded = registry.load_model(uri)
        score = evaluate(loaded.model, data.test_x, data.test_y)
        assert score["loss"] == pytest.approx(run.data.metrics["test_loss"], rel=1e-5)
        assert score["accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])


def run_train(*argv: str) -> int:
    args = train_entry.parse_args(["--depth", "8", "--width", "0.25", "--epochs", "1", "--batch_size", "50", "--device", "cpu", *argv])
    return run_main(lambda: train_entry.main(args))


@pytest.mark.parametrize("argv,fragment", [
    (["--depth", "21"], "depth=21"),
    (["--width", "0"], "width=0.0"),
    (["--data_fraction", "1.5"], "data_fraction=1.5"),
    (["--dataset", "mnist"], "dataset='mnist'"),
    (["--data_dir", "/nonexistent/cifar"], "/nonexistent/cifar"),
    (["--lr", "1e12"], "loss became nan"),
])
def test_bad_input_fails_the_run_in_one_line_and_registers_nothing(entry_run, capsys, argv, fragment):
    assert run_train(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.run_id == entry_run and run.info.status == "FAILED"
    assert run.data.tags[c.ERROR] == err.removeprefix("error: ")
    assert MlflowClient().search_registered_models() == []


@pytest.mark.slow
def test_bad_input_through_the_cli_exits_non_zero(store):
    proc = mlflow_cli("-e", "train", "-P", "depth=22", cwd=store)
    assert proc.returncode != 0
    assert "error: depth=22 is not 6n+2" in proc.stderr
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED"


def test_rerun_of_a_killed_training_resumes_and_marks_the_dead_run(store, monkeypatch):
    # The first attempt dies after epoch 1 (as a SIGKILL would, leaving its run RUNNING).
    from analysis.stages import train as train_stage

    real_train = train_stage.train

    def dying_train(*args, on_epoch, **kwargs):
        def die(epoch, metrics):
            on_epoch(epoch, metrics)
            if epoch == 1:
                raise SystemExit("killed")
        return real_train(*args, on_epoch=die, **kwargs)

    monkeypatch.setattr(train_stage, "train", dying_train)
    args = train_entry.parse_args(["--depth", "8", "--width", "0.25", "--epochs", "2", "--batch_size", "50", "--device", "cpu"])
    with pytest.raises(SystemExit):
        train_entry.main(args)
    dead = mlflow.last_active_run()
    MlflowClient().update_run(dead.info.run_id, status="RUNNING")  # what a killed process leaves behind
    mlflow.end_run() if mlflow.active_run() else None

    monkeypatch.setattr(train_stage, "train", real_train)
    assert run_train("--epochs", "2") == 0
    runs = {r.info.run_id: r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    assert runs[dead.info.run_id].info.status == "KILLED"
    (resumed,) = [r for r in runs.values() if r.info.run_id != dead.info.run_id]
    assert resumed.data.tags["resumed_from_run"] == dead.info.run_id
    assert [m.step for m in MlflowClient().get_metric_history(resumed.info.run_id, "train_loss")] == [1, 2]
    versions = lookup.find_versions("cifar10-resnet8-w0.25")
    assert len(versions) == 1 and np.isfinite(float(versions[0].tags["test_accuracy"]))


def test_an_unwritable_checkpoint_folder_is_refused_before_any_data_is_read(store, tmp_path, monkeypatch, capsys):
    cache = tmp_path / "ro-cache"
    cache.mkdir()
    (cache / "checkpoints").write_text("a file where the folder should be")  # root ignores permissions
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache))
    assert run_train() == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write training checkpoints" in err and "WIDEDEEP_CACHE_DIR" in err
    assert not (cache / "datasets").exists()  # refused before the data was decoded
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED" and "cannot write training checkpoints" in run.data.tags["error"]


def test_unreadable_images_left_out_are_counted_on_the_run(store, tiny_data, tmp_path, monkeypatch, capsys):
    root = tmp_path / "data"
    shutil.copytree(tiny_data, root)
    (root / "train" / "cat" / "0003.jpg").write_bytes(b"\xff\xd8 truncated")
    assert run_train("--data_dir", str(root)) == 2  # refused, naming the file
    assert "0003.jpg" in capsys.readouterr().err
    monkeypatch.setenv("WIDEDEEP_SKIP_BAD_IMAGES", "1")
    assert run_train("--data_dir", str(root)) == 0
    assert "1 unreadable image(s) left out" in capsys.readouterr().err
    done = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list") if r.info.status == "FINISHED"]
    assert done[0].data.params["skipped_images"] == "1" and done[0].data.params["train_size"] == "299"


def test_the_run_records_its_training_subset_and_the_version_is_a_servable_model(store, tiny_data):
    assert run_train("--data_fraction", "0.5") == 0
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    version = MlflowClient().get_model_version("cifar10-resnet8-w0.25", "1")
    ((entry,), ) = [run.inputs.dataset_inputs]
    assert entry.dataset.name == "cifar10-f0.5" and entry.dataset.digest == version.tags["subset_hash"]
    assert str(tiny_data.resolve()) in entry.dataset.source and [t.value for t in entry.tags] == ["training"]
    profile = json.loads(entry.dataset.profile)  # the subset's shape: 150 of the 300 images
    assert profile["features_shape"] == [150, 3, 32, 32] and profile["targets_shape"] == [150]
    info = mlflow.models.get_model_info("models:/cifar10-resnet8-w0.25/1")
    logged = mlflow.get_logged_model(info.model_id)
    assert logged.source_run_id == run.info.run_id
    assert logged.params["depth"] == "8" and logged.params["data_fraction"] == "0.5"
    metrics = {m.key: m.value for m in logged.metrics}
    assert metrics["test_accuracy"] == pytest.approx(run.data.metrics["test_accuracy"])
    assert registry.load_model("models:/cifar10-resnet8-w0.25/1").training["input_shape"] == [3, 32, 32]  # what serving accepts


@pytest.mark.slow
def test_a_resnet50_family_model_trains_at_its_image_size_registers_and_is_analysed(store):
    from tests.test_stage_analyze import run_analyze

    assert run_train("--arch", "resnet50", "--depth", "53", "--width", "0.25", "--image_size", "40") == 0
    version = MlflowClient().get_model_version("cifar10-resnet50-d53-w0.25", "1")
    assert version.tags["arch"] == "resnet50" and version.tags["image_size"] == "40"
    loaded = registry.load_model("models:/cifar10-resnet50-d53-w0.25/1")
    assert loaded.config.stage_blocks == (3, 4, 7, 3) and loaded.model.stage3.block1.conv1.out_channels == 64
    assert loaded.training["input_shape"] == [3, 40, 40]
    # analyze reads the images at the size the model was trained at
    assert run_analyze("--models", "models:/cifar10-resnet50-d53-w0.25/1", "--layers", "blocks", "--analyses", "cka,probes,deletion",
                       "--probe_examples", "100") == 0
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
              if r.data.tags.get(c.ANALYSIS_MODEL_URI) == "models:/cifar10-resnet50-d53-w0.25/1"]
    summary = json.loads(open(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="cka/summary.json")).read())
    assert len(summary["layer_names"]) == 17  # 3 + 4 + 7 + 3 block outputs
    assert len(summary["probe_accuracy"]["subset"]) == 34 and "stage3.block2.bn3" in summary["probe_accuracy"]["subset"]
    assert len(summary["deletion_accuracy"]) == 17 - 4  # every block but each stage's first (a projection)


def test_a_training_left_at_chance_is_registered_tagged_degenerate_with_a_warning(store, capsys):
    assert run_train("--pc1_penalty", "1e9", "--epochs", "2") == 0
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if line.startswith("warning: cifar10-resnet8-w0.25")]
    assert len(warning) == 1 and "under 1.5 x chance (15.0%)" in warning[0] and "pc1_penalty=1e+09 may be too strong" in warning[0]
    (version,) = lookup.find_versions("cifar10-resnet8-w0.25")
    assert float(version.tags[c.TRAIN_ACCURACY]) < 0.15 and c.DEGENERATE in version.tags
    (run,) = [r for r in mlflow.search_runs(search_all_experiments=True, output_format="list") if r.data.tags.get(c.KIND) == "train"]
    assert run.info.status == "FINISHED" and run.data.tags[c.DEGENERATE] == version.tags[c.DEGENERATE]


def test_degenerate_means_near_chance_on_the_training_set():
    from analysis.stages.train import degenerate_reason

    config = TrainConfig(depth=8, width=0.25)
    assert degenerate_reason(config, 0.149, 10) and not degenerate_reason(config, 0.15, 10)
    assert degenerate_reason(config, 0.014, 100) and not degenerate_reason(config, 0.016, 100)
    assert "lr=0.01 may be too high" in degenerate_reason(config, 0.1, 10)


def test_a_full_disk_at_a_checkpoint_stops_in_one_line_keeps_the_previous_one_and_a_rerun_resumes(store, monkeypatch, capsys):
    import errno

    from analysis.training import checkpoints

    real = checkpoints.save_file
    saves = []

    def disk_fills_at_the_second_save(tensors, filename, metadata=None):
        saves.append(filename)
        if len(saves) == 2:
            with open(filename, "wb") as f:
                f.write(b"\0" * 100)  # what a write cut short leaves
            raise OSError(errno.ENOSPC, "No space left on device", filename)
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(checkpoints, "save_file", disk_fills_at_the_second_save)
    assert run_train("--epochs", "3") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("epoch ")]
    assert len(err) == 1 and "cannot write training checkpoints under" in err[0] and "(no space left on the device)" in err[0]
    assert "rerun the same command to resume" in err[0]
    folder = Path(saves[0]).parent
    assert not list(folder.glob("*.tmp"))  # nothing half-written left behind
    (failed,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert failed.info.status == "FAILED"

    monkeypatch.setattr(checkpoints, "save_file", real)
    assert run_train("--epochs", "3") == 0
    assert "resuming from epoch 1" in capsys.readouterr().err
    assert lookup.find_versions("cifar10-resnet8-w0.25")


def test_a_full_disk_anywhere_else_is_one_line_naming_the_file_and_the_run_fails(store, monkeypatch, capsys):
    import errno

    from analysis.store import model_files

    def full(directory, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(directory / c.MODEL_WEIGHTS_FILE))

    monkeypatch.setattr(model_files, "write_model_files", full)
    assert run_train() == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith(("warning: ", "epoch "))]
    assert len(err) == 1 and err[0].startswith("error: no space left on the device writing /") and c.MODEL_WEIGHTS_FILE in err[0]
    (run,) = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert run.info.status == "FAILED" and not lookup.find_versions("cifar10-resnet8-w0.25")


def test_a_training_whose_output_is_not_a_terminal_prints_a_line_per_epoch(store, capsys):
    assert run_train("--epochs", "2") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in lines] == ["epoch 1/2", "epoch 2/2"]
    assert all(re.search(r"train_loss \d\.\d{4}, train_accuracy 0\.\d{4}, test_accuracy 0\.\d{4}, \d+ images/s$", line) for line in lines)
