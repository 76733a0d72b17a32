"""The model families, built from a small config, with every compared layer reachable by name."""

from torch import nn

from . import families  # noqa: F401  (registers every family)
from .family import (Family, ModelConfig, families as all_families, family, layer_names, penalised_layers, probe_layers,
                     registered_name, residual_blocks)
from .forward import as_input, batch_statistics, evaluate, feature_widths, predict_logits, score_logits, stream, tapped
from .layers import decayed_parameters

__all__ = ["Family", "family", "all_families", "ModelConfig", "build_model",
           "decayed_parameters", "layer_names", "penalised_layers", "probe_layers", "registered_name", "residual_blocks",
           "as_input", "batch_statistics", "tapped", "stream", "feature_widths", "predict_logits", "score_logits", "evaluate"]


def build_model(config: ModelConfig) -> nn.Module:
    """The network of `config`'s family (arch), freshly initialised."""
    return config.family.network(config)
