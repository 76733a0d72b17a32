"""Benchmark: the all-layer CKA heatmap of a ResNet-56 (9 + 21*9 = 198 layers), batches of 256.

Prints, per batch: forward alone, forward + Grams (hooks), and the whole estimator (forward,
Grams, U-centring, the one stacked product, accumulation); the ratio of the whole to forward +
Grams (target: within 1.2x); peak resident memory against the Gram stack's size; and two peers
on the same Grams:
  (a) a straightforward per-pair loop of the same estimator (the trace formula, float64), which
      also serves as the float64 reference for the error column;
  (b) cka-pytorch 1.1.3's batched `hsic1` (the fastest public CKA package installable here; its
      hook manager needs `lightning`, so its estimator is timed alone), float32 Grams of the raw
      features as that package computes them.
Peers run on `--peer-batches` batches (they are slow); their per-batch time is what is compared.

    python benchmarks/cka.py                 # 10 batches, CPU or CUDA (device auto)
    python benchmarks/cka.py --batches 3 --depth 20
Install the peer for (b) with `pip install --no-deps cka-pytorch==1.1.3` (skipped if missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import resource
import time
from itertools import combinations_with_replacement

import numpy as np
import torch

from analysis.cka import MinibatchCKA, gram
from analysis.data import load_dataset
from analysis.device import prepare_model, resolve_device
from analysis.nets import ModelConfig, build_model, layer_names, tapped
from analysis.science.similarity import batch_reductions


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reference_pairs(grams: list[torch.Tensor]) -> np.ndarray:
    """(a) HSIC1 of every layer pair by the trace formula, one pair at a time, float64."""
    n = grams[0].shape[0]
    zeroed = []
    for k in grams:
        k = k.to(torch.float64).clone()
        k.fill_diagonal_(0)
        zeroed.append((k, k.sum(), k.sum(1)))
    out = np.zeros((len(grams), len(grams)))
    for i, j in combinations_with_replacement(range(len(grams)), 2):
        (k, sk, rk), (l, sl, rl) = zeroed[i], zeroed[j]
        h = ((k * l).sum() + sk * sl / ((n - 1) * (n - 2)) - 2 / (n - 2) * (rk @ rl)) / (n * (n - 3))
        out[i, j] = out[j, i] = float(h)
    return out


def load_peer_hsic():
    spec = importlib.util.find_spec("cka_pytorch")
    if spec is None:
        return None
    path = spec.submodule_search_locations[0] + "/hsic.py"
    module_spec = importlib.util.spec_from_file_location("cka_pytorch_hsic", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.hsic1


def peer_pairs(hsic1, grams32: list[torch.Tensor], chunk: int = 2048) -> np.ndarray:
    """(b) cka-pytorch's batched hsic1 over every layer pair, float32."""
    pairs = list(combinations_with_replacement(range(len(grams32)), 2))
    stack = torch.stack(grams32)
    out = np.zeros((len(grams32), len(grams32)))
    for s in range(0, len(pairs), chunk):
        idx = torch.tensor(pairs[s : s + chunk])
        h = hsic1(stack[idx[:, 0]], stack[idx[:, 1]]).double().cpu().numpy()
        for (i, j), v in zip(pairs[s : s + chunk], h):
            out[i, j] = out[j, i] = v
    return out


