"""Benchmark: what each similarity measure of analysis/science/measures.py costs beside linear CKA.

On the layers of the CKA engine's peer benchmark (benchmarks/cka.py: ResNet-56 at width 1, every
convolution, batches of 256 CIFAR-10 test images), one process, side by side in one run:
  forward + linear   the engine as `analyze` runs it: one forward pass per batch, the layers'
                     Grams in the hooks, the paper's linear CKA accumulated (MinibatchCKA);
  + <measure>        the same, with that measure accumulated from the same Grams as well.
The first column is the whole batch, forward pass included; the second only what the measure
adds (its kernel from the Grams and its stacked product), timed on the Grams alone. The minimum
of `--repeats` runs is kept.

    python benchmarks/measures.py                   # 2 batches of 256, 1 thread, CPU
    python benchmarks/measures.py --threads 2 --device auto
"""

from __future__ import annotations

import argparse
import time

import torch

from analysis.config import MEASURES
from analysis.data import load_dataset
from analysis.device import prepare_model, resolve_device
from analysis.nets import ModelConfig, build_model, layer_names
from analysis.science.cka import MinibatchCKA
from analysis.science.measures import MeasureAccumulator
from analysis.science.similarity import batch_reductions


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    config = ModelConfig(args.depth, args.width)
    model = prepare_model(build_model(config), device).eval()
    names = [n for n in layer_names(config) if n.endswith(("conv", "conv1", "conv2"))]
    try:
        images, source = load_dataset("cifar10").test_x, "CIFAR-10 test images"
    except (FileNotFoundError, ValueError, PermissionError):
        images, source = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8), "random images"
    batches = [images[i * args.batch_size : (i + 1) * args.batch_size] for i in range(args.batches)]

    def timed(work) -> float:
        best = float("inf")
        for _ in range(args.repeats):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            work()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - start)
        return best

    grams = [batch_reductions(model, names, x)[0] for x in batches]

    def forward_and(measure: str | None) -> None:
        linear, other = MinibatchCKA(names), measure and MeasureAccumulator(measure, names)
        for x in batches:
            g = batch_reductions(model, names, x)[0]
            if other:
                other.update_grams(g)
            linear.update_grams(g, consume=True)
        linear.compute()

    def measure_alone(measure: str) -> None:
        acc = MeasureAccumulator(measure, names)
        for g in grams:
            acc.update_grams(g)
        acc.compute()

    base = timed(lambda: forward_and(None))
    print(f"ResNet-{args.depth} w{args.width:g}, {len(names)} conv layers, {args.batches} batches of {args.batch_size} "
          f"{source}, {args.threads} thread(s), {device}; minimum of {args.repeats}\n")
    print("| measure | forward + linear CKA + it (s) | x forward + linear CKA | the measure alone (s) |")
    print("|---|---|---|---|")
    print(f"| linear_cka (the engine) | {base:.3f} | 1.00 | {timed(lambda: measure_alone('linear_cka')):.3f} |")
    for measure in MEASURES[1:]:
        total = timed(lambda: forward_and(measure))
        print(f"| {measure} | {total:.3f} | {total / base:.2f} | {timed(lambda: measure_alone(measure)):.3f} |")


if __name__ == "__main__":
    main()
