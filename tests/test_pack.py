"""Packs (training/pack.py): K seeds trained as one network must each end as they end alone."""

import dataclasses

import pytest
import torch

from analysis.config import TrainConfig
from analysis.data import load_dataset
from analysis.nets import ModelConfig, build_model, predict_logits
from analysis.training import Pack, checkpoints, train, train_pack
from analysis.training import loop

TINY = dict(depth=8, width=0.25, epochs=2, batch_size=50, lr=0.05, device="cpu")
# A pack is exact arithmetic on each model's own channels, so in float64 it must match the lone
# trainings to rounding. In float32 the grouped convolutions sum in another order, and the
# backward pass of BatchNorm over 4 channels amplifies that: measured here, up to 7e-4 in a
# weight after one epoch for one seed of three (1e-6 for the others), the same run in float64
# agreeing to 1e-14. So the weights are compared in float64 and the predictions in float32.
ATOL64, RTOL64 = 1e-9, 1e-7


@pytest.fixture
def data(tiny_data, cache_root, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache_root))
    return load_dataset("cifar10", tiny_data)


def plant_divergence(monkeypatch, seed: int) -> None:
    """The network of `seed` starts with an infinite weight, so its loss turns NaN in epoch 1."""
    build = loop.build_model

    def planted(config):
        model = build(config)
        if torch.initial_seed() == seed:
            with torch.no_grad():
                model.logits.weight[0, 0] = float("inf")
        return model

    monkeypatch.setattr(loop, "build_model", planted)


def seeds(*values: int, **changes) -> list[TrainConfig]:
    return [TrainConfig(**{**TINY, **changes, "seed": s}) for s in values]


def test_packing_keeps_every_models_weights_and_outputs():
    models = []
    for seed in (0, 1, 2):
        torch.manual_seed(seed)
        models.append(build_model(ModelConfig(depth=8, width=0.5)).eval())
    pack = Pack(models)
    pack.network.eval()
    images = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        together = pack.per_model(pack.network(images))  # the same images for every model
        apart = pack.per_model(pack.network(torch.cat([images] * 3, dim=1)))
    for k, model in enumerate(models):
        state = pack.state(k)
        assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())
        with torch.no_grad():
            expected = model(images)
        torch.testing.assert_close(together[:, k], expected, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(apart[:, k], expected, atol=1e-5, rtol=1e-5)


@pytest.fixture
def float64():
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def test_a_pack_of_three_seeds_ends_as_the_three_trained_alone_in_float64(data, float64):
    configs = seeds(0, 1, 2, epochs=1)  # 6 SGD steps
    packed = train_pack(configs, data, progress=False)
    for config, result in zip(configs, packed):
        alone = train(config, data, progress=False)
        expected, got = alone.model.state_dict(), result.model.state_dict()
        assert expected.keys() == got.keys() and got["stem.conv.weight"].dtype == torch.float64
        for name in expected:  # parameters and buffers (BatchNorm statistics, its step count)
            torch.testing.assert_close(got[name], expected[name], atol=ATOL64, rtol=RTOL64, msg=f"seed {config.seed}: {name}")
        assert [h["train_loss"] for h in result.history] == pytest.approx([h["train_loss"] for h in alone.history], rel=1e-9)
        assert result.subset_hash == alone.subset_hash and result.error is None
    # and the seeds really are different models
    assert not torch.equal(packed[0].model.state_dict()["logits.weight"], packed[1].model.state_dict()["logits.weight"])


def test_a_float32_pack_predicts_as_the_seeds_trained_alone(data):
    configs = seeds(0, 1, 2)
    for config, result in zip(configs, train_pack(configs, data, progress=False)):
        alone = train(config, data, progress=False)
        agree = (predict_logits(alone.model, data.test_x).argmax(1) == predict_logits(result.model, data.test_x).argmax(1))
        assert agree.float().mean() >= 0.98, config.seed
        assert result.final["test_accuracy"] == pytest.approx(alone.final["test_accuracy"], abs=0.021)
        assert [h["train_loss"] for h in result.history] == pytest.approx([h["train_loss"] for h in alone.history], rel=1e-2)


def test_a_diverging_model_fails_alone_and_the_others_are_untouched(data, monkeypatch):
    configs = seeds(0, 1, 2)
    clean = train_pack(configs, data, progress=False)
    plant_divergence(monkeypatch, seed=1)
    reported = []
    results = train_pack(configs, data, progress=False, on_epoch=lambda k, epoch, _m: reported.append((k, epoch)))
    assert results[1].error is not None and "training loss became nan in epoch 1" in results[1].error
    assert results[1].history == [] and results[1].final == {}
    assert (1, 1) not in reported and (0, 2) in reported and (2, 2) in reported
    for k in (0, 2):
        assert results[k].error is None
        for name, value in clean[k].model.state_dict().items():
            assert torch.equal(results[k].model.state_dict()[name], value), name
    with pytest.raises(FloatingPointError, match="lower lr"):  # alone, the same model is an error
        train(configs[1], data, progress=False)


def test_a_killed_pack_resumes_to_the_same_weights(data, tmp_path):
    configs = seeds(3, 4, epochs=3)
    uninterrupted = train_pack(configs, data, progress=False)
    path = tmp_path / "pack.safetensors"

    def die_after_first_epoch(k, epoch, _metrics):
        if epoch == 1 and k == 1:
            raise KeyboardInterrupt  # as a kill between epochs would

    with pytest.raises(KeyboardInterrupt):
        train_pack(configs, data, checkpoint=path, on_epoch=die_after_first_epoch, progress=False)
    assert [len(h) for h in checkpoints.histories(checkpoints.read_meta(path), 2)] == [1, 1]
    replayed = []
    resumed = train_pack(configs, data, checkpoint=path, on_epoch=lambda k, e, _m: replayed.append((k, e)), progress=False)
    assert sorted(replayed) == [(k, e) for k in (0, 1) for e in (1, 2, 3)]
    for before, after in zip(uninterrupted, resumed):
        assert after.resumed_from_epoch == 1
        assert all(torch.equal(before.model.state_dict()[k], v) for k, v in after.model.state_dict().items())
        assert [h["test_loss"] for h in after.history] == [h["test_loss"] for h in before.history]


def test_pack_snapshots_are_each_models_own_weights(data):
    configs = seeds(0, 1, epochs=2, snapshot_every=1)
    taken: dict[tuple[int, int], dict] = {}
    results = train_pack(configs, data, progress=False, on_snapshot=lambda k, e, state: taken.update({(k, e): state}))
    assert sorted(taken) == [(k, e) for k in (0, 1) for e in (0, 1, 2)]
    for k, result in enumerate(results):
        assert all(torch.equal(taken[(k, 2)][name], v) for name, v in result.model.state_dict().items())


@pytest.mark.parametrize("change, message", [
    ({"width": 0.5}, "differ only in seed, not in width"),
    ({"seed": 0}, "repeats a seed"),
])
def test_a_pack_of_different_trainings_is_refused(data, change, message):
    configs = seeds(0, 1)
    configs[1] = dataclasses.replace(configs[1], **change)
    with pytest.raises(ValueError, match=message):
        train_pack(configs, data, progress=False)


def test_the_pc1_penalty_is_per_model_in_a_pack(data):
    configs = seeds(0, 1, pc1_penalty=0.5, pc1_penalty_layers="stage3")
    packed = train_pack(configs, data, progress=False)
    for config, result in zip(configs, packed):
        alone = train(config, data, progress=False)
        assert [h["train_pc1_share"] for h in result.history] == pytest.approx(
            [h["train_pc1_share"] for h in alone.history], rel=1e-3)
