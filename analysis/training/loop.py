"""The training loop: config + data -> a trained ResNet, its metric history and checkpoints; or
K of them, differing only in seed, trained at once as one pack (pack.py).

Measured on this project's 2-core CPU (no GPU), real CIFAR-10 (JPEG copy), the `quick` preset
(ResNet-20, width 1, 2 epochs, otherwise the paper's recipe): see README "Measured".

Why it looks the way it does:
- A lone training is a pack of one: the same loop, the model itself as the network.
- The CIFAR family's training subset lives on the device as uint8 and is augmented a batch at a
  time there (data.augment): no DataLoader workers, no per-example Python. The ImageNet family
  streams its images through a DataLoader (batches.py).
- Each model of a pack draws its own data order and augmentation from its own seed, and the
  pack's objective is the sum of the models' mean losses, so every model's gradient is the one
  it gets alone. A model whose loss turns non-finite fails alone (`TrainResult.error`); the
  others train on. A lone training raises instead.
- Data-parallel processes (distributed.py) each take a slice of every global batch; the model is
  wrapped in DistributedDataParallel, evaluation is split among them and summed, and rank 0 alone
  writes checkpoints and snapshots and reports epochs. (Packs run in one process.)
- Nothing in the step reads a value back to the host; losses and accuracies accumulate on the
  device and are read once per epoch (the progress bar's loss is read every 25 steps).
- The data order and augmentation of epoch e come from a generator seeded with (seed, e), so a
  run resumed from the checkpoint of epoch e ends with the same weights as one never stopped.
- The learning rate follows the paper's cosine decay per step, computed from the step index,
  so there is no scheduler state to checkpoint.
- Snapshots (snapshot_every) are handed over before the checkpoint of their epoch is written, so
  a crash never leaves a checkpoint past a snapshot that was not kept.
- The PC1 penalty (pc1_penalty; Nguyen, Raghu & Kornblith's follow-up, arXiv 2202.07184, removes
  the block by penalising the dominant principal component) reads the penalised block outputs
  through forward hooks that keep the graph, and adds lambda x their mean batch PC1 share
  (pca.batch_pc1_share, per model of a pack) to the cross-entropy; train_loss stays the
  cross-entropy alone, and the term is logged apart (train_pc1_share, train_pc1_penalty).
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from tqdm.auto import tqdm

from ..config import CLEAN_TRAIN_EVAL_MAX, TrainConfig
from ..data import ImageData, Images, indices_hash, subset_indices, take
from ..device import autocast, peak_flops, prepare_model, resolve_device
from ..nets import ModelConfig, build_model, decayed_parameters, penalised_layers, predict_logits, score_logits, tapped
from ..science.pca import batch_pc1_share
from . import checkpoints, distributed, settings
from .batches import EpochBatches
from .pack import Pack, check_pack

__all__ = ["TrainResult", "train", "train_pack", "evaluate_pack", "plain_step", "cosine_lr", "use_channels_last", "step_flops_per_image"]


@dataclasses.dataclass
class TrainResult:
    model: torch.nn.Module
    history: list[dict[str, float]]  # one dict of metrics per epoch
    final: dict[str, float]  # test (or val) accuracy and loss, train_accuracy_clean, train_loss_clean
    train_size: int
    subset_hash: str
    resumed_from_epoch: int  # 0 for a fresh run
    error: str | None = None  # a model of a pack that diverged: why (its history stops there; `final` is empty)


# torch 2.14.1 on the CPU hangs or crashes ("double free or corruption") in the backward pass of a
# 1x1 stride-2 convolution in channels_last with 2 to 6 input channels (reproduced on this
# project's machine; 1, 7, 8 and more are fine). A model narrower than width 0.5 has such a
# projection shortcut into stage 2, so it trains in the default format on the CPU.
CPU_CHANNELS_LAST_MIN_CHANNELS = 8
PROGRESS_EVERY = 25  # steps between reads of the loss for the progress bar


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


def plain_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               device: torch.device) -> torch.Tensor:
    """One bare training step (forward under autocast, cross-entropy, backward, optimizer step):
    the floor the benchmarks hold the loop against, and what a model's memory is measured on."""
    with autocast(device):
        loss = F.cross_entropy(model(x).float(), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


def cosine_lr(step: int, total_steps: int, base_lr: float) -> float:
    return 0.5 * base_lr * (1 + math.cos(math.pi * step / total_steps))


def train(
    config: TrainConfig,
    data: ImageData,
    checkpoint: Path | None = None,
    checkpoint_meta: dict | None = None,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool | None = None,
    on_snapshot: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
) -> TrainResult:
    """Train one model (a pack of one; see `train_pack`). A loss that turns non-finite raises."""
    result = train_pack([config], data, checkpoint, checkpoint_meta,
                        on_epoch=on_epoch and (lambda _k, epoch, metrics: on_epoch(epoch, metrics)), progress=progress,
                        on_snapshot=on_snapshot and (lambda _k, epoch, state: on_snapshot(epoch, state)))[0]
    if result.error:
        raise FloatingPointError(result.error)
    return result


@dataclasses.dataclass
class _Scored:
    """The examples a training fits and the ones it is scored on (test, or held-out for a search)."""

    subset: torch.Tensor
    x: Images
    y: torch.Tensor
    name: str  # "test" or "val"


def _split(config: TrainConfig, data: ImageData, device: torch.device) -> _Scored:
    subset = subset_indices(data.train_y, config.data_fraction, config.subset_seed)
    if config.val_fraction > 0:
        # Hyperparameter search scores a held-out part of the training subset, never the test set.
        held_out = subset[subset_indices(data.train_y[subset], config.val_fraction, config.subset_seed + 1)]
        subset = subset[~torch.isin(subset, held_out)]
        return _Scored(subset, take(data.train_x, held_out).to(device), data.train_y[held_out].to(device), "val")
    return _Scored(subset, data.test_x.to(device), data.test_y.to(device), "test")


def _optimizer(network: torch.nn.Module, config: TrainConfig) -> torch.optim.SGD:
    kernels, others = decayed_parameters(network)  # the paper's L2 on conv and dense kernels only
    return torch.optim.SGD([{"params": kernels, "weight_decay": config.weight_decay}, {"params": others, "weight_decay": 0.0}],
                           lr=config.lr, momentum=config.momentum)


def evaluate_pack(pack: Pack, images: Images, labels: torch.Tensor, batch_size: int, shard: distributed.Shard) -> list[dict[str, float]]:
    """Each model's mean loss and accuracy over the whole set, every data-parallel process scoring
    every world-th example with rank 0's BatchNorm statistics."""
    distributed.share_buffers(pack.network)
    part = torch.arange(shard.rank, len(labels), shard.world)
    logits = pack.per_model(predict_logits(pack.network, take(images, part), batch_size, bf16=True))
    n = len(part)
    device = logits.device
    scores = [score_logits(logits[:, k], labels[part]) for k in range(pack.size)]
    sums = distributed.sum_all(torch.tensor([[s["loss"] * n, s["accuracy"] * n, n] for s in scores],
                                            dtype=torch.float64, device=device))
    return [{"loss": (row[0] / row[2]).item(), "accuracy": (row[1] / row[2]).item()} for row in sums]


def train_pack(
    configs: list[TrainConfig],
    data: ImageData,
    checkpoint: Path | None = None,
    checkpoint_meta: dict | None = None,
    on_epoch: Callable[[int, int, dict[str, float]], None] | None = None,
    progress: bool | None = None,
    on_snapshot: Callable[[int, int, dict[str, torch.Tensor]], None] | None = None,
) -> list[TrainResult]:
    """Train K models that differ only in seed as one pack; one result per model, in order.

    With `checkpoint`, resume from it if present and rewrite it every epoch; `checkpoint_meta` is
    stored in each checkpoint beside the models' histories. `on_epoch(k, epoch, metrics)` is called
    for model k after every epoch, and first for every epoch restored from a checkpoint, so a
    resumed run still reports a complete history. With `snapshot_every` > 0, `on_snapshot(k, epoch,
    state_dict)` is called before training (epoch 0), every `snapshot_every` epochs and after the
    last. `progress=None` shows a bar on a terminal.
    """
    check_pack(configs)
    for config in configs:
        settings.check(config)
    config = configs[0]  # every setting but the seed is shared
    shard = distributed.current()
    if shard.world > 1 and len(configs) > 1:
        raise ValueError(f"a pack of {len(configs)} seeds trains in one process; use nproc=1, or one seed per training")
    device = shard.device(resolve_device(config.device))
    scored = _split(config, data, device)
    n = len(scored.subset)
    if n < config.batch_size:
        raise ValueError(
            f"data_fraction={config.data_fraction} leaves {n} training examples, fewer than batch_size={config.batch_size}; "
            "raise data_fraction or lower batch_size"
        )
    if config.batch_size % shard.world:
        raise ValueError(f"batch_size={config.batch_size} does not split evenly among {shard.world} processes; "
                         f"use a multiple of {shard.world}")

    model_config = settings.model_config(config, data.num_classes)
    channels_last = use_channels_last(config.channels_last, model_config, device)
    models = []
    for c in configs:  # each model's initialisation from its own seed, as when it trains alone
        torch.manual_seed(c.seed)
        models.append(build_model(model_config))
    pack = Pack(models)
    pack.network = prepare_model(pack.network, device, channels_last)
    optimizer = _optimizer(pack.network, config)

    # Every rank restores the same checkpoint; rank 0 alone writes them.
    restored = checkpoints.restore(checkpoint, pack.network, optimizer) if checkpoint is not None else None
    histories = checkpoints.histories(restored, pack.size)
    errors: list[str | None] = list(restored.get("errors", [None] * pack.size)) if restored else [None] * pack.size
    start_epoch = max(len(h) for h in histories)
    for k, history in enumerate(histories):
        for epoch, metrics in enumerate(history, start=1):
            if on_epoch:
                on_epoch(k, epoch, metrics)

    def snapshot_due(epoch: int) -> bool:
        return on_snapshot is not None and shard.main and epoch in config.snapshot_epochs

    def snapshot(epoch: int) -> None:
        for k in range(pack.size):
            if errors[k] is None:
                on_snapshot(k, epoch, pack.state(k))

    if start_epoch == 0 and snapshot_due(0):
        snapshot(0)
    penalised = penalised_layers(model_config, config.pc1_penalty_layers) if config.pc1_penalty > 0 else []
    captured: dict[int, torch.Tensor] = {}

    def keep_training_output(i: int, out: torch.Tensor) -> None:
        if pack.network.training:  # evaluation passes run through the same hooks
            captured[i] = out

    train_x, train_y = take(data.train_x, scored.subset), data.train_y[scored.subset]
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    loaders = [EpochBatches(train_x, train_y, config.batch_size, c.seed, shard, device, memory_format) for c in configs]
    peak = peak_flops(device)  # model FLOP utilisation is logged on GPUs of known peak
    flops_per_image = step_flops_per_image(model_config, tuple(train_x.shape[1:])) if peak else 0.0
    forward = pack.network
    if shard.world > 1:  # built after the restore: DDP broadcasts rank 0's weights as it wraps them
        forward = torch.nn.parallel.DistributedDataParallel(forward, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(forward) if config.compile else forward  # shares the parameters of the network
    steps_per_epoch = loaders[0].steps
    total_steps = config.epochs * steps_per_epoch

    def objective(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(the pack's objective, each model's mean loss (K,), correct predictions (K,), PC1 shares (K,))."""
        with autocast(device):
            logits = forward(x)
        # (B, K, classes), in float32 at least: bf16 under autocast on CUDA is too coarse for the loss
        logits = pack.per_model(logits.to(torch.promote_types(logits.dtype, torch.float32)))
        if pack.size == 1:  # a lone training's loss exactly as before packs, so its weights stay bit-for-bit the same
            losses = F.cross_entropy(logits[:, 0], y[:, 0]).unsqueeze(0)
        else:
            losses = F.cross_entropy(logits.transpose(1, 2), y, reduction="none").mean(0)
        total = losses.sum()  # no model's gradient depends on another's loss
        shares = torch.zeros_like(losses)
        if penalised:
            shares = torch.stack([torch.stack([batch_pc1_share(a) for a in pack.chunks(captured.pop(i))])
                                  for i in range(len(penalised))]).mean(0)
            total = total + config.pc1_penalty * shares.sum()
        return total, losses, (logits.argmax(2) == y).sum(0), shares

    with tapped(pack.network, penalised, keep_training_output):  # no layers, no hooks
        for epoch in range(start_epoch, config.epochs):
            pack.network.train()
            sums = torch.zeros(3, pack.size, device=device)  # loss, correct, PC1 share; summed over examples
            started = time.perf_counter()
            bar = tqdm(zip(*(loader.epoch(epoch) for loader in loaders)), total=steps_per_epoch,
                       desc=f"epoch {epoch + 1}/{config.epochs}", disable=_no_bar(progress) if shard.main else True, leave=False)
            for step, batches in enumerate(bar):
                lr = cosine_lr(epoch * steps_per_epoch + step, total_steps, config.lr)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                x = pack.inputs([b[0] for b in batches]).contiguous(memory_format=memory_format)
                y = torch.stack([b[1] for b in batches], dim=1)  # (B, K)
                total, losses, correct, shares = objective(x, y)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                sums += torch.stack([losses.detach(), correct.to(losses.dtype), shares.detach()]) * torch.tensor(
                    [len(y), 1, len(y)], device=device).unsqueeze(1)
                if step % PROGRESS_EVERY == 0:
                    bar.set_postfix(loss=f"{losses.detach().mean().item():.3f}")
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds = time.perf_counter() - started
            seen = steps_per_epoch * config.batch_size
            sums = distributed.sum_all(sums)
            epoch_metrics = _epoch_metrics(sums, seen, seconds, lr, flops_per_image / peak if peak else None,
                                           config.pc1_penalty if penalised else None)
            for k, metrics in enumerate(epoch_metrics):
                if errors[k] is None and not math.isfinite(metrics["train_loss"]):
                    errors[k] = (f"training loss became {metrics['train_loss']} in epoch {epoch + 1}; "
                                 f"lower lr={config.lr} or check the data")
            if errors[0] is not None and pack.size == 1:
                raise FloatingPointError(errors[0])
            # On small training subsets a full test pass can cost more than the epoch itself.
            if (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs:
                for metrics, s in zip(epoch_metrics, evaluate_pack(pack, scored.x, scored.y, config.eval_batch_size, shard)):
                    metrics.update({f"{scored.name}_loss": s["loss"], f"{scored.name}_accuracy": s["accuracy"]})
            live = [k for k in range(pack.size) if errors[k] is None]
            if not live:
                break  # every model of the pack diverged: nothing left to train
            for k in live:
                histories[k].append(epoch_metrics[k])
            if snapshot_due(epoch + 1):
                snapshot(epoch + 1)
            if checkpoint is not None and shard.main:
                checkpoints.save(checkpoint, pack.network, optimizer,
                                 {**(checkpoint_meta or {}), "histories": histories, "errors": errors})
            if on_epoch and shard.main:
                for k in live:
                    on_epoch(k, epoch + 1, epoch_metrics[k])
            if shard.main and _lines(progress):
                print(_epoch_line(epoch + 1, config.epochs, [epoch_metrics[k] for k in live]), file=sys.stderr, flush=True)

    # Training accuracy without augmentation: the paper's block structure only means something
    # for models that fit their training set, so it is reported beside every analysis.
    # A strided sample, since the subset is in (often class-sorted) index order.
    stride = math.ceil(n / CLEAN_TRAIN_EVAL_MAX)
    clean = evaluate_pack(pack, take(train_x, slice(None, None, stride)), train_y[::stride], config.eval_batch_size, shard)
    results = []
    for k in range(pack.size):
        history = histories[k]
        final = {} if errors[k] else {
            f"{scored.name}_accuracy": history[-1][f"{scored.name}_accuracy"],  # the last epoch is always scored
            f"{scored.name}_loss": history[-1][f"{scored.name}_loss"],
            "train_accuracy_clean": clean[k]["accuracy"],
            "train_loss_clean": clean[k]["loss"],
        }
        results.append(TrainResult(pack.model(k), history, final, n, indices_hash(scored.subset), start_epoch, errors[k]))
    return results


def _epoch_metrics(sums: torch.Tensor, seen: int, seconds: float, lr: float, flops_per_peak: float | None,
                   pc1_penalty: float | None) -> list[dict[str, float]]:
    """Each model's metrics of one epoch from the pack's summed losses, correct predictions and
    PC1 shares (3, K); MFU where the device's peak is known, the PC1 terms where it is penalised."""
    return [{
        "train_loss": sums[0, k].item() / seen,
        "train_accuracy": sums[1, k].item() / seen,
        "lr": lr,
        "images_per_sec": seen / seconds,  # each model's images; the pack's are this times K
        "epoch_seconds": seconds,
        **({"mfu": seen / seconds * flops_per_peak} if flops_per_peak is not None else {}),
        **({"train_pc1_share": sums[2, k].item() / seen,
            "train_pc1_penalty": pc1_penalty * sums[2, k].item() / seen} if pc1_penalty is not None else {}),
    } for k in range(sums.shape[1])]


def _no_bar(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def _lines(progress: bool | None) -> bool:
    """A line per epoch where the bar is not drawn because output is not a terminal (under
    `mlflow run`, in a log file), so a long training is never silent."""
    return progress is None and not sys.stderr.isatty()


def _epoch_line(epoch: int, epochs: int, metrics: Sequence[dict[str, float]]) -> str:
    """'epoch 3/80: train_loss 1.234, train_accuracy 0.456, test_accuracy 0.400, 1234 images/s'
    (a pack: the mean over its models, and how many)."""
    def mean(key: str) -> float:
        return sum(m[key] for m in metrics) / len(metrics)

    shown = [f"{key} {mean(key):.4f}" for key in ("train_loss", "train_accuracy", "test_accuracy", "val_accuracy")
             if all(key in m for m in metrics)]
    pack = f" (mean of {len(metrics)} models)" if len(metrics) > 1 else ""
    return f"epoch {epoch}/{epochs}{pack}: {', '.join(shown)}, {mean('images_per_sec'):.0f} images/s"
