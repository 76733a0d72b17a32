"""`train -P seeds=...` on a real SQLite store: each model of a pack is recorded as a lone `train`
records it (run, params, metrics, version, fingerprint), under a pack run; failures and resumes."""

import mlflow
import pytest
from mlflow import MlflowClient

from analysis import registry
from analysis.config import TrainConfig
from analysis.stages import pack as pack_stage
from analysis.stages.train import registered_version
from analysis.store import contract as c
from analysis.store import lookup
from tests.conftest import mlflow_cli
from tests.test_pack import plant_divergence
from tests.test_stage_train import TINY, run_train

NAME = "cifar10-resnet8-w0.25"


def all_runs() -> list:
    return mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_a_pack_registers_each_seed_as_a_lone_training_would(entry_run, capsys):
    assert run_train("--seeds", "1,2") == 0
    assert capsys.readouterr().out.count("registered models:/") == 2
    assert run_train("--seed", "3") == 0  # a lone training beside it, to compare with
    runs = {r.info.run_id: r for r in all_runs()}
    pack = runs[entry_run]
    assert pack.info.status == "FINISHED" and pack.data.tags[c.KIND] == "pack"
    assert pack.data.params[c.PACK_SEEDS] == "1,2" and pack.info.run_name == "pack-d8-w0.25-s1,2-f1"
    assert pack.data.metrics[c.PACK_IMAGES_PER_SEC] > 0
    children = sorted((r for r in runs.values() if r.data.tags.get(c.PARENT_RUN) == entry_run),
                      key=lambda r: r.data.params["seed"])
    (lone,) = [r for r in runs.values() if r.info.run_id != entry_run and c.PARENT_RUN not in r.data.tags]
    assert [r.info.run_name for r in children] == ["train-d8-w0.25-s1-f1", "train-d8-w0.25-s2-f1"]
    client = MlflowClient()
    for seed, child in zip((1, 2), children):
        assert child.info.status == "FINISHED" and child.data.tags[c.KIND] == "train"
        assert child.data.tags[c.PACK_RUN] == entry_run
        # the same params as the lone run, the seed its own
        assert set(child.data.params) - {"seeds"} == set(lone.data.params) - {"seeds"}
        assert child.data.params["seed"] == str(seed) and child.data.params["train_size"] == lone.data.params["train_size"]
        assert set(child.data.metrics) == set(lone.data.metrics)
        assert [m.step for m in client.get_metric_history(child.info.run_id, c.TRAIN_LOSS)] == [1]
        assert [d.dataset.name for d in child.inputs.dataset_inputs] == ["cifar10-f1"]
        version = client.get_model_version(NAME, child.data.tags[c.MODEL_VERSION])
        assert version.tags[c.SEED] == str(seed) and version.tags[c.PACK_RUN] == entry_run
        assert version.tags[c.TRAIN_RUN_ID] == child.info.run_id
        # the fingerprint of a lone training of the same config: sweeps and reruns skip it
        config = TrainConfig(depth=8, width=0.25, epochs=1, batch_size=50, device="cpu", seed=seed)
        assert registered_version(config, child.info.experiment_id).version == version.version
        # served as any version: the registered weights give the logged test accuracy
        loaded = registry.load_model(f"models:/{NAME}/{version.version}")
        assert loaded.config.depth == 8
    lone_version = client.get_model_version(NAME, lone.data.tags[c.MODEL_VERSION])
    assert set(version.tags) - {c.PACK_RUN} == set(lone_version.tags)


