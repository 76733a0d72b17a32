import math

import pytest
import torch

from analysis.training import settings, checkpoints
from analysis.config import TrainConfig
from analysis.data import load_dataset
from analysis.nets import ModelConfig
from analysis.science.pca import batch_pc1_share
from analysis.training import cosine_lr, train, use_channels_last

TINY = dict(depth=8, width=0.25, epochs=3, batch_size=50, device="cpu")


@pytest.fixture
def data(tiny_data, cache_root, monkeypatch):
    monkeypatch.setenv("WIDEDEEP_CACHE_DIR", str(cache_root))
    return load_dataset("cifar10", tiny_data)


def test_cosine_schedule_decays_from_lr_to_zero():
    assert cosine_lr(0, 100, 0.01) == pytest.approx(0.01)
    assert cosine_lr(50, 100, 0.01) == pytest.approx(0.005)
    assert cosine_lr(100, 100, 0.01) == pytest.approx(0.0, abs=1e-15)


def test_training_reports_every_epoch_and_fits_a_small_set(data):
    seen = []
    result = train(TrainConfig(**{**TINY, "epochs": 8, "lr": 0.05}), data, on_epoch=lambda e, m: seen.append((e, m)), progress=False)
    assert [e for e, _ in seen] == list(range(1, 9))
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    assert result.train_size == 300 and len(result.subset_hash) == 16
    for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy", "lr", "images_per_sec"):
        assert math.isfinite(seen[-1][1][key])


def test_same_seed_same_weights_other_seed_other_weights(data):
    a = train(TrainConfig(**{**TINY, "epochs": 1}), data, progress=False).model.state_dict()
    b = train(TrainConfig(**{**TINY, "epochs": 1}), data, progress=False).model.state_dict()
    c = train(TrainConfig(**{**TINY, "epochs": 1, "seed": 1}), data, progress=False).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["logits.weight"], c["logits.weight"])


