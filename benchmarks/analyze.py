"""Benchmark: `analyze`'s work on one model against a forward-only pass over the same batches.

Times, on the same examples and batches, side by side in one process:
  forward only               the model's forward passes alone (inference mode, the CKA batches)
  cka                        forward + Grams + the estimator (analysis.science.similarity)
  cka+pc                     plus PC1 estimation passes and the two PC1 variants of CKA
  every analysis             cka + pc + probes + deletion (analysis.stages.analyze.analyze_models)
and the peak resident memory of the process, for ResNet-110 at width 1 with every layer
(9 + 21*18 = 387 layers) by default. Target (issue 9): cka+pc within 1.3x of ... see the table.

    python benchmarks/analyze.py                              # ResNet-110 w1, 512 examples
    python benchmarks/analyze.py --depth 20 --examples 1024 --passes 2
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from analysis.config import AnalysisOptions
from analysis.data import ImageData
from analysis.device import prepare_model, resolve_device
from analysis.nets import ModelConfig, build_model, layer_names
from analysis.science.pca import estimate_pc1
from analysis.science.similarity import batch_reductions, model_cka, pass_batches
from analysis.stages.analyze import analyze_models
from analysis.store.model_files import LoadedModel


PEAKS: list[float] = []  # each timed stage's own peak RSS, MiB


def timed(fn):
    """Run fn; its seconds, and its own peak RSS (the high-water mark is reset before, Linux only)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    with open("/proc/self/status") as f:
        PEAKS.append(next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024)
    return out, seconds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=110)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--examples", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--passes", type=int, default=1)
    p.add_argument("--pc-iterations", type=int, default=2)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    device = resolve_device(args.device)
    torch.manual_seed(0)
    config = ModelConfig(args.depth, args.width)
    model = prepare_model(build_model(config), device).eval()
    names = layer_names(config)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.examples, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (args.examples,), generator=g)
    batches = pass_batches(args.examples, args.batch_size, args.passes, 0)

    def forward_only():
        with torch.inference_mode():
            for index in batches:
                model(images[index].to(device).float().div(255).contiguous(memory_format=torch.channels_last))

    def grams_only():
        for index in batches:
            batch_reductions(model, names, images[index])

    forward_only()  # warm-up
    PEAKS.clear()
    _, t_forward = timed(forward_only)
    _, t_grams = timed(grams_only)
    _, t_cka = timed(lambda: model_cka([model], [names], images, labels, args.batch_size, args.passes, progress=False))
    pc, t_pc_est = timed(lambda: estimate_pc1(model, names, images, args.batch_size, args.pc_iterations, progress=False))
    _, t_pc_cka = timed(lambda: model_cka([model], [names], images, labels, args.batch_size, args.passes,
                                          directions=[pc.directions], progress=False))
    data = ImageData("bench", tuple(map(str, range(10))), images, labels, images, labels)
    loaded = LoadedModel(model, config, "models:/bench/1", "bench", "1", {"data_fraction": "1"}, None, {"data_fraction": 1.0})
    options = AnalysisOptions(analyses=("cka", "pc", "probes", "deletion"), num_examples=args.examples,
                              batch_size=args.batch_size, passes=args.passes, pc_iterations=args.pc_iterations,
                              probe_examples=args.examples, probe_train="full")
    _, t_all = timed(lambda: analyze_models([loaded], data, options, progress=False))

    print(f"\nResNet-{args.depth} width {args.width:g}, {len(names)} layers, {args.examples} examples, "
          f"{len(batches)} batches of {args.batch_size}, device {device} ({torch.get_num_threads()} threads)\n")
    forward_peak, grams_peak, cka_peak, est_peak, pc_cka_peak, all_peak = PEAKS
    print(f"{'stage':<44}{'seconds':>9}{'x forward':>11}{'x fwd+Grams':>13}{'peak RSS MiB':>14}")
    rows = [("forward only", t_forward, forward_peak), ("forward + Grams (the CKA floor)", t_grams, grams_peak),
            ("cka", t_cka, cka_peak), ("cka + pc (estimation + both variants)", t_pc_est + t_pc_cka, max(est_peak, pc_cka_peak)),
            ("  of which PC1 estimation", t_pc_est, est_peak), ("every analysis (cka, pc, probes, deletion)", t_all, all_peak)]
    for name, t, peak in rows:
        print(f"{name:<44}{t:>9.2f}{t / t_forward:>11.2f}{t / t_grams:>13.2f}{peak:>14.0f}")
    print(f"\nprocess peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB; "
          f"Gram stack of one batch {len(names) * args.batch_size ** 2 * 8 / 2 ** 20:.0f} MiB (float64)")
    if device.type == "cuda":
        print(f"peak CUDA memory {torch.cuda.max_memory_allocated() / 2 ** 20:.0f} MiB")


if __name__ == "__main__":
    main()
