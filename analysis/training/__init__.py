"""Training: model + data + config -> weights, with per-epoch checkpoints to resume from; one
model, or a pack of seeds trained as one network (pack.py)."""

from .loop import TrainResult, cosine_lr, plain_step, step_flops_per_image, train, train_pack, use_channels_last
from .pack import Pack, check_pack
from .sizing import auto_pack_size

__all__ = ["TrainResult", "train", "train_pack", "Pack", "check_pack", "auto_pack_size", "plain_step", "cosine_lr", "use_channels_last", "step_flops_per_image"]
