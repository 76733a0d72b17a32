"""Benchmark: how training and analysis time grow with depth and with width.

Three depths at width 1 and three widths at depth 20; for each, the seconds of one training step
(forward, backward, SGD step on a batch of 128, median of a few) and of the CKA work for one batch
of 256 over every layer (forward + Grams + estimator). Exponents are fitted on log-log scales
against depth and width: time ~ depth^a, time ~ width^b.

    python benchmarks/scaling.py
    python benchmarks/scaling.py --depths 20,56,110 --widths 1,2,4 --device cuda
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from analysis.cka import MinibatchCKA
from analysis.device import prepare_model, resolve_device
from analysis.nets import ModelConfig, build_model, layer_names
from analysis.science.similarity import batch_reductions
from analysis.training import plain_step


def step_seconds(config: ModelConfig, device: torch.device, steps: int) -> float:
    model = prepare_model(build_model(config), device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(128, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), device=device)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        plain_step(model, opt, x, y, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i:  # the first step warms up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def cka_seconds(config: ModelConfig, device: torch.device) -> float:
    model = prepare_model(build_model(config), device).eval()
    names = layer_names(config)
    images = torch.randint(0, 256, (256, 3, 32, 32), dtype=torch.uint8)
    batch_reductions(model, names[:2], images[:8])  # warm-up
    start = time.perf_counter()
    acc = MinibatchCKA(names)
    grams, _, _ = batch_reductions(model, names, images)
    acc.update_grams(grams)
    acc.compute()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def exponent(x: list[float], y: list[float]) -> float:
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depths", default="20,56,110")
    p.add_argument("--widths", default="1,2,4")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    depths = [int(d) for d in args.depths.split(",")]
    widths = [float(w) for w in args.widths.split(",")]
    print(f"\ndevice {device} ({torch.get_num_threads()} threads); training step: batch 128; CKA: one batch of 256, every layer\n")
    print(f"{'model':<18}{'layers':>7}{'train step s':>14}{'CKA batch s':>13}")
    results = {}
    for depth, width in [(d, 1.0) for d in depths] + [(depths[0], w) for w in widths if w != 1.0]:
        config = ModelConfig(depth, width)
        t_step, t_cka = step_seconds(config, device, args.steps), cka_seconds(config, device)
        results[(depth, width)] = (t_step, t_cka)
        print(f"{'ResNet-' + str(depth) + ' w' + f'{width:g}':<18}{len(layer_names(config)):>7}{t_step:>14.3f}{t_cka:>13.2f}")
    by_depth = [results[(d, 1.0)] for d in depths]
    by_width = [results[(depths[0], w)] for w in widths]
    print(f"\nfitted exponents: training ~ depth^{exponent(depths, [t for t, _ in by_depth]):.2f}, "
          f"width^{exponent(widths, [t for t, _ in by_width]):.2f}; "
          f"CKA ~ depth^{exponent(depths, [c for _, c in by_depth]):.2f}, width^{exponent(widths, [c for _, c in by_width]):.2f}")


if __name__ == "__main__":
    main()
