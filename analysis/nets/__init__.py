"""The model families, built from a small config, with every compared layer reachable by name."""

from torch import nn

from .bottleneck import BottleneckResNet
from .forward import as_input, evaluate, feature_widths, flat_features, predict_logits, stream, tapped
from .resnet import ARCHS, ModelConfig, ResNet, decayed_parameters, layer_names, penalised_layers, residual_blocks

__all__ = ["ARCHS", "ModelConfig", "ResNet", "BottleneckResNet", "build_model", "decayed_parameters", "layer_names",
           "penalised_layers", "residual_blocks", "as_input", "flat_features", "tapped", "stream", "feature_widths",
           "predict_logits", "evaluate"]

FAMILIES = {"resnet": ResNet, "resnet50": BottleneckResNet}


def build_model(config: ModelConfig) -> nn.Module:
    """The network of `config`'s family (arch), freshly initialised."""
    return FAMILIES[config.arch](config)
