"""Fault injection: processes SIGKILLed at chosen and random points, concurrent writers, and
credentials that must never be logged. Real subprocesses, real SQLite and PostgreSQL stores."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from analysis import registry
from analysis.store import contract as c
from analysis.store import lookup
from tests.conftest import REPO, subprocess_env
from tests.fake_store import register_model

pytestmark = pytest.mark.slow  # fault injection: real subprocesses killed and raced

TRAIN = ["--depth", "8", "--width", "0.25", "--epochs", "8", "--batch_size", "50", "--device", "cpu"]

# Runs `train`, SIGKILLing itself right after the model version is created (before the run ends).
KILL_AFTER_REGISTER = """
import os, signal, sys
from analysis.store import model_files
real = model_files.register
def register_then_die(*args, **kwargs):
    version = real(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
model_files.register = register_then_die
from entrypoints import train
from entrypoints.common import run_main
args = train.parse_args(sys.argv[1:])
sys.exit(run_main(lambda: train.main(args)))
"""


def spawn(args: list[str], uri: str, **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=subprocess_env(MLFLOW_TRACKING_URI=uri, **env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]


def store_uri(directory: Path, template: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copy(template, directory / "mlflow.db")
    return f"sqlite:///{directory / 'mlflow.db'}"


def wait_for_checkpoint(proc: subprocess.Popen, ckpt_dir: Path, before: set, newer_than: int | None) -> Path:
    """The training's checkpoint, once it exists (and is newer than `newer_than`, in ns)."""
    deadline = time.time() + 300
    while True:
        new = set(ckpt_dir.glob("*.safetensors")) - before if ckpt_dir.exists() else set()
        if new and (newer_than is None or next(iter(new)).stat().st_mtime_ns > newer_than):
            return next(iter(new))
        assert proc.poll() is None and time.time() < deadline, "train ended without the expected checkpoint"
        time.sleep(0.01)


def kill_soon(proc: subprocess.Popen, rng: random.Random) -> None:
    time.sleep(rng.uniform(0, 0.3))
    assert proc.poll() is None, "training finished before the kill: the test needs more epochs"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def registered_state(uri: str) -> dict[str, torch.Tensor]:
    mlflow.set_tracking_uri(uri)
    (version,) = lookup.search_versions("")
    return registry.load_model(f"models:/{version.name}/{version.version}").model.state_dict()


def runs(uri: str) -> list:
    mlflow.set_tracking_uri(uri)
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_train_killed_at_random_points_resumes_to_the_uninterrupted_weights(tmp_path, store_template, tiny_data, cache_root, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_DATA_DIR", str(tiny_data))
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache_root))
    monkeypatch.chdir(tmp_path)
    reference = store_uri(tmp_path / "reference", store_template)
    finish(spawn(["-m", "entrypoints.train", *TRAIN], reference))

    uri = store_uri(tmp_path / "killed", store_template)
    ckpt_dir = cache_root / "checkpoints"
    before = set(ckpt_dir.glob("*.safetensors")) if ckpt_dir.exists() else set()
    rng = random.Random(0)
    # 1: right after the first checkpoint appears (during epoch 2 or its save); 2: in a resumed
    # run, right after it saves a further epoch; 3: right after registering, before the run ends.
    # Each kill lands at a random moment within 0.3 s of its trigger, while training still runs.
    victim = spawn(["-m", "entrypoints.train", *TRAIN], uri)
    first = wait_for_checkpoint(victim, ckpt_dir, before, None)
    kill_soon(victim, rng)
    victim = spawn(["-m", "entrypoints.train", *TRAIN], uri)
    wait_for_checkpoint(victim, ckpt_dir, before, first.stat().st_mtime_ns)
    kill_soon(victim, rng)
    victim = spawn(["-c", KILL_AFTER_REGISTER, *TRAIN], uri)
    victim.wait(timeout=600)
    assert victim.returncode == -signal.SIGKILL
    finish(spawn(["-m", "entrypoints.train", *TRAIN], uri))

    expected, got = registered_state(reference), registered_state(uri)  # exactly one version each
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    statuses = sorted(r.info.status for r in runs(uri))
    assert "RUNNING" not in statuses and statuses.count("FINISHED") == 1, statuses
    assert not list(ckpt_dir.glob(".*.tmp")) and set(ckpt_dir.glob("*.safetensors")) == before


