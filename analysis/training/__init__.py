"""Training: model + data + config -> weights, with per-epoch checkpoints to resume from."""

from .loop import TrainResult, cosine_lr, step_flops_per_image, train, use_channels_last

__all__ = ["TrainResult", "train", "cosine_lr", "use_channels_last", "step_flops_per_image"]
