"""Layers reached by name (nets.forward.tapped) against what silently breaks other CKA tools: an
in-place op after the hooked layer, one module run at several places, tuple outputs, a layer that
never runs."""

import pytest
import torch
from torch import nn

from analysis.nets.forward import tapped


class Net(nn.Module):
    def __init__(self, inplace: bool = True, reuse: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.act = nn.ReLU(inplace=inplace)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.act2 = self.act if reuse else nn.ReLU(inplace=inplace)
        self.unused = nn.Linear(2, 2)
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        x = self.act(self.conv(x))
        x = self.act2(self.conv2(x))
        return self.head(x.mean((2, 3)))


class Block(nn.Module):
    """A transformer-style block: (hidden states, attention weights)."""

    def forward(self, x):
        return x * 2, torch.ones(1)


class WithBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Block()

    def forward(self, x):
        return self.block(x)[0].sum()


def outputs(model: nn.Module, names: list[str], x: torch.Tensor) -> list[torch.Tensor]:
    seen: list = [None] * len(names)
    with tapped(model, names, lambda i, out: seen.__setitem__(i, out.clone())):
        model(x)
    return seen


def test_an_inplace_op_after_the_layer_does_not_change_what_the_hook_sees():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    inplace = Net(inplace=True)
    plain = Net(inplace=False)
    plain.load_state_dict(inplace.state_dict())
    (seen,) = outputs(inplace, ["conv"], x)
    assert torch.equal(seen, plain.conv(x)) and (seen < 0).any()  # the conv's output, before the ReLU ran on it


def test_a_module_run_at_several_places_is_refused_by_name():
    with pytest.raises(ValueError, match=r"layer 'act' ran 2 times in one forward pass"):
        outputs(Net(reuse=True), ["act"], torch.randn(2, 3, 8, 8))
    outputs(Net(reuse=True), ["conv", "conv2"], torch.randn(2, 3, 8, 8))  # its neighbours are fine


def test_a_layer_that_never_runs_is_refused_by_name():
    with pytest.raises(ValueError, match=r"layer\(s\) 'unused' did not run in the forward pass"):
        outputs(Net(), ["conv", "unused"], torch.randn(2, 3, 8, 8))


def test_a_tuple_output_hands_on_its_first_tensor():
    x = torch.randn(3, 5)
    (seen,) = outputs(WithBlock(), ["block"], x)
    assert torch.equal(seen, x * 2)


def test_every_forward_pass_counts_afresh():
    model, x = Net(), torch.randn(2, 3, 8, 8)
    seen = []
    with tapped(model, ["act2"], lambda i, out: seen.append(out.shape)):
        model(x)
        model(x)  # the second pass is not a second call of the first
    assert len(seen) == 2
