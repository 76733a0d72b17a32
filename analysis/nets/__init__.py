"""The model families, built from a small config, with every compared layer reachable by name."""

from .forward import as_input, evaluate, feature_widths, flat_features, predict_logits, stream, tapped
from .resnet import ModelConfig, ResNet, build_model, decayed_parameters, layer_names, penalised_layers, residual_blocks

__all__ = ["ModelConfig", "ResNet", "build_model", "decayed_parameters", "layer_names", "penalised_layers", "residual_blocks",
           "as_input", "flat_features", "tapped", "stream", "feature_widths", "predict_logits", "evaluate"]