def test_a_pack_killed_mid_epoch_resumes_to_the_uninterrupted_weights(tmp_path, store_template, tiny_data, cache_root,
                                                                      monkeypatch):
    monkeypatch.setenv("WIDEDEEP_DATA_DIR", str(tiny_data))
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache_root))
    monkeypatch.chdir(tmp_path)
    pack = ["-m", "entrypoints.train", *TRAIN, "--seeds", "0,1,2"]
    reference = store_uri(tmp_path / "reference", store_template)
    finish(spawn(pack, reference))

    uri = store_uri(tmp_path / "killed", store_template)
    ckpt_dir = cache_root / "checkpoints"
    before = set(ckpt_dir.glob("*.safetensors")) if ckpt_dir.exists() else set()
    victim = spawn(pack, uri)
    wait_for_checkpoint(victim, ckpt_dir, before, None)
    kill_soon(victim, random.Random(1))  # in the epoch after the first checkpoint, or its save
    finish(spawn(pack, uri))

    for source in (reference, uri):
        mlflow.set_tracking_uri(source)
        assert sorted(v.tags[c.SEED] for v in lookup.search_versions("")) == ["0", "1", "2"]  # once each
    for seed in ("0", "1", "2"):
        mlflow.set_tracking_uri(reference)
        (expected,) = lookup.search_versions(f"tags.seed = '{seed}'")
        expected = registry.load_model(f"models:/{expected.name}/{expected.version}").model.state_dict()
        mlflow.set_tracking_uri(uri)
        (got,) = lookup.search_versions(f"tags.seed = '{seed}'")
        got = registry.load_model(f"models:/{got.name}/{got.version}").model.state_dict()
        assert all(torch.equal(expected[k], got[k]) for k in expected), seed
    statuses = [(r.data.tags[c.KIND], r.info.status) for r in runs(uri)]
    assert sorted(statuses) == sorted([("pack", "KILLED"), ("pack", "FINISHED")] + [("train", "KILLED")] * 3
                                      + [("train", "FINISHED")] * 3), statuses
    assert set(ckpt_dir.glob("*.safetensors")) == before


def test_analyze_killed_mid_way_leaves_no_complete_looking_run_and_a_rerun_completes(store):
    v = register_model(8, 0.25)
    uri = os.environ["MLFLOW_TRACKING_URI"]
    argv = ["-m", "entrypoints.analyze", "--models", f"models:/{v.name}/{v.version}", "--num_examples", "100",
            "--batch_size", "20", "--passes", "1000", "--device", "cpu", "--analyses", "cka,pc"]
    victim = spawn(argv, uri)
    deadline = time.time() + 120
    while not [r for r in runs(uri) if r.data.tags.get(c.KIND) == "analyze"]:
        assert victim.poll() is None and time.time() < deadline
        time.sleep(0.1)
    time.sleep(1.5)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finish(spawn(argv[:8] + ["--passes", "2"] + argv[10:], uri))  # the victim was still in its 1,000 passes
    analyses = [r for r in runs(uri) if r.data.tags.get(c.KIND) == "analyze"]
    # The killed stage run; the rerun's stage run and its per-model child (the killed run died
    # before its child logged anything: the model is analysed before the child opens).
    assert sorted(r.info.status for r in analyses) == ["FINISHED", "FINISHED", "KILLED"]
    (killed,) = [r for r in analyses if r.info.status == "KILLED"]
    assert "block_count" not in killed.data.metrics  # nothing logged as if complete
    (child,) = [r for r in analyses if c.ANALYSIS_MODEL_URI in r.data.tags]
    assert child.info.status == "FINISHED" and "block_count" in child.data.metrics
    tags = MlflowClient().get_model_version(v.name, v.version).tags
    assert tags["analysis_run_id"] == child.info.run_id


