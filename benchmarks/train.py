"""Benchmark: the real training loop against a bare forward/backward/step loop, side by side.

For each model, both loops run one epoch over the same examples in one process, alternating
(bare, real, bare, real) so that machine noise hits both alike; the table reports the median of
each and the overhead of the real loop. The real loop is analysis.training.train with everything
on: batch augmentation on the device, metrics, a per-epoch checkpoint, and per-epoch logging to a
real MLflow SQLite store. Its end-of-epoch test evaluation runs on `--test-examples` images and is
timed separately (it is work the bare loop does not do).

With `--pack 1,K`, the real loop instead trains packs of K seeds (training/pack.py) beside
packs of 1, alternating, and the table reports the pack's images/s (all its models' images), each
model's, and the gain per model-image over a model trained alone.

    python benchmarks/train.py                        # ResNet-20/56 at widths 1 and 2
    python benchmarks/train.py --models 20x1 --examples 1280 --repeats 3 --channels-last both
    python benchmarks/train.py --models 20x1,56x1 --pack 1,10
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import statistics
import tempfile
import time
import unittest.mock
from pathlib import Path
from typing import Iterator

import mlflow
import torch

from analysis.config import TrainConfig
from analysis.data import ImageData, to_float
from analysis.device import peak_flops, prepare_model, resolve_device
from analysis.nets import build_model, decayed_parameters
from analysis.training import loop as training_loop
from analysis.training import plain_step, step_flops_per_image, train_pack
from analysis.training.settings import model_config


def synthetic_data(n: int, test: int) -> ImageData:
    g = torch.Generator().manual_seed(0)
    return ImageData("bench", tuple(str(i) for i in range(10)),
                     torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (n,), generator=g),
                     torch.randint(0, 256, (test, 3, 32, 32), dtype=torch.uint8, generator=g), torch.randint(0, 10, (test,), generator=g))


def bare_epoch(config: TrainConfig, data: ImageData, device: torch.device) -> float:
    """Forward, backward and SGD step on the same un-augmented batches: the floor."""
    torch.manual_seed(config.seed)
    model = prepare_model(build_model(model_config(config, 10)), device, config.channels_last)
    kernels, others = decayed_parameters(model)
    opt = torch.optim.SGD([{"params": kernels, "weight_decay": config.weight_decay}, {"params": others}], lr=config.lr, momentum=config.momentum)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    x_all, y_all = data.train_x.to(device), data.train_y.to(device)
    steps = len(x_all) // config.batch_size
    start = time.perf_counter()
    for s in range(steps):
        x = to_float(x_all[s * config.batch_size : (s + 1) * config.batch_size]).contiguous(memory_format=fmt)
        plain_step(model, opt, x, y_all[s * config.batch_size : (s + 1) * config.batch_size], device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * config.batch_size / (time.perf_counter() - start)


@contextlib.contextmanager
def timed_evaluations(device: torch.device) -> Iterator[list[float]]:
    """Seconds of every evaluation the training loop runs, timed where it runs them.

    Re-timing the evaluations afterwards overstates them (the loop scores a strided sample of
    the training set in bf16), which once gave a negative throughput for a wide model on an H200."""
    seconds: list[float] = []
    evaluate = training_loop.evaluate_pack

    def timed(*args, **kwargs):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        scores = evaluate(*args, **kwargs)  # returns Python floats: the device is idle again
        seconds.append(time.perf_counter() - start)
        return scores

    with unittest.mock.patch.object(training_loop, "evaluate_pack", timed):
        yield seconds


def real_epoch(config: TrainConfig, data: ImageData, workdir: Path, device: torch.device, pack: int = 1) -> tuple[float, float]:
    """(images/s of the whole training call less its evaluations, all `pack` models' images
    counted; seconds of those evaluations).

    Everything else (set-up, augmentation, steps, metrics, checkpoint, MLflow logging) counts
    against the loop."""
    ckpt = workdir / "ckpt.safetensors"
    ckpt.unlink(missing_ok=True)
    configs = [dataclasses.replace(config, seed=config.seed + k) for k in range(pack)]
    with mlflow.start_run(), timed_evaluations(device) as evals:
        start = time.perf_counter()
        train_pack(configs, data, checkpoint=ckpt, on_epoch=lambda _k, e, m: mlflow.log_metrics(m, step=e), progress=False)
        total = time.perf_counter() - start
    seen = (len(data.train_x) // config.batch_size) * config.batch_size
    return pack * seen / (total - sum(evals)), sum(evals)


def pack_table(args: argparse.Namespace, data: ImageData, device: torch.device, workdir: Path) -> None:
    """Packs of each size in --pack, alternating within every repeat: the pack's images/s, each model's, the
    gain per model-image over a pack of one, MFU."""
    sizes = [int(k) for k in args.pack.split(",")]
    peak = peak_flops(device)
    print(f"{'model':<14}{'pack':>5}{'pack img/s':>12}{'per model':>11}{'vs alone':>10}{'MFU':>8}{'evals s':>9}")
    for spec in args.models.split(","):
        depth, width = spec.split("x")
        config = TrainConfig(depth=int(depth), width=float(width), epochs=1, device=str(device.type), eval_batch_size=500,
                             compile=args.compile == "on")
        real_epoch(config, synthetic_data(256, 10), workdir, device, max(sizes))  # warm-up (cuDNN autotuning, allocator)
        rates: dict[int, list[float]] = {k: [] for k in sizes}
        evals: dict[int, list[float]] = {k: [] for k in sizes}
        for _ in range(args.repeats):
            for k in sizes:
                rate, seconds = real_epoch(config, data, workdir, device, k)
                rates[k].append(rate)
                evals[k].append(seconds)
        alone = statistics.median(rates[sizes[0]]) if sizes[0] == 1 else None
        flops = step_flops_per_image(model_config(config, 10), (3, 32, 32))
        for k in sizes:
            r = statistics.median(rates[k])
            mfu = f"{r * flops / peak:.1%}" if peak else "-"
            gain = f"{r / alone:.2f}x" if alone else "-"
            print(f"{'ResNet-' + depth + ' w' + width:<14}{k:>5}{r:>12.1f}{r / k:>11.1f}{gain:>10}{mfu:>8}"
                  f"{statistics.median(evals[k]):>9.2f}")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--models", default="20x1,20x2,56x1,56x2", help="depth x width, comma-separated")
    p.add_argument("--examples", type=int, default=2560)
    p.add_argument("--test-examples", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="auto")
    p.add_argument("--channels-last", default="on", choices=["on", "off", "both"])
    p.add_argument("--compile", default="off", choices=["on", "off", "both"], help="torch.compile the real loop's step")
    p.add_argument("--pack", default="", help="pack sizes to compare, e.g. 1,10 (the first should be 1)")
    args = p.parse_args()
    device = resolve_device(args.device)
    data = synthetic_data(args.examples, args.test_examples)
    switch = {"on": [True], "off": [False], "both": [False, True]}
    variants = [(cl, comp) for cl in switch[args.channels_last] for comp in switch[args.compile]]
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
        mlflow.set_tracking_uri(f"sqlite:///{tmp}/mlflow.db")
        print(f"\n{args.examples} images per epoch, batch 128, device {device} ({torch.get_num_threads()} threads), "
              f"median of {args.repeats} alternating runs\n")
        if args.pack:
            pack_table(args, data, device, Path(tmp))
            return
        peak = peak_flops(device)
        print(f"{'model':<12}{'channels_last':>14}{'compile':>9}{'bare img/s':>12}{'real img/s':>12}{'overhead':>10}{'evals s':>10}"
              f"{'real MFU':>10}")
        for spec in args.models.split(","):
            depth, width = spec.split("x")
            for channels_last, compiled in variants:
                config = TrainConfig(depth=int(depth), width=float(width), epochs=1, device=str(device.type),
                                     channels_last=channels_last, compile=compiled, eval_batch_size=500)
                bare, real, evals = [], [], []
                bare_epoch(dataclasses.replace(config), synthetic_data(256, 10), device)  # warm-up
                for _ in range(args.repeats):
                    bare.append(bare_epoch(config, data, device))
                    r, e = real_epoch(config, data, Path(tmp), device)
                    real.append(r)
                    evals.append(e)
                b, r = statistics.median(bare), statistics.median(real)
                # model FLOP utilisation: achieved FLOP/s over the device's bf16 peak (GPUs of known peak only)
                mfu = f"{r * step_flops_per_image(model_config(config, 10), (3, 32, 32)) / peak:.1%}" if peak else "-"
                print(f"{'ResNet-' + depth + ' w' + width:<12}{str(channels_last):>14}{str(compiled):>9}{b:>12.1f}{r:>12.1f}"
                      f"{(b / r - 1) * 100:>9.1f}%{statistics.median(evals):>10.2f}{mfu:>10}")


if __name__ == "__main__":
    main()
