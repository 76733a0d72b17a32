import pytest
import torch

from analysis.nets import ModelConfig, build_model, layer_names, residual_blocks


def expected_parameters(depth: int, width: float, classes: int = 10) -> int:
    """Parameter count from PAPER.md's description, independent of the model code."""
    n = (depth - 2) // 6
    c = [max(1, round(16 * width)), max(1, round(32 * width)), max(1, round(64 * width))]
    total = 3 * 9 * c[0] + 2 * c[0]  # stem conv (no bias) + BN
    c_in = c[0]
    for stage in range(3):
        for block in range(n):
            c_out = c[stage]
            total += 9 * c_in * c_out + 2 * c_out + 9 * c_out * c_out + 2 * c_out
            if stage > 0 and block == 0:
                total += c_in * c_out + 2 * c_out  # 1x1 projection + BN
            c_in = c_out
    return total + c[2] * classes + classes


@pytest.mark.parametrize("depth,width", [(8, 1), (20, 1), (14, 2), (20, 0.5), (56, 1), (110, 1)])
def test_parameter_count_matches_formula(depth, width):
    model = build_model(ModelConfig(depth, width))
    assert sum(p.numel() for p in model.parameters()) == expected_parameters(depth, width)


def test_resnet20_has_the_canonical_parameter_count():
    # He et al. (2016) report 0.27M parameters for the CIFAR ResNet-20.
    assert sum(p.numel() for p in build_model(ModelConfig(20, 1)).parameters()) == 272_474


@pytest.mark.parametrize("depth,width,classes", [(8, 1, 10), (14, 0.5, 100), (20, 2, 10)])
def test_output_shape(depth, width, classes):
    model = build_model(ModelConfig(depth, width, classes)).eval()
    assert model(torch.rand(3, 3, 32, 32)).shape == (3, classes)


@pytest.mark.parametrize("depth", [8, 14, 20, 56, 110])
def test_layer_counts_follow_the_paper(depth):
    n = (depth - 2) // 6
    config = ModelConfig(depth, 1)
    names = layer_names(config, "all")
    assert len(names) == 9 + 21 * n
    assert len(set(names)) == len(names)
    assert len(layer_names(config, "blocks")) == len(residual_blocks(config)) == 3 * n


def test_layer_names_are_in_forward_order_and_reachable():
    config = ModelConfig(14, 0.5)
    model = build_model(config).eval()
    fired, shapes = [], {}
    names = layer_names(config)

    def record(name, output):
        fired.append(name)
        shapes[name] = output.shape

    handles = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: record(n, o)) for n in names]
    model(torch.rand(2, 3, 32, 32))
    for h in handles:
        h.remove()
    assert fired == names
    assert shapes["stage1.block1.add"] == (2, 8, 32, 32)
    assert shapes["stage2.block1.shortcut.conv"] == (2, 16, 16, 16)
    assert shapes["stage3.block2.relu"] == (2, 32, 8, 8)
    assert shapes["pool"] == (2, 32)
    assert shapes["logits"] == (2, 10)


@pytest.mark.parametrize("kwargs,fragment", [
    ({"depth": 21}, "depth=21"),
    ({"depth": 2}, "depth=2"),
    ({"width": 0}, "width=0"),
    ({"width": -1.5}, "width=-1.5"),
])
def test_bad_configs_are_named(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        ModelConfig(**kwargs)


def torchvision_to_ours(state: dict) -> dict:
    """torchvision resnet50 state-dict keys -> this project's names (conv1 -> stem.conv,
    layer3.0.downsample.0 -> stage3.block1.shortcut.conv, fc -> logits)."""
    out = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in ("conv1", "bn1"):
            key = f"stem.{head[:-1]}.{rest}"
        elif head.startswith("layer"):
            block, _, rest = rest.partition(".")
            rest = rest.replace("downsample.0", "shortcut.conv").replace("downsample.1", "shortcut.bn")
            key = f"stage{head[5:]}.block{int(block) + 1}.{rest}"
        elif head == "fc":
            key = f"logits.{rest}"
        out[key] = value
    return out


def test_resnet50_is_torchvisions_resnet50_layer_for_layer():
    import torchvision

    reference = torchvision.models.resnet50().eval()
    ours = build_model(ModelConfig(50, 1.0, 1000, arch="resnet50")).eval()
    ours.load_state_dict(torchvision_to_ours(reference.state_dict()), strict=True)  # every tensor, every shape
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(ours(x), reference(x))


def test_resnet50_family_scales_stage_3_and_each_layer_fires_once():
    from analysis.nets import tapped

    config = ModelConfig(56, 2.0, 10, arch="resnet50")
    assert config.stage_blocks == (3, 4, 8, 3)
    model = build_model(config).eval()
    assert model.stage3.block2.conv1.out_channels == 512 and model.stage2.block2.conv1.out_channels == 128
    assert model.stage3.block8.conv3.out_channels == 2048 and model.stage4.block1.conv1.in_channels == 2048
    names = layer_names(config)
    assert len(names) == 4 + sum(config.stage_blocks) * 10 + 4 * 2 + 2  # stem, blocks, projections, pool + logits
    fired: dict[int, int] = {}
    with tapped(model, names, lambda i, out: fired.__setitem__(i, fired.get(i, 0) + 1)), torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert fired == dict.fromkeys(range(len(names)), 1)  # torchvision's shared ReLU would fire 3 times
    assert residual_blocks(config, identity_only=True)[0] == "stage1.block2"  # every stage's first block projects
    assert layer_names(config, "blocks")[-1] == "stage4.block3.relu"


def test_old_configs_without_an_arch_load_as_the_cifar_family():
    assert ModelConfig.from_dict({"depth": 20, "width": 1, "num_classes": 10}) == ModelConfig(20, 1.0, 10, "resnet")
    with pytest.raises(ValueError, match="depth=52 is not 50\\+3k"):
        ModelConfig(52, 1.0, 10, arch="resnet50")
    with pytest.raises(ValueError, match="arch='vgg' is unknown"):
        ModelConfig(20, 1.0, 10, arch="vgg")
