"""Deleting residual blocks (analysis/science/deletion.py)."""

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