def concurrent_trains(uri: str) -> None:
    procs = [spawn(["-m", "entrypoints.train", *TRAIN[:4], "--epochs", "2", "--batch_size", "50", "--device", "cpu",
                    "--seed", str(seed)], uri, OMP_NUM_THREADS="1") for seed in range(4)]
    for p in procs:
        finish(p)
    found = runs(uri)
    assert len(found) == 4 and all(r.info.status == "FINISHED" for r in found)
    client = MlflowClient()
    for r in found:
        assert [m.step for m in client.get_metric_history(r.info.run_id, "train_loss")] == [1, 2]
    versions = lookup.search_versions("name = 'cifar10-resnet8-w0.25'")
    assert sorted(v.tags["seed"] for v in versions) == ["0", "1", "2", "3"]
    assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]


def test_four_trains_at_once_on_a_fresh_sqlite_store(store):
    """No store exists yet: the four processes create it under the project's lock."""
    fresh = f"sqlite:///{store / 'fresh.db'}"
    mlflow.set_tracking_uri(fresh)
    concurrent_trains(fresh)


@pytest.mark.postgres
def test_four_trains_at_once_on_a_fresh_postgresql_database(pg_store):
    concurrent_trains(pg_store)  # the database is empty: its schema is created under an advisory lock


