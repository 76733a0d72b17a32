"""Benchmark: the layer-by-layer CKA heatmap of one model, end to end, against pytorch-cka.

Each engine computes the same within-model CKA matrix (unbiased HSIC summed over minibatches) of
the same layers on the same batches of CIFAR-10 test images, in a fresh child process of its
own (so peak memory is its own), `--repeats` times, the minimum time kept:
  widedeep      analysis.science.similarity.batch_reductions (float32 Grams of centred float32
                activations, computed inside the forward hooks) + MinibatchCKA (float64
                U-centring, one stacked product per batch): what `analyze` runs;
  public        the Python API as the README shows it: analysis.features.tapped with
                analysis.cka.gram (default precision) in the hook, then MinibatchCKA.update_grams;
  public-f64    the same with gram(..., torch.float64), the float64 option;
  pytorch-cka   pytorch-cka 1.1.3's `compute_cka(model, model, batches, layers=...)`, its
                public entry point (it keeps every hooked layer's features of a batch);
  float64       the same activations, every Gram, product and sum in float64: the reference
                for the error column.
Extra memory is the child's peak RSS minus its RSS after loading the model and images and one
warm-up forward pass.

    pip install -e '.[bench]'                   # pytorch-cka
    python benchmarks/cka.py                    # ResNet-56, every conv layer, 2 batches of 256, 1 thread
    python benchmarks/cka.py --layers all --threads 2 --device auto
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from analysis.cka import MinibatchCKA, gram
from analysis.data import load_dataset, to_float
from analysis.device import prepare_model, resolve_device
from analysis.features import tapped
from analysis.nets import ModelConfig, as_input, build_model, layer_names, stream
from analysis.science.similarity import batch_reductions, float64_cka

ENGINES = ("widedeep", "public", "public-f64", "pytorch-cka", "float64")


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def setup(args) -> tuple[torch.nn.Module, list[str], list[torch.Tensor], torch.device, str]:
    torch.set_num_threads(args.threads)
    threadpool_limits(args.threads)  # numpy/scipy BLAS pools too, so that no engine uses more cores
    device = resolve_device(args.device)
    torch.manual_seed(0)
    config = ModelConfig(args.depth, args.width)
    model = prepare_model(build_model(config), device).eval()
    names = layer_names(config)
    if args.layers == "conv":
        names = [n for n in names if n.endswith(("conv", "conv1", "conv2"))]
    try:
        images, source = load_dataset("cifar10").test_x, "CIFAR-10 test images"
    except (FileNotFoundError, ValueError, PermissionError):
        images, source = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8), "random images"
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    batches = [images[order[i * args.batch_size : (i + 1) * args.batch_size]] for i in range(args.batches)]
    return model, names, batches, device, source


def run_engine(engine: str, model, names, batches, device) -> np.ndarray:
    if engine == "widedeep":
        acc = MinibatchCKA(names)
        for x in batches:
            acc.update_grams(batch_reductions(model, names, x)[0], consume=True)  # as model_cka feeds them
        return acc.compute()
    if engine in ("public", "public-f64"):
        dtype = torch.float64 if engine == "public-f64" else torch.float32
        acc = MinibatchCKA(names)
        for x in batches:
            grams: list = [None] * len(names)
            with torch.inference_mode(), tapped(model, names, lambda i, out: grams.__setitem__(i, gram(out, dtype))):
                model(as_input(x, device))
            acc.update_grams(torch.stack(grams), consume=True)
        return acc.compute()
    if engine == "float64":
        images = torch.cat(batches)
        return float64_cka(model, names, images, list(torch.arange(len(images)).split(len(batches[0]))))
    here = Path(__file__).resolve().parent  # this file is cka.py too: look past it for pytorch-cka's `cka`
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]
    from cka import compute_cka

    inputs = to_float(torch.cat(batches)).contiguous(memory_format=torch.channels_last)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(inputs), batch_size=len(batches[0]))  # same batches
    return compute_cka(model, model, loader, layers=names, device=device, progress=False)[0].double().cpu().numpy()


def child(args) -> None:
    model, names, batches, device, _ = setup(args)
    stream(model, batches[0], batch_size=len(batches[0]))  # warm-up: allocator, kernels
    base = rss_mib()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        matrix = run_engine(args.child, model, names, batches, device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    np.save(args.out, matrix)
    extra = (torch.cuda.max_memory_allocated() / 2**20) if device.type == "cuda" else peak_rss_mib() - base
    print(json.dumps({"seconds": min(times), "extra_mib": extra}))


def _without_engines(argv: list[str]) -> list[str]:
    """The command line minus `--engines X` / `--engines=X`, for the children (each runs one engine)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--engines":
            skip = True
        elif not a.startswith("--engines="):
            out.append(a)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--layers", default="conv", choices=["conv", "all"])
    p.add_argument("--batches", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu")
    p.add_argument("--engines", default=",".join(ENGINES))
    p.add_argument("--child", choices=ENGINES, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)

    _, names, _, device, source = setup(args)
    results, matrices = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for engine in args.engines.split(","):
            out = Path(tmp) / f"{engine}.npy"
            argv = _without_engines(sys.argv[1:])
            proc = subprocess.run([sys.executable, __file__, *argv, "--child", engine, "--out", str(out)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"{engine}: failed ({proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode})")
                continue
            results[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
            matrices[engine] = np.load(out)
    reference = matrices.get("float64")
    print(f"\nResNet-{args.depth} width {args.width:g}, {len(names)} layers ({args.layers}), {args.batches} batches of "
          f"{args.batch_size}, {source}, device {device}, {args.threads} thread(s), min of {args.repeats}\n")
    print(f"{'engine':<14}{'seconds':>9}{'extra MiB':>11}{'max |error| vs float64':>25}")
    for engine, r in results.items():
        err = "" if reference is None or engine == "float64" else f"{np.abs(matrices[engine] - reference).max():.1e}"
        print(f"{engine:<14}{r['seconds']:>9.2f}{r['extra_mib']:>11.0f}{err:>25}")
    for ours in ("widedeep", "public"):
        if {ours, "pytorch-cka"} <= set(results):
            mine, peer = results[ours], results["pytorch-cka"]
            print(f"\n{ours} / pytorch-cka: time {mine['seconds'] / peer['seconds']:.2f}x, "
                  f"extra memory {mine['extra_mib'] / max(peer['extra_mib'], 1e-9):.2f}x")


if __name__ == "__main__":
    main()
