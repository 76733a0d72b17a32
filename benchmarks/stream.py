"""Benchmark: how fast the ImageNet family's streamed data path feeds training, per CPU core.

Writes `--images` JPEGs the size of a typical ImageNet photo (500 x 375, quality 90; random
smooth content, so the files weigh what photos do), then times, on this machine:
  decode              torchvision.io.decode_image alone (analysis.data.folder.read_image);
  decode + crop       read_image + the training view (RandomResizedCrop 224 and flip), what one
                      DataLoader worker does per image;
  loader, N workers   the DataLoader of analysis.training.batches.EpochBatches, batches of 64,
                      N worker processes (up to --workers), images per second end to end;
and the training-step FLOPs per 224-pixel image of the ResNet-50 family (FlopCounterMode), from
which the table estimates the GPU-hours of the paper's recipe (120 epochs of 1,281,167 images) on
an H200 (990 TFLOP/s dense bf16) at `--mfu` of its peak: 0.15 by default, what this project's
training loop reached there with its widest measured CIFAR ResNet (docs/gpu-results.md: 14.4%),
and the CPU cores whose decoding at the measured per-core rate keeps up with that GPU.

    python benchmarks/stream.py                 # 256 images, 1 and 2 workers
    python benchmarks/stream.py --images 2000 --workers 16
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from analysis.data import load_dataset
from analysis.data.folder import read_image, training_view
from analysis.nets import ModelConfig
from analysis.training.batches import EpochBatches
from analysis.training.distributed import Shard
from analysis.training.loop import step_flops_per_image

IMAGENET_TRAIN = 1_281_167
EPOCHS = 120
H200_BF16_FLOPS = 990e12  # dense


def write_photos(root: Path, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", 8)):
        (root / split / "c0").mkdir(parents=True)
        for i in range(n):
            coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
            photo = Image.fromarray(coarse).resize((500, 375), Image.BICUBIC)
            photo.save(root / split / "c0" / f"{i:05d}.jpg", quality=90)


def rate(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--mfu", type=float, default=0.15, help="share of the GPU's bf16 peak the training step reaches")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_photos(root, args.images)
        files = sorted((root / "train" / "c0").glob("*.jpg"))
        rows = [("decode (1 core)", rate(lambda: [read_image(f) for f in files], len(files))),
                ("decode + crop (1 core)", rate(lambda: [training_view(read_image(f), 224, i) for i, f in enumerate(files)],
                                                len(files)))]
        data = load_dataset("imagefolder", root, 224, stream=True)
        batch = 64
        for workers in sorted({1, args.workers}):
            batches = EpochBatches(data.train_x, data.train_y, batch, 0, Shard(), torch.device("cpu"))
            batches.workers = workers
            seen = batches.steps * batch
            rows.append((f"loader, {workers} worker(s)", rate(lambda: [None for _ in batches.epoch(0)], seen)))
    print(f"{'data path':<26} {'images/s':>10}")
    for name, value in rows:
        print(f"{name:<26} {value:>10.0f}")
    per_core = rows[1][1]
    print(f"\n{'ResNet-50 family at 224 px':<28} {'train GFLOP/img':>16} {f'H200-hours at {args.mfu:.0%} MFU':>22} "
          f"{'cores to feed it':>17}")
    for depth, width in ((50, 1.0), (50, 2.0), (62, 1.0), (86, 1.0)):
        flops = step_flops_per_image(ModelConfig(depth, width, 1000, arch="resnet50"), (3, 224, 224))
        gpu_rate = args.mfu * H200_BF16_FLOPS / flops
        hours = EPOCHS * IMAGENET_TRAIN / gpu_rate / 3600
        print(f"{f'd{depth} w{width:g}':<28} {flops / 1e9:>16.1f} {hours:>22.1f} {gpu_rate / per_core:>17.0f}")


if __name__ == "__main__":
    main()
