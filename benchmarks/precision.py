"""Benchmark: how exact the CKA heatmap is on a device, and what bf16 activations cost in accuracy.

For one model (all layers) on the same batches of CIFAR-10 test images (random images without
a local copy), side by side in one process:
  float64 reference   CPU, every Gram and sum in float64 (the activations themselves float32)
  float32             `analyze`'s default on --device: float32 activations (TF32 off), float32
                      Grams of centred activations, float64 U-centring and sums
  bf16                `-P precision=bf16`: autocast activations on CUDA (on the CPU it equals float32)
and prints each one's time and its largest difference from the reference.

    python benchmarks/precision.py --device cuda
    python benchmarks/precision.py --depth 8 --examples 100 --batch-size 50     # a quick CPU run
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from analysis.data import load_dataset
from analysis.device import prepare_model, resolve_device
from analysis.nets import ModelConfig, build_model, layer_names
from analysis.science.similarity import float64_cka, model_cka, pass_batches


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--examples", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    config = ModelConfig(args.depth, args.width)
    names = layer_names(config)
    try:
        images, source = load_dataset("cifar10").test_x[: args.examples], "CIFAR-10 test images"
    except (FileNotFoundError, ValueError, PermissionError):
        images, source = torch.randint(0, 256, (args.examples, 3, 32, 32), dtype=torch.uint8), "random images"
    labels = torch.zeros(len(images), dtype=torch.long)
    batches = pass_batches(len(images), args.batch_size, 1, 0)
    cpu_model = prepare_model(build_model(config), torch.device("cpu")).eval()
    model = prepare_model(build_model(config), device).eval()
    model.load_state_dict(cpu_model.state_dict())

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - start

    reference, t_ref = timed(lambda: float64_cka(cpu_model, names, images, batches))
    model_cka([model], [names], images[: args.batch_size], labels[: args.batch_size], args.batch_size, 1, progress=False)  # warm-up
    rows = [("float64 reference (CPU)", reference, t_ref)]
    for label, bf16 in (("float32", False), ("bf16 autocast", True)):
        out, t = timed(lambda: model_cka([model], [names], images, labels, args.batch_size, 1, progress=False, bf16=bf16))
        rows.append((f"{label} ({device.type})", out.within(0), t))
    print(f"\nResNet-{args.depth} width {args.width:g}, {len(names)} layers, {len(images)} {source}, "
          f"{len(batches)} batches of {args.batch_size}\n")
    print(f"{'engine':<28}{'seconds':>9}{'max |error|':>14}{'mean |error|':>14}")
    for label, matrix, t in rows:
        err = np.abs(matrix - reference)
        print(f"{label:<28}{t:>9.2f}{err.max():>14.1e}{err.mean():>14.1e}")


if __name__ == "__main__":
    main()
