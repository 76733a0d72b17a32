"""Deleting residual blocks (analysis/science/deletion.py)."""

import pytest
import torch

from analysis.nets import ModelConfig, build_model, predict_logits, residual_blocks
from analysis.science.deletion import deleted, deletion_accuracy


def test_deleting_a_block_whose_residual_branch_is_zeroed_changes_no_logit():
    torch.manual_seed(0)
    config = ModelConfig(14, 0.5)
    model = build_model(config).eval()
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    block = model.get_submodule("stage1.block2")
    torch.nn.init.zeros_(block.bn2.weight)
    torch.nn.init.zeros_(block.bn2.bias)
    intact = predict_logits(model, images)
    with deleted(model, "stage1.block2"):
        assert torch.equal(predict_logits(model, images), intact)
    with deleted(model, "stage3.block2"):
        assert not torch.allclose(predict_logits(model, images), intact)
    accuracy = deletion_accuracy(model, config, images, torch.zeros(8, dtype=torch.long))
    assert list(accuracy) == residual_blocks(config, identity_only=True) == ["stage1.block1", "stage1.block2", "stage2.block2", "stage3.block2"]


def test_prefix_reuse_gives_the_accuracy_of_running_each_deleted_model_whole():
    torch.manual_seed(1)
    config = ModelConfig(14, 0.25)
    model = build_model(config).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # a less uniform net than at init
        torch.nn.init.uniform_(bn.weight, 0.5, 1.5)
        torch.nn.init.normal_(bn.bias, 0, 0.5)
    images = torch.randint(0, 256, (40, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():  # centre the logits over the batch, so examples differ in their argmax
        model.logits.bias -= predict_logits(model, images).mean(0)
    labels = predict_logits(model, images).argmax(1)  # the intact model is right on every example
    expected = {}
    for block in residual_blocks(config, identity_only=True):
        with deleted(model, block):
            expected[block] = float((predict_logits(model, images).argmax(1) == labels).float().mean())
    assert deletion_accuracy(model, config, images, labels, batch_size=16) == pytest.approx(expected, abs=1e-6)
    assert min(expected.values()) < 1.0  # some deletion changes a prediction: the comparison means something
