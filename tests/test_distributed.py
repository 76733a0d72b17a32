"""Data-parallel training (training/distributed.py) with gloo processes on the CPU: the same
weights as one process on the global batch, a killed rank fails the run and a rerun resumes, and
the ImageNet family trains through `mlflow run -P nproc=2` and is analysed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
import torch.nn.functional as F
from mlflow import MlflowClient

from analysis import registry
from analysis.config import TrainConfig
from analysis.data import load_dataset, subset_indices
from analysis.device import prepare_model
from analysis.nets import build_model, decayed_parameters
from analysis.store import contract as c
from analysis.training import distributed, train
from analysis.training.batches import EpochBatches
from analysis.training.loop import cosine_lr, use_channels_last
from analysis.training.settings import model_config
from tests.conftest import REPO

# 2 processes, global batch 20 (10 each), 3 steps of a ResNet-8 at width 0.5.
CONFIG = TrainConfig(depth=8, width=0.5, epochs=1, batch_size=20, lr=0.05, data_fraction=0.2, device="cpu")
# float32 sums of gradients in another order, over 3 SGD steps with momentum.
WEIGHT_TOLERANCE = 1e-5


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world: int, port: int, data_dir: str, cache: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), WIDEDEEP_CACHE_DIR=cache)
    distributed.init(torch.device("cpu"))
    try:
        result = train(CONFIG, load_dataset("cifar10", data_dir), progress=False)
        if rank == 0:
            torch.save({k: v.detach() for k, v in result.model.named_parameters()}, out)
    finally:
        distributed.close()


def _one_process_on_the_global_batch(data, world: int) -> dict[str, torch.Tensor]:
    """The reference: one process, each global batch's slices through BatchNorm apart (as the
    ranks see them), the mean of their losses as the step's loss."""
    torch.manual_seed(CONFIG.seed)
    network = model_config(CONFIG, data.num_classes)
    channels_last = use_channels_last(CONFIG.channels_last, network, torch.device("cpu"))
    model = prepare_model(build_model(network), torch.device("cpu"), channels_last)
    kernels, others = decayed_parameters(model)
    optimizer = torch.optim.SGD([{"params": kernels, "weight_decay": CONFIG.weight_decay}, {"params": others, "weight_decay": 0.0}],
                                lr=CONFIG.lr, momentum=CONFIG.momentum)
    subset = subset_indices(data.train_y, CONFIG.data_fraction, CONFIG.subset_seed)
    batches = EpochBatches(data.train_x[subset], data.train_y[subset], CONFIG.batch_size, CONFIG.seed, distributed.Shard(),
                           torch.device("cpu"), torch.channels_last if channels_last else torch.contiguous_format)
    model.train()
    for step, (x, y) in enumerate(batches.epoch(0)):
        for group in optimizer.param_groups:
            group["lr"] = cosine_lr(step, batches.steps, CONFIG.lr)
        loss = sum(F.cross_entropy(model(xs), ys) for xs, ys in zip(x.chunk(world), y.chunk(world))) / world
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {k: v.detach() for k, v in model.named_parameters()}


@pytest.mark.slow  # two torchrun-style processes
def test_two_gloo_processes_end_with_the_weights_of_one_process_on_the_global_batch(tiny_data, tmp_path):
    out = tmp_path / "rank0.pt"
    args = (2, _free_port(), str(tiny_data), str(tmp_path / "cache"), str(out))
    torch.multiprocessing.start_processes(_rank, args, nprocs=2, start_method="spawn")
    ddp = torch.load(out)
    reference = _one_process_on_the_global_batch(load_dataset("cifar10", tiny_data), world=2)
    assert ddp.keys() == reference.keys()
    torch.manual_seed(CONFIG.seed)
    start = dict(build_model(model_config(CONFIG, 10)).named_parameters())
    moved = max(float((reference[k] - start[k].detach()).abs().max()) for k in reference)
    assert moved > 100 * WEIGHT_TOLERANCE  # training moved the weights well beyond the tolerance
    for k in reference:
        torch.testing.assert_close(ddp[k], reference[k], atol=WEIGHT_TOLERANCE, rtol=WEIGHT_TOLERANCE, msg=k)


