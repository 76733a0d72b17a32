"""The training loop: config + data -> a trained ResNet, its metric history and checkpoints.

Measured on this project's 2-core CPU (no GPU), real CIFAR-10 (JPEG copy), the `quick` preset
(ResNet-20, width 1, 2 epochs, otherwise the paper's recipe): see README "Measured".

Why it looks the way it does:
- The CIFAR family's training subset lives on the device as uint8 and is augmented a batch at a
  time there (data.augment): no DataLoader workers, no per-example Python. The ImageNet family
  streams its images through a DataLoader (batches.py).
- Data-parallel processes (distributed.py) each take a slice of every global batch; the model is
  wrapped in DistributedDataParallel, evaluation is split among them and summed, and rank 0 alone
  writes checkpoints and snapshots and reports epochs.
- Nothing in the step reads a value back to the host; loss and accuracy accumulate on the device
  and are read once per epoch (the progress bar's loss is read every 25 steps).
- The data order and augmentation of epoch e come from a generator seeded with (seed, e), so a
  run resumed from the checkpoint of epoch e ends with the same weights as one never stopped.
- The learning rate follows the paper's cosine decay per step, computed from the step index,
  so there is no scheduler state to checkpoint.
- Snapshots (snapshot_every) are handed over before the checkpoint of their epoch is written, so
  a crash never leaves a checkpoint past a snapshot that was not kept.
- The PC1 penalty (pc1_penalty; Nguyen, Raghu & Kornblith's follow-up, arXiv 2202.07184, removes
  the block by penalising the dominant principal component) reads the penalised block outputs
  through forward hooks that keep the graph, and adds lambda x their mean batch PC1 share
  (pca.batch_pc1_share) to the cross-entropy; train_loss stays the cross-entropy alone, and the
  term is logged apart (train_pc1_share, train_pc1_penalty).
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..config import CLEAN_TRAIN_EVAL_MAX, TrainConfig
from ..data import ImageData, Images, indices_hash, subset_indices, take
from ..device import autocast, peak_flops, prepare_model, resolve_device
from ..nets import ModelConfig, build_model, decayed_parameters, evaluate, penalised_layers, tapped
from ..science.pca import batch_pc1_share
from . import checkpoints, distributed, settings
from .batches import EpochBatches

__all__ = ["TrainResult", "train", "cosine_lr", "use_channels_last", "step_flops_per_image", "evaluate_shared"]


@dataclasses.dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict[str, float]]  # one dict of metrics per epoch
    final: dict[str, float]  # test (or val) accuracy and loss, train_accuracy_clean, train_loss_clean
    train_size: int
    subset_hash: str
    resumed_from_epoch: int  # 0 for a fresh run


# torch 2.14.1 on the CPU hangs or crashes ("double free or corruption") in the backward pass of a
# 1x1 stride-2 convolution in channels_last with 2 to 6 input channels (reproduced on this
# project's machine; 1, 7, 8 and more are fine). A model narrower than width 0.5 has such a
# projection shortcut into stage 2, so it trains in the default format on the CPU.
CPU_CHANNELS_LAST_MIN_CHANNELS = 8


def use_channels_last(wanted: bool, model: ModelConfig, device: torch.device) -> bool:
    """Whether training runs in channels_last: as `wanted`, except where the CPU bug above bites."""
    return wanted and (device.type != "cpu" or model.channels(1) >= CPU_CHANNELS_LAST_MIN_CHANNELS)


def step_flops_per_image(model_config: ModelConfig, image_shape: tuple[int, ...]) -> float:
    """FLOPs of one training step (forward and backward) per image, counted by torch's
    FlopCounterMode on a copy of the network on the meta device: no memory, no side effects."""
    model = build_model(model_config).to("meta")
    with FlopCounterMode(display=False) as counter:
        model(torch.empty(2, *image_shape, device="meta")).sum().backward()
    return counter.get_total_flops() / 2


def cosine_lr(step: int, total_steps: int, base_lr: float) -> float:
    return 0.5 * base_lr * (1 + math.cos(math.pi * step / total_steps))


def evaluate_shared(model: torch.nn.Module, images: Images, labels: torch.Tensor, batch_size: int,
                    shard: distributed.Shard) -> dict[str, float]:
    """evaluate() over the whole set, each data-parallel process scoring every world-th example
    with rank 0's BatchNorm statistics."""
    distributed.share_buffers(model)
    part = torch.arange(shard.rank, len(labels), shard.world)
    scores = evaluate(model, take(images, part), labels[part], batch_size, bf16=True)
    n = len(part)
    device = next(model.parameters()).device
    sums = distributed.sum_all(torch.tensor([scores["loss"] * n, scores["accuracy"] * n, n], dtype=torch.float64, device=device))
    return {"loss": (sums[0] / sums[2]).item(), "accuracy": (sums[1] / sums[2]).item()}


