"""How many seeds to pack (sweep -P pack=auto): what fits on the device, and what measured fastest."""

from __future__ import annotations

import dataclasses

import torch

from ..config import Grid, TrainConfig
from ..data.folder import DEFAULT_SIZE
from ..device import prepare_model, resolve_device
from ..nets import build_model, family
from .loop import plain_step
from .settings import model_config

__all__ = ["auto_pack_size", "step_memory", "CPU_PACK", "PACK_MEMORY_SHARE"]

# sweep -P pack=auto. On the CPU no pack: measured side by side on this project's 2-core machine
# (benchmarks/train.py --pack 1,2,4, docs/performance.md), packs of 2 and 4 ResNet-20 w1 train at
# 0.93x and 0.74x the per-model images/s of one model alone, since oneDNN's grouped convolutions
# run slower per group than the lone convolution (a CPU is not waiting on kernel launches). On
# CUDA, as many of a cell's seeds as fit in PACK_MEMORY_SHARE of the free memory (shared among
# the sweep's workers), a model's share measured by one training step of the grid's largest cell.
CPU_PACK = 1
PACK_MEMORY_SHARE = 0.8


def step_memory(config: TrainConfig, num_classes: int = 10) -> int:
    """Peak CUDA memory (bytes) of one model's training step: weights, gradients, momentum and the
    activations of one batch, measured on the device at the config's batch and image size."""
    device = resolve_device(config.device)
    side = config.image_size or (DEFAULT_SIZE if family(config.arch).streamed else 32)
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    model = prepare_model(build_model(model_config(config, num_classes)), device, config.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    x = torch.rand(config.batch_size, 3, side, side, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (config.batch_size,), device=device)
    plain_step(model, optimizer, x, y, device)
    peak = torch.cuda.max_memory_allocated(device) - before
    del model, optimizer, x, y
    torch.cuda.empty_cache()
    return peak


def auto_pack_size(grid: Grid, base: TrainConfig, workers: int = 1) -> int:
    """How many of a cell's seeds to train together: CPU_PACK on the CPU; on CUDA as many as fit
    (see PACK_MEMORY_SHARE). Never more than the grid's seeds, never fewer than 1."""
    device = resolve_device(base.device)
    if device.type != "cuda":
        return max(1, min(len(grid.seeds), CPU_PACK))
    largest = dataclasses.replace(base, depth=max(grid.depths), width=max(grid.widths))
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, min(len(grid.seeds), int(PACK_MEMORY_SHARE * free / workers // step_memory(largest))))
