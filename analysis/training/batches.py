"""The training batches of one epoch, as this process's share of every global batch.

Both paths draw the epoch's example order from (seed, epoch), cut it into global batches and hand
this rank its slice (distributed.Shard), so N processes together see the batches of one:
- in memory (the CIFAR family): the subset lives on the device as uint8; the whole global batch
  is augmented there (data.augment: a few index operations) and sliced, so each example gets the
  same crop as in a single process;
- streamed (the ImageNet family): a DataLoader's worker processes decode and crop this rank's
  examples (data.TrainingCrops, crops seeded per example and epoch) into pinned memory, and the
  batches move to the device without blocking.
"""

from __future__ import annotations

import os
from typing import Iterator

import torch

from ..data import FolderImages, Images, TrainingCrops, UnreadableImage, augment, to_float
from .distributed import Shard

__all__ = ["EpochBatches", "epoch_seed", "epoch_generator", "loader_workers"]

LOADER_WORKERS_MAX = 8  # decoding processes per rank; more rarely helps a single GPU


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of an epoch's example order and augmentation."""
    return seed * 1_000_003 + epoch


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch))


def loader_workers(shard: Shard) -> int:
    """Decoding processes per rank: this machine's cores shared among its ranks, at most 8."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", shard.world))
    return max(1, min(LOADER_WORKERS_MAX, (os.cpu_count() or 1) // local_ranks))


class EpochBatches:
    """Per epoch, this rank's (float images in [0, 1] on the device, labels) for every step;
    `steps` global batches of `batch_size` per epoch (the remainder is dropped, reshuffled)."""

    def __init__(self, images: Images, labels: torch.Tensor, batch_size: int, seed: int, shard: Shard,
                 device: torch.device, memory_format: torch.memory_format = torch.contiguous_format):
        self.streamed = isinstance(images, FolderImages)
        self.images = images if self.streamed else images.to(device)
        self.labels = labels if self.streamed else labels.to(device)
        self.batch_size, self.seed, self.shard, self.device, self.memory_format = batch_size, seed, shard, device, memory_format
        self.steps = len(labels) // batch_size
        self.workers = loader_workers(shard)  # streamed only: decoding processes

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.streamed:
            yield from self._streamed(epoch)
            return
        generator = epoch_generator(self.seed, epoch, self.device)
        order = torch.randperm(len(self.labels), device=self.device, generator=generator)
        rows = self.shard.rows(self.batch_size)
        for step in range(self.steps):
            batch = order[step * self.batch_size : (step + 1) * self.batch_size]
            x = augment(self.images[batch], generator)[rows]
            yield x.contiguous(memory_format=self.memory_format), self.labels[batch][rows]

    def _streamed(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.labels), generator=epoch_generator(self.seed, epoch, torch.device("cpu")))
        rows = self.shard.rows(self.batch_size)
        key = epoch_seed(self.seed, epoch)
        batches = [[(int(i), key) for i in order[s * self.batch_size : (s + 1) * self.batch_size][rows]] for s in range(self.steps)]
        loader = torch.utils.data.DataLoader(TrainingCrops(self.images, self.labels), batch_sampler=batches,
                                             num_workers=self.workers, pin_memory=self.device.type == "cuda")
        try:
            for x, y in loader:
                x = to_float(x.to(self.device, non_blocking=True)).contiguous(memory_format=self.memory_format)
                yield x, y.to(self.device, non_blocking=True)
        except UnreadableImage as err:  # re-raised by the DataLoader with the worker's traceback around the message
            raise UnreadableImage(_worker_message(err)) from None


def _worker_message(err: BaseException) -> str:
    """The original message of an exception a DataLoader worker raised ('...Error: <message>' is
    its traceback's last line)."""
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[-1].split(": ", 1)[1] if lines[0].startswith("Caught ") and ": " in lines[-1] else lines[0]