def train(
    config: TrainConfig,
    data: ImageData,
    checkpoint: Path | None = None,
    checkpoint_meta: dict | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool | None = None,
    on_snapshot: Callable[[int, torch.nn.Module], None] | None = None,
) -> TrainResult:
    """Train one model. With `checkpoint`, resume from it if present and rewrite it every epoch.

    `checkpoint_meta` is stored in each checkpoint beside the epoch and history. `on_epoch(epoch,
    metrics)` is called after every epoch, and first for every epoch restored from a checkpoint,
    so a resumed run still reports a complete history. With `config.snapshot_every` > 0,
    `on_snapshot(epoch, model)` is called before training (epoch 0), every `snapshot_every`
    epochs and after the last. `progress=None` shows a bar on a terminal.
    """
    settings.check(config)
    shard = distributed.current()
    device = shard.device(resolve_device(config.device))
    subset = subset_indices(data.train_y, config.data_fraction, config.subset_seed)
    if config.val_fraction > 0:
        # Hyperparameter search scores a held-out part of the training subset, never the test set.
        held_out = subset[subset_indices(data.train_y[subset], config.val_fraction, config.subset_seed + 1)]
        subset = subset[~torch.isin(subset, held_out)]
        score_x, score_y, score_name = take(data.train_x, held_out).to(device), data.train_y[held_out].to(device), "val"
    else:
        score_x, score_y, score_name = data.test_x.to(device), data.test_y.to(device), "test"
    n = len(subset)
    if n < config.batch_size:
        raise ValueError(
            f"data_fraction={config.data_fraction} leaves {n} training examples, fewer than batch_size={config.batch_size}; "
            "raise data_fraction or lower batch_size"
        )
    if config.batch_size % shard.world:
        raise ValueError(f"batch_size={config.batch_size} does not split evenly among {shard.world} processes; "
                         f"use a multiple of {shard.world}")

    torch.manual_seed(config.seed)
    model_config = settings.model_config(config, data.num_classes)
    channels_last = use_channels_last(config.channels_last, model_config, device)
    model = prepare_model(build_model(model_config), device, channels_last)
    kernels, others = decayed_parameters(model)
    optimizer = torch.optim.SGD(
        [{"params": kernels, "weight_decay": config.weight_decay}, {"params": others, "weight_decay": 0.0}],
        lr=config.lr,
        momentum=config.momentum,
    )

    # Every rank restores the same checkpoint; rank 0 alone writes them.
    restored = checkpoints.restore(checkpoint, model, optimizer) if checkpoint is not None else None
    history: list[dict[str, float]] = restored["history"] if restored else []
    start_epoch = len(history)
    for epoch, metrics in enumerate(history, start=1):
        if on_epoch:
            on_epoch(epoch, metrics)

    def snapshot_due(epoch: int) -> bool:
        return on_snapshot is not None and shard.main and config.snapshot_every > 0 and (
            epoch % config.snapshot_every == 0 or epoch == config.epochs)

    if start_epoch == 0 and snapshot_due(0):
        on_snapshot(0, model)
    penalised = penalised_layers(model_config, config.pc1_penalty_layers) if config.pc1_penalty > 0 else []
    captured: dict[int, torch.Tensor] = {}

    def keep_training_output(i: int, out: torch.Tensor) -> None:
        if model.training:  # evaluation passes run through the same hooks
            captured[i] = out

    train_x, train_y = take(data.train_x, subset), data.train_y[subset]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    batches = EpochBatches(train_x, train_y, config.batch_size, config.seed, shard, device, memory_format)
    peak = peak_flops(device)  # model FLOP utilisation is logged on GPUs of known peak
    flops_per_image = step_flops_per_image(model_config, tuple(train_x.shape[1:])) if peak else 0.0
    forward = model
    if shard.world > 1:  # built after the restore: DDP broadcasts rank 0's weights as it wraps them
        forward = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(forward) if config.compile else forward  # shares the parameters of `model`
    steps_per_epoch = batches.steps
    total_steps = config.epochs * steps_per_epoch
    with tapped(model, penalised, keep_training_output):  # no layers, no hooks
        for epoch in range(start_epoch, config.epochs):
            model.train()
            loss_sum = torch.zeros((), device=device)
            share_sum = torch.zeros((), device=device)
            correct = torch.zeros((), device=device, dtype=torch.int64)
            started = time.perf_counter()
            bar = tqdm(batches.epoch(epoch), total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                       disable=_no_bar(progress) if shard.main else True, leave=False)
            for step, (x, y) in enumerate(bar):
                lr = cosine_lr(epoch * steps_per_epoch + step, total_steps, config.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                with autocast(device):
                    logits = forward(x)
                loss = F.cross_entropy(logits.float(), y)
                objective = loss
                if penalised:
                    share = torch.stack([batch_pc1_share(captured.pop(i)) for i in range(len(penalised))]).mean()
                    objective = loss + config.pc1_penalty * share
                    share_sum += share.detach() * len(y)
                optimizer.zero_grad(set_to_none=True)
                objective.backward()
                optimizer.step()
                loss_sum += loss.detach() * len(y)
                correct += (logits.argmax(1) == y).sum()
                if step % 25 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            seen = steps_per_epoch * config.batch_size
            loss_sum, share_sum, correct = distributed.sum_all(torch.stack([loss_sum, share_sum, correct.to(loss_sum.dtype)]))
            train_loss = loss_sum.item() / seen
            if not math.isfinite(train_loss):
                raise FloatingPointError(
                    f"training loss became {train_loss} in epoch {epoch + 1}; lower lr={config.lr} or check the data"
                )
            metrics = {
                "train_loss": train_loss,
                "train_accuracy": correct.item() / seen,
                "lr": lr,
                "images_per_sec": seen / seconds,
                "epoch_seconds": seconds,
            }
            if peak:
                metrics["mfu"] = seen / seconds * flops_per_image / peak
            if penalised:
                metrics["train_pc1_share"] = share_sum.item() / seen
                metrics["train_pc1_penalty"] = config.pc1_penalty * metrics["train_pc1_share"]
            # On small training subsets a full test pass can cost more than the epoch itself.
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                scores = evaluate_shared(model, score_x, score_y, config.eval_batch_size, shard)
                metrics.update({f"{score_name}_loss": scores["loss"], f"{score_name}_accuracy": scores["accuracy"]})
            history.append(metrics)
            if snapshot_due(epoch + 1):
                on_snapshot(epoch + 1, model)
            if checkpoint is not None and shard.main:
                checkpoints.save(checkpoint, model, optimizer, {**(checkpoint_meta or {}), "history": history})
            if on_epoch and shard.main:
                on_epoch(epoch + 1, metrics)

    # Training accuracy without augmentation: the paper's block structure only means something
    # for models that fit their training set, so it is reported beside every analysis.
    # A strided sample, since the subset is in (often class-sorted) index order.
    stride = math.ceil(n / CLEAN_TRAIN_EVAL_MAX)
    clean = evaluate_shared(model, take(train_x, slice(None, None, stride)), train_y[::stride], config.eval_batch_size, shard)
    final = {
        f"{score_name}_accuracy": history[-1][f"{score_name}_accuracy"],  # the last epoch is always scored
        f"{score_name}_loss": history[-1][f"{score_name}_loss"],
        "train_accuracy_clean": clean["accuracy"],
        "train_loss_clean": clean["loss"],
    }
    return TrainResult(model, history, final, n, indices_hash(subset), start_epoch)


def _no_bar(progress: bool | None) -> bool | None:
    return None if progress is None else not progress
