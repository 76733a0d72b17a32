"""Training: model + data + config -> weights, with per-epoch checkpoints to resume from."""

from .loop import TrainResult, cosine_lr, train, use_channels_last

__all__ = ["TrainResult", "train", "cosine_lr", "use_channels_last"]