def test_four_mlflow_runs_at_once_after_the_one_time_store_initialisation(store):
    """`mlflow run` opens the store before project code runs, so a fresh store is first created
    with `python -m analysis.store.init`, as the README says; then four runs at once all finish."""
    fresh = f"sqlite:///{store / 'fresh.db'}"
    init = subprocess.run([sys.executable, "-m", "analysis.store.init", "--tracking_uri", fresh, "--optuna",
                           f"sqlite:///{store / 'optuna.db'}"], cwd=store, env=subprocess_env(), capture_output=True, text=True)
    assert init.returncode == 0 and init.stdout.count("ready: ") == 2, init.stderr[-2000:]
    tiny = ["-P", "depth=8", "-P", "width=0.25", "-P", "epochs=1", "-P", "batch_size=50", "-P", "device=cpu"]
    procs = [subprocess.Popen([sys.executable, "-m", "mlflow", "run", str(REPO), "--env-manager", "local", "-e", "train", *tiny,
                               "-P", f"seed={seed}"], cwd=store, env=subprocess_env(MLFLOW_TRACKING_URI=fresh, OMP_NUM_THREADS="1"),
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for seed in range(4)]
    for proc in procs:
        finish(proc)
    mlflow.set_tracking_uri(fresh)
    found = runs(fresh)
    assert len(found) == 4 and {r.info.status for r in found} == {"FINISHED"}
    assert sorted(v.tags["seed"] for v in lookup.search_versions("")) == ["0", "1", "2", "3"]


@pytest.mark.postgres
def test_credentials_in_uris_never_reach_params_tags_or_output(pg_store, optuna_pg_url, capfd):
    from entrypoints import sweep as sweep_entry
    from entrypoints.common import run_main

    secret = "hunter2-not-logged"  # trust auth: the server ignores it, so it can be planted
    with_password = lambda url: url.replace("postgres@", f"postgres:{secret}@")  # noqa: E731
    tracking, storage = with_password(pg_store), with_password(optuna_pg_url)
    mlflow.set_tracking_uri(tracking)
    os.environ["MLFLOW_TRACKING_URI"] = tracking
    os.environ["WIDEDEEP_OPTUNA_STORAGE"] = storage
    try:
        args = sweep_entry.parse_args(["--depths", "8", "--widths", "0.25", "--epochs", "1", "--batch_size", "50", "--device", "cpu"])
        assert run_main(lambda: sweep_entry.main(args)) == 0
    finally:
        del os.environ["WIDEDEEP_OPTUNA_STORAGE"]
    found = runs(tracking)
    assert len(found) == 2  # the sweep and its one cell
    for r in found:
        assert not any(secret in str(v) for v in [*r.data.params.values(), *r.data.tags.values()])
    for v in lookup.search_versions(""):
        assert not any(secret in str(t) for t in v.tags.values())
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err
    assert any(r.data.tags.get("sweep.storage", "").startswith("postgresql+psycopg2://postgres:***@") for r in found)


def test_every_server_example_binds_to_localhost():
    import re

    docs = [p for p in (REPO / "docs").glob("**/*") if p.suffix in (".md", ".sh", ".yaml", ".yml")]
    text = (REPO / "README.md").read_text() + "".join(p.read_text() for p in docs)
    hosts = re.findall(r"--host[ =](\S+)", text)
    assert hosts and set(hosts) == {"127.0.0.1"}


def test_study_killed_mid_way_resumes_to_a_complete_report(store):
    uri = os.environ["MLFLOW_TRACKING_URI"]
    argv = ["-m", "entrypoints.study", "--preset", "smoke", "--device", "cpu", "--storage", f"sqlite:///{store / 'optuna.db'}",
            "--out", str(store / "report")]
    victim = spawn(argv, uri)
    deadline = time.time() + 300
    while len([r for r in runs(uri) if r.data.tags.get(c.KIND) == "train" and r.info.status == "FINISHED"]) < 2:
        assert victim.poll() is None and time.time() < deadline, "the study never trained two cells"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    finish(spawn(argv, uri))
    found = runs(uri)
    assert "RUNNING" not in {r.info.status for r in found}
    trained = [r for r in found if r.data.tags.get(c.KIND) == "train" and r.info.status == "FINISHED"]
    assert len(trained) == 4  # the two finished before the kill were not trained again
    assert len(lookup.search_versions("")) == 4
    assert (store / "report" / "report.html").exists()


def test_a_parameter_of_the_wrong_type_fails_the_run_in_one_line(store):
    from tests.conftest import mlflow_cli

    proc = mlflow_cli("-e", "train", "-P", "depth=abc", cwd=store)
    assert proc.returncode != 0
    assert "parameter depth: invalid integer value: 'abc'" in proc.stderr
    (run,) = runs(os.environ["MLFLOW_TRACKING_URI"])
    assert run.info.status == "FAILED" and lookup.search_versions("") == []
    assert run.data.tags["error"] == "parameter depth: invalid integer value: 'abc'"


REGISTER_AT = """
import sys, time, mlflow
from analysis.nets import ModelConfig, build_model
from analysis.store import model_files
from tests.fake_store import EXAMPLE
real = model_files.find_versions
def slow_store(*args, **kwargs):  # a busy database: the answer arrives a second late
    found = real(*args, **kwargs)
    time.sleep(1.0)
    return found
model_files.find_versions = slow_store
model = build_model(ModelConfig(8, 0.25))
with mlflow.start_run():
    time.sleep(max(0.0, float(sys.argv[1]) - time.time()))
    model_files.register(model, model.config, "cifar10-resnet8-w0.25", {"lineage": "one-lineage"}, {"dataset": "cifar10"},
                         example=EXAMPLE)
"""


def test_three_writers_of_one_lineage_at_once_register_one_version(store):
    at = str(time.time() + 8)  # all three past their imports, then at once
    procs = [spawn(["-c", REGISTER_AT, at], os.environ["MLFLOW_TRACKING_URI"]) for _ in range(3)]
    for proc in procs:
        finish(proc)
    versions = lookup.find_versions("cifar10-resnet8-w0.25")
    assert len(versions) == 1 and versions[0].tags[c.LINEAGE] == "one-lineage"