def test_a_diverging_seed_fails_alone_and_the_others_register(entry_run, capsys, monkeypatch):
    plant_divergence(monkeypatch, seed=1)
    assert run_train("--seeds", "0,1,2") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # after the others' registration
    assert err.startswith("error: 1 of 3 models diverged: seed 1 (training loss became nan") 
    assert "registered seeds: 0, 2" in err
    runs = {r.info.run_id: r for r in all_runs()}
    assert runs[entry_run].info.status == "FAILED" and runs[entry_run].data.tags[c.PACK_FAILED] == "1"
    by_seed = {r.data.params["seed"]: r for r in runs.values() if r.info.run_id != entry_run}
    assert by_seed["1"].info.status == "FAILED" and "training loss became nan" in by_seed["1"].data.tags[c.ERROR]
    assert by_seed["0"].info.status == by_seed["2"].info.status == "FINISHED"
    assert sorted(v.tags[c.SEED] for v in lookup.find_versions(NAME)) == ["0", "2"]


def test_a_killed_pack_resumes_and_registers_each_seed_once(store, monkeypatch):
    real = pack_stage.train_pack

    def dying(*args, on_epoch, **kwargs):
        def die(k, epoch, metrics):
            on_epoch(k, epoch, metrics)
            if epoch == 1 and k == 1:
                raise SystemExit("killed")
        return real(*args, on_epoch=die, **kwargs)

    monkeypatch.setattr(pack_stage, "train_pack", dying)
    with pytest.raises(SystemExit):
        run_train("--seeds", "0,1", "--epochs", "2")
    dead = {r.info.run_id for r in all_runs()}
    client = MlflowClient()
    for run_id in dead:  # what a killed process leaves behind
        client.update_run(run_id, status="RUNNING")
    while mlflow.active_run():
        mlflow.end_run()

    monkeypatch.setattr(pack_stage, "train_pack", real)
    assert run_train("--seeds", "0,1", "--epochs", "2") == 0
    runs = {r.info.run_id: r for r in all_runs()}
    assert all(runs[r].info.status == "KILLED" for r in dead)
    resumed = [r for r in runs.values() if r.info.run_id not in dead and r.data.tags[c.KIND] == "train"]
    assert len(resumed) == 2 and all(r.data.tags[c.RESUMED_FROM] in dead for r in resumed)
    for run in resumed:
        assert [m.step for m in client.get_metric_history(run.info.run_id, c.TRAIN_LOSS)] == [1, 2]
    assert sorted(v.tags[c.SEED] for v in lookup.find_versions(NAME)) == ["0", "1"]


@pytest.mark.parametrize("argv, fragment", [
    (["--seeds", "3"], "seeds='3' is not allowed; use two or more seeds"),
    (["--seeds", "0,1", "--seed", "2"], "seed=2 is not allowed; use 0 with seeds=0,1"),
    (["--seeds", "0,1", "--nproc", "2"], "nproc=2 is not allowed; use 1 with seeds"),
    (["--seeds", "0,x"], "seeds='0,x' is not a comma-separated list of ints"),
])
def test_bad_seeds_fail_in_one_line_before_any_work(entry_run, capsys, argv, fragment):
    assert run_train(*argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    assert [r.info.run_id for r in all_runs()] == [entry_run]


@pytest.mark.slow
def test_mlflow_run_trains_a_pack_and_analyze_reads_its_models_as_any_others(store):
    proc = mlflow_cli("-e", "train", *TINY, "-P", "seeds=0,1", cwd=store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("registered models:/cifar10-resnet8-w0.25/") == 2
    (pack,) = [r for r in all_runs() if r.data.tags[c.KIND] == "pack"]
    assert pack.info.status == "FINISHED" and pack.data.params["seeds"] == "0,1"
    proc = mlflow_cli("-e", "analyze", "-P", f"search=name='{NAME}'", "-P", "num_examples=60", "-P", "batch_size=20",
                      "-P", "passes=1", "-P", "device=cpu", cwd=store)
    assert proc.returncode == 0, proc.stderr[-3000:]
    analysed = [r for r in all_runs() if r.data.tags[c.KIND] == "analyze" and c.ANALYSIS_MODEL_URI in r.data.tags]
    assert sorted(r.data.tags[c.SEED] for r in analysed) == ["0", "1"]
    assert all(r.info.status == "FINISHED" and c.BLOCK_COUNT in r.data.metrics for r in analysed)