def test_killed_run_resumes_to_the_same_weights(data, tmp_path):
    config = TrainConfig(**TINY)
    uninterrupted = train(config, data, progress=False)

    path = tmp_path / "ckpt.safetensors"

    def die_after_first_epoch(epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt  # as a kill between epochs would

    with pytest.raises(KeyboardInterrupt):
        train(config, data, checkpoint=path, checkpoint_meta={"lineage": "x"}, on_epoch=die_after_first_epoch, progress=False)
    assert len(checkpoints.histories(checkpoints.read_meta(path))[0]) == 1
    replayed = []
    resumed = train(config, data, checkpoint=path, on_epoch=lambda e, m: replayed.append(e), progress=False)
    assert resumed.resumed_from_epoch == 1 and replayed == [1, 2, 3]
    expected = uninterrupted.model.state_dict()
    got = resumed.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert [h["test_loss"] for h in resumed.history] == [h["test_loss"] for h in uninterrupted.history]


@pytest.mark.parametrize("damage", ["zero bytes", "truncated", "garbage"])
def test_a_corrupt_checkpoint_is_set_aside_and_training_resumes_from_the_one_before(data, tmp_path, damage, capsys):
    config = TrainConfig(**TINY)
    uninterrupted = train(config, data, progress=False)
    path = tmp_path / "ckpt.safetensors"

    def die_after_second_epoch(epoch, metrics):
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, data, checkpoint=path, on_epoch=die_after_second_epoch, progress=False)
    whole = path.read_bytes()
    path.write_bytes({"zero bytes": b"", "truncated": whole[: len(whole) // 2], "garbage": b"\x00" * len(whole)}[damage])

    resumed = train(config, data, checkpoint=path, progress=False)
    assert resumed.resumed_from_epoch == 1  # the checkpoint before the corrupt one
    expected, got = uninterrupted.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    (aside,) = tmp_path.glob("ckpt.safetensors.corrupt-*")  # set aside, not deleted
    assert len(aside.read_bytes()) == len({"zero bytes": b"", "truncated": whole[: len(whole) // 2]}.get(damage, whole))
    assert "is unreadable" in capsys.readouterr().err


def test_with_both_checkpoints_corrupt_training_starts_from_scratch(data, tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 1})
    path = tmp_path / "ckpt.safetensors"
    for p in (path, tmp_path / "ckpt.safetensors.previous"):
        p.write_bytes(b"not a checkpoint")
    result = train(config, data, checkpoint=path, progress=False)
    assert result.resumed_from_epoch == 0
    fresh = train(config, data, progress=False).model.state_dict()
    assert all(torch.equal(fresh[k], v) for k, v in result.model.state_dict().items())
    assert len(list(tmp_path.glob("*.corrupt-*"))) == 2


def test_a_checkpoint_is_durable_before_the_previous_one_is_replaced(data, tmp_path, monkeypatch):
    """A crash between the two renames of a save leaves only `.previous`, which is then resumed."""
    path = tmp_path / "ckpt.safetensors"
    train(TrainConfig(**{**TINY, "epochs": 2}), data, checkpoint=path, progress=False)
    assert len(checkpoints.histories(checkpoints.read_meta(path))[0]) == 2
    path.rename(tmp_path / "ckpt.safetensors.previous")  # as if killed after the first rename
    assert len(checkpoints.histories(checkpoints.read_meta(path))[0]) == 2 and path.exists()


def test_no_partial_checkpoint_files_are_left(data, tmp_path):
    path = tmp_path / "ckpt.safetensors"
    train(TrainConfig(**{**TINY, "epochs": 2}), data, checkpoint=path, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.safetensors", "ckpt.safetensors.previous"]
    assert {oct(p.stat().st_mode & 0o777) for p in tmp_path.iterdir()} == {"0o644"}  # a shared cache: readable by all
    checkpoints.remove(path)
    assert list(tmp_path.iterdir()) == []


def test_diverging_loss_is_an_error_naming_lr(data):
    with pytest.raises(FloatingPointError, match=r"loss became nan in epoch 1; lower lr=1000000000000.0"):
        train(TrainConfig(**{**TINY, "epochs": 2, "lr": 1e12}), data, progress=False)


@pytest.mark.parametrize("field,value", [
    ("data_fraction", 0.0), ("data_fraction", 1.5), ("epochs", 0), ("batch_size", 1), ("lr", -1.0), ("device", "tpu"),
])
def test_bad_config_values_are_named(field, value):
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field,value", [
    ("dataset", "mnist"), ("depth", 21), ("width", 0.0), ("arch", "vgg"), ("pc1_penalty_layers", "stage4"),
])
def test_settings_that_name_nothing_that_exists_are_named(field, value):
    config = TrainConfig(**{field: value, "pc1_penalty": 0.1})  # a config holds values; what they name is checked apart
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        settings.check(config)
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        train(config, None, progress=False)  # and again where training starts


def test_fraction_leaving_fewer_examples_than_a_batch(data):
    with pytest.raises(ValueError, match="fewer than batch_size"):
        train(TrainConfig(**{**TINY, "data_fraction": 0.1}), data, progress=False)


def test_eval_every_skips_test_passes_but_always_scores_the_last_epoch(data):
    result = train(TrainConfig(**{**TINY, "epochs": 5, "eval_every": 2}), data, progress=False)
    assert ["test_accuracy" in h for h in result.history] == [False, True, False, True, True]


def test_channels_last_gives_the_same_logits_within_float_tolerance(data):
    from analysis.nets import predict_logits

    narrow = {**TINY, "width": 0.5, "epochs": 1}  # 8 channels: channels_last is used on the CPU
    assert use_channels_last(True, ModelConfig(depth=8, width=0.5), torch.device("cpu"))
    a = train(TrainConfig(**{**narrow, "channels_last": True}), data, progress=False).model
    b = train(TrainConfig(**{**narrow, "channels_last": False}), data, progress=False).model
    torch.testing.assert_close(predict_logits(a, data.test_x), predict_logits(b, data.test_x), atol=1e-3, rtol=1e-3)


def test_channels_last_is_skipped_on_the_cpu_only_where_torch_crashes():
    # torch 2.14.1's CPU backward of a 1x1 stride-2 conv in channels_last with 2-6 input channels
    # hangs or crashes: width 0.25 (4 channels in stage 1) must train in the default format there.
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    narrow, standard = ModelConfig(depth=8, width=0.25), ModelConfig(depth=8, width=1.0)
    assert not use_channels_last(True, narrow, cpu)
    assert use_channels_last(True, narrow, cuda)
    assert use_channels_last(True, standard, cpu)
    assert not use_channels_last(False, standard, cpu)


def test_training_step_flops_match_a_hand_count_of_resnet8():
    from analysis.training import step_flops_per_image

    # Multiply-accumulates per image of ResNet-8 at width 1 (convolutions and the linear head).
    macs = {"stem": 32 * 32 * 16 * 27, "stage1": 2 * 32 * 32 * 16 * 144, "stage2": 16 * 16 * 32 * (144 + 288 + 16),
            "stage3": 8 * 8 * 64 * (288 + 576 + 32), "logits": 64 * 10}
    forward = 2 * sum(macs.values())
    # Backward: the gradients of the weights and of the inputs (twice the forward), but the image needs none.
    assert step_flops_per_image(ModelConfig(8, 1), (3, 32, 32)) == 3 * forward - 2 * macs["stem"]


def test_snapshots_are_taken_at_the_start_every_k_epochs_and_at_the_end_and_survive_a_resume(data, tmp_path):
    config = TrainConfig(**{**TINY, "epochs": 5, "snapshot_every": 2})
    folder = checkpoints.snapshot_dir(tmp_path / "ckpt.safetensors")
    taken = []

    def keep(epoch, state):
        taken.append(epoch)
        checkpoints.save_snapshot(folder, epoch, state)

    def die_after_third_epoch(epoch, metrics):
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, data, checkpoint=tmp_path / "ckpt.safetensors", on_epoch=die_after_third_epoch, on_snapshot=keep, progress=False)
    result = train(config, data, checkpoint=tmp_path / "ckpt.safetensors", on_snapshot=keep, progress=False)
    assert taken == [0, 2, 4, 5]  # epoch 0 once, before the crash; nothing taken twice
    assert sorted(p.name for p in folder.iterdir()) == [f"epoch-000{e}.safetensors" for e in (0, 2, 4, 5)]
    from safetensors.torch import load_file

    final = load_file(str(folder / "epoch-0005.safetensors"))
    assert all(torch.equal(final[k], v) for k, v in result.model.state_dict().items())
    assert not torch.equal(load_file(str(folder / "epoch-0000.safetensors"))["logits.weight"], final["logits.weight"])
    checkpoints.remove(tmp_path / "ckpt.safetensors")
    assert not folder.exists()


def test_batch_pc1_share_matches_a_float64_eigendecomposition_and_has_a_gradient():
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(40, 6, generator=g) * torch.tensor([5.0, 2, 1, 1, 0.5, 0.1])).requires_grad_()
    share = batch_pc1_share(x)
    centred = (x.detach() - x.detach().mean(0)).double()
    eig = torch.linalg.eigvalsh(centred.T @ centred)
    assert float(share.detach()) == pytest.approx(float(eig[-1] / eig.sum()), rel=1e-6)
    share.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    rank_one = torch.outer(torch.arange(10.0), torch.ones(3))
    assert float(batch_pc1_share(rank_one)) == pytest.approx(1.0)
    assert float(batch_pc1_share(torch.zeros(5, 3))) == 0.0  # a dead layer: no NaN in the loss


def test_the_pc1_penalty_lowers_the_penalised_layers_pc1_share(data):
    from analysis.nets import penalised_layers, stream

    base = {**TINY, "epochs": 4, "lr": 0.05}
    plain = train(TrainConfig(**base), data, progress=False)
    penalised = train(TrainConfig(**base, pc1_penalty=2.0), data, progress=False)
    assert "train_pc1_share" not in plain.history[-1]
    shares = [h["train_pc1_share"] for h in penalised.history]
    assert penalised.history[-1]["train_pc1_penalty"] == pytest.approx(2.0 * shares[-1])
    names = penalised_layers(ModelConfig(8, 0.25), "all")

    def pc1_share_on_test(model):
        out = []
        stream(model, data.test_x[:100], names, lambda i, a, rows: out.append(float(batch_pc1_share(a))), batch_size=100)
        return sum(out) / len(out)

    assert pc1_share_on_test(penalised.model) < 0.8 * pc1_share_on_test(plain.model)


def test_fingerprints_ignore_snapshots_and_an_unused_penalty():
    base = TrainConfig(**TINY)
    assert TrainConfig(**TINY, snapshot_every=5).fingerprint() == base.fingerprint()
    assert TrainConfig(**TINY, pc1_penalty_layers="stage3").fingerprint() == base.fingerprint()
    assert TrainConfig(**TINY, pc1_penalty=0.1).fingerprint() != base.fingerprint()
    assert TrainConfig(**TINY, pc1_penalty=0.1).fingerprint() != TrainConfig(**TINY, pc1_penalty=0.1, pc1_penalty_layers="stage3").fingerprint()