def test_a_global_batch_that_does_not_split_among_the_processes_is_refused(tiny_data, cache_root, monkeypatch):
    assert distributed.Shard(rank=1, world=3).rows(21) == slice(7, 14)
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache_root))
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(ValueError, match="batch_size=20 does not split evenly among 3 processes; use a multiple of 3"):
        train(CONFIG, load_dataset("cifar10", tiny_data), progress=False)


def _train_command(*argv: str) -> list[str]:
    return [sys.executable, "-m", "entrypoints.train", "--depth", "8", "--width", "0.5", "--batch_size", "20",
            "--lr", "0.05", "--device", "cpu", "--nproc", "2", *argv]


def _pids_with(env_entries: set[str]) -> list[int]:
    """Processes of this user whose environment holds all of `env_entries` ('KEY=value')."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            env = set((proc / "environ").read_bytes().split(b"\0"))
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and {e.encode() for e in env_entries} <= env:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_a_killed_rank_fails_the_run_registers_nothing_and_a_rerun_resumes(store, tmp_path, monkeypatch):
    cache = tmp_path / "own-cache"  # tells this test's processes apart, and holds the checkpoint
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache))
    command = _train_command("--epochs", "24", "--data_fraction", "0.5")
    launcher = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while not list((cache / "checkpoints").glob("*.safetensors")) and time.time() < deadline and launcher.poll() is None:
        time.sleep(0.2)
    assert launcher.poll() is None, launcher.communicate()[0][-3000:]
    ranks = _pids_with({f"WIDEDEEP_CACHE_DIR={cache}", "RANK=1"})
    assert len(ranks) == 1, ranks
    os.kill(ranks[0], signal.SIGKILL)
    output = launcher.communicate(timeout=240)[0]
    assert launcher.returncode == 2, output[-3000:]
    assert "error: a training process failed" in output
    [failed] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert failed.info.status == "FAILED" and "training process failed" in failed.data.tags[c.ERROR]
    assert MlflowClient().search_registered_models() == []
    done = len(MlflowClient().get_metric_history(failed.info.run_id, "train_loss"))
    assert 1 <= done < 24

    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    resumed = next(r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")
                   if r.info.run_id != failed.info.run_id)
    assert resumed.info.status == "FINISHED" and resumed.data.tags[c.RESUMED_FROM] == failed.info.run_id
    assert resumed.data.params["nproc"] == "2"
    assert [m.step for m in MlflowClient().get_metric_history(resumed.info.run_id, "train_loss")] == list(range(1, 25))
    [version] = MlflowClient().search_model_versions("name='cifar10-resnet8-w0.5'")
    assert version.tags[c.TRAIN_RUN_ID] == resumed.info.run_id


@pytest.mark.slow
def test_the_resnet50_family_trains_on_a_streamed_folder_in_two_processes_and_is_analysed(store, mixed_folder, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_DATA_DIR", str(mixed_folder))
    params = {"dataset": "imagefolder", "arch": "resnet50", "depth": 50, "width": 0.25, "nproc": 2, "device": "cpu",
              "image_size": 64, "epochs": 2, "batch_size": 12, "lr": 0.01}
    mlflow_run = [sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local"]
    train_run = subprocess.run([*mlflow_run, "-e", "train", *[a for k, v in params.items() for a in ("-P", f"{k}={v}")]],
                               capture_output=True, text=True, timeout=600)
    assert train_run.returncode == 0, train_run.stderr[-3000:]
    [version] = MlflowClient().search_model_versions("name='imagefolder-resnet50-d50-w0.25'")
    assert (version.tags["arch"], version.tags["image_size"]) == ("resnet50", "64")
    run = mlflow.get_run(version.tags[c.TRAIN_RUN_ID])
    assert run.info.status == "FINISHED" and run.data.params["nproc"] == "2"
    assert registry.load_model(f"models:/{version.name}/1").training["input_shape"] == [3, 64, 64]  # what serving accepts
    analyze_run = subprocess.run([*mlflow_run, "-e", "analyze", "-P", f"models=models:/{version.name}/1", "-P", "layers=blocks",
                                  "-P", "analyses=cka,pc,dominant", "-P", "num_examples=12", "-P", "batch_size=6",
                                  "-P", "passes=2", "-P", "dominant_top=2", "-P", "device=cpu"],
                                 capture_output=True, text=True, timeout=600)
    assert analyze_run.returncode == 0, analyze_run.stderr[-3000:]
    analysed = MlflowClient().get_model_version(version.name, "1").tags
    model_run = mlflow.get_run(analysed[c.ANALYSIS_RUN_ID])
    assert model_run.info.status == "FINISHED" and c.ANALYSIS_ACCURACY in model_run.data.metrics
    assert any(a.path == "cka/dominant" for a in MlflowClient().list_artifacts(model_run.info.run_id, "cka"))


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, what
        time.sleep(0.2)


@pytest.mark.slow
def test_the_launcher_owns_its_ranks_when_terminated_or_killed_and_a_rerun_at_once_registers_once(store, tmp_path, monkeypatch):
    cache = tmp_path / "own-cache"
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache))
    command = _train_command("--epochs", "12", "--data_fraction", "0.5")
    checkpoint = cache / "checkpoints"

    def started(launcher: subprocess.Popen, after_epoch: int = 0) -> list[int]:
        """The launcher's processes (torchrun and its ranks) once rank 0 has checkpointed past `after_epoch`."""
        def checkpointed() -> bool:
            assert launcher.poll() is None, launcher.communicate()[0][-3000:]
            runs = mlflow.search_runs(search_all_experiments=True, output_format="list", filter_string="attributes.status = 'RUNNING'")
            return any(len(MlflowClient().get_metric_history(r.info.run_id, "train_loss")) > after_epoch for r in runs)
        _wait_for(checkpointed, 240, "no epoch was trained")
        owned = _pids_with({f"WIDEDEEP_LAUNCHER_PID={launcher.pid}"})
        assert len(owned) >= 3, owned  # torchrun and two ranks
        return owned

    def gone(pids: list[int]) -> bool:
        return not [p for p in pids if Path(f"/proc/{p}").exists() and "zombie" not in Path(f"/proc/{p}/status").read_text()]

    # SIGTERM: the launcher stops its ranks, and its run ends FAILED.
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    owned = started(first)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) != 0
    _wait_for(lambda: gone(owned), 20, "ranks outlived their terminated launcher")
    [terminated] = mlflow.search_runs(search_all_experiments=True, output_format="list")
    assert terminated.info.status == "FAILED" and terminated.data.tags[c.PROCESS_PID] == str(first.pid)  # the launcher's pid

    # SIGKILL: nothing can stop the ranks but themselves; a rerun started at once waits for them, then resumes.
    second = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    done = len(MlflowClient().get_metric_history(terminated.info.run_id, "train_loss"))
    owned = started(second, after_epoch=0)
    second.kill()
    second.wait()
    rerun = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert gone(owned), "orphaned ranks outlived their killed launcher"
    assert list(checkpoint.glob("*.safetensors")) == []  # registered, then removed

    [version] = MlflowClient().search_model_versions("name='cifar10-resnet8-w0.5'")  # exactly one version of the lineage
    runs = {r.info.run_id: r for r in mlflow.search_runs(search_all_experiments=True, output_format="list")}
    assert version.tags[c.TRAIN_RUN_ID] in runs and runs[version.tags[c.TRAIN_RUN_ID]].info.status == "FINISHED"
    assert sorted(r.info.status for r in runs.values()) == ["FAILED", "FAILED", "FINISHED"] or \
        sorted(r.info.status for r in runs.values()) == ["FAILED", "FINISHED", "KILLED"]
    assert done >= 1