def normalise(hsic_sum: np.ndarray) -> np.ndarray:
    d = np.sqrt(np.diag(hsic_sum))
    return hsic_sum / np.outer(d, d)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--depth", type=int, default=56)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--peer-batches", type=int, default=1)
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    device = resolve_device(args.device)
    torch.manual_seed(0)
    config = ModelConfig(args.depth, args.width)
    model = prepare_model(build_model(config), device).eval()
    names = layer_names(config)
    try:
        images = load_dataset("cifar10").test_x
        source = "CIFAR-10 test images"
    except (FileNotFoundError, ValueError):
        images = torch.randint(0, 256, (10_000, 3, 32, 32), dtype=torch.uint8)
        source = "random images (set WIDEDEEP_DATA_DIR for CIFAR-10)"
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    batches = [images[order[i * args.batch_size : (i + 1) * args.batch_size]] for i in range(args.batches)]

    def forward_only(x):
        with torch.inference_mode():
            return model(x.to(device).float().div(255).contiguous(memory_format=torch.channels_last))

    def forward_and_grams(x):
        with torch.inference_mode(), tapped(model, names, lambda i, out: gram(out)):
            return forward_only(x)

    forward_only(batches[0])  # warm-up (allocator, cudnn autotuning)
    t_fwd = sum(timed(lambda: forward_only(x), device)[1] for x in batches)
    t_fwd_gram = sum(timed(lambda: forward_and_grams(x), device)[1] for x in batches)
    rss_before = rss_mib()
    acc = MinibatchCKA(names)

    def full(x):
        grams, _, _ = batch_reductions(model, names, x)
        acc.update_grams(grams)

    t_full = sum(timed(lambda: full(x), device)[1] for x in batches)
    ours = acc.compute()
    rss_after = rss_mib()

    # Peers, on the first --peer-batches batches, against our estimator on the same batches.
    ref_sum, peer_sum, mine = 0, 0, MinibatchCKA(names)
    t_ref = t_peer = 0.0
    hsic1 = load_peer_hsic()
    for x in batches[: args.peer_batches]:
        grams64, _, _ = batch_reductions(model, names, x)
        mine.update_grams(grams64)
        r, dt = timed(lambda: reference_pairs(list(grams64)), device)
        ref_sum, t_ref = ref_sum + r, t_ref + dt
        if hsic1 is not None:
            raw32 = []
            with torch.inference_mode(), tapped(model, names, lambda i, out: raw32.append(out.flatten(1).float() @ out.flatten(1).float().T)):
                forward_only(x)
            r, dt = timed(lambda: peer_pairs(hsic1, raw32), device)
            peer_sum, t_peer = peer_sum + r, t_peer + dt
    reference = normalise(ref_sum)
    err_ours = np.abs(mine.compute() - reference).max()
    k = args.peer_batches

    gram_stack_mib = len(names) * args.batch_size**2 * 8 / 2**20
    print(f"\nResNet-{args.depth} width {args.width:g}, {len(names)} layers, {args.batches} batches of {args.batch_size}, "
          f"{source}, device {device} ({torch.get_num_threads()} threads)\n")
    rows = [
        ("forward only", t_fwd / args.batches, ""),
        ("forward + Grams (floor)", t_fwd_gram / args.batches, ""),
        ("  of which Grams", (t_fwd_gram - t_fwd) / args.batches, ""),
        ("widedeep MinibatchCKA, total", t_full / args.batches, f"{t_full / t_fwd_gram:.3f}x floor"),
        ("  U-centring + product + sums", (t_full - t_fwd_gram) / args.batches, ""),
        ("(a) per-pair loop, float64 (estimator only)", t_ref / k, f"{t_ref / k / max((t_full - t_fwd_gram) / args.batches, 1e-9):.0f}x ours"),
    ]
    if hsic1 is not None:
        rows.append(("(b) cka-pytorch hsic1, float32 (estimator only)", t_peer / k,
                     f"{t_peer / k / max((t_full - t_fwd_gram) / args.batches, 1e-9):.0f}x ours"))
    print(f"{'stage':<50}{'s / batch':>12}  note")
    for name, t, note in rows:
        print(f"{name:<50}{t:>12.3f}  {note}")
    print(f"\nmax |error| vs float64 per-pair reference ({k} batch(es)): widedeep {err_ours:.2e}", end="")
    if hsic1 is not None:
        print(f", cka-pytorch {np.abs(normalise(peer_sum) - reference).max():.2e}", end="")
    print(f"\npeak RSS: {rss_before:.0f} MiB before the estimator, {rss_after:.0f} MiB after; "
          f"one batch's Gram stack is {gram_stack_mib:.0f} MiB (O(layers x batch^2))")
    if device.type == "cuda":
        print(f"peak CUDA memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB")
    print(f"heatmap sanity: diagonal {np.diag(ours).min():.3f}..{np.diag(ours).max():.3f}, symmetric {np.array_equal(ours, ours.T)}")


if __name__ == "__main__":
    main()
